import pytest
import yaml

from pipeline.config import compose, load_params, params_hash
from pipeline.errors import UserError


def test_params_yaml_matches_conf(root):
    """params.yaml is generated: it must be exactly what conf/ composes to."""
    committed = (root / "params.yaml").read_text(encoding="utf-8")
    assert committed == compose(root), "run `python -m pipeline compose` and commit params.yaml"


def test_experiment_override_composes(root):
    cfg = yaml.safe_load(compose(root, ["experiment=smoke"]))
    assert cfg["experiment_name"] == "smoke"
    assert cfg["synth"]["image_size"] == 64
    cfg = yaml.safe_load(compose(root, ["model/student=mobilenetv2_050", "synth.image_size=96"]))
    assert cfg["model"]["student"]["name"] == "mobilenetv2_050"
    assert cfg["synth"]["image_size"] == 96


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("synth.imagesize=96", "synth.imagesize"),
        ("synth.image_size=big", "synth.image_size"),
        ("synth.image_size=4", "synth.image_size"),
        ("split.val_fraction=0.9", "split.val_fraction"),
        ("model/student=not_a_model", "not_a_model"),
    ],
)
def test_bad_override_is_refused_naming_it(root, override, named):
    with pytest.raises(UserError) as err:
        compose(root, [override])
    assert named in str(err.value)


def test_load_params_with_overrides(root):
    cfg = load_params(root, ["synth.images_per_class=3", "synth.profiles=[a, b]"])
    assert cfg["synth"]["images_per_class"] == 3
    assert cfg["synth"]["profiles"] == ["a", "b"]
    with pytest.raises(UserError, match="synth.nope"):
        load_params(root, ["synth.nope=1"])
    with pytest.raises(UserError, match="key=value"):
        load_params(root, ["synth.images_per_class"])


def test_params_hash_ignores_key_order():
    assert params_hash({"a": 1, "b": {"c": 2}}) == params_hash({"b": {"c": 2}, "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})
