import pytest
import yaml

from pipeline.config import compose, load_params, params_hash, validate
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
        ("train.max_epochs=-1", "'train.max_epochs' = -1"),
        ("train.max_epochs=0", "'train.max_epochs' = 0"),
        ("train.batch_size=0", "'train.batch_size' = 0"),
        ("finetune.recipe=fancy", "'finetune.recipe' = 'fancy'"),
        ("train.augment.p_hflip=2", "'train.augment.p_hflip' = 2"),
        ("train.loss.nmae=ce", "train.loss.nmae"),  # Hydra refuses a new key without '+'
        ("+train.loss.nmae=ce", "'train.loss.nmae'"),  # with '+' Hydra adds it; the schema refuses
    ],
)
def test_bad_override_is_refused_naming_it(root, override, named):
    with pytest.raises(UserError) as err:
        compose(root, [override])
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_epochs=0", "config key 'train.max_epochs' = 0 is invalid: it must be an "
                               "integer >= 1"),
        ("finetune.recipe=fancy", "config key 'finetune.recipe' = 'fancy' is invalid: it must be "
                                  "one of 'matching', 'finetune'"),
        ("train.augment.p_hflip=2", "config key 'train.augment.p_hflip' = 2 is invalid: it must "
                                    "be a probability in [0, 1]"),
        ("synth.image_size=big", "config key 'synth.image_size' = 'big' is invalid: it must be "
                                 "an integer from 16 to 1024"),
        ("+train.loss.nmae=ce", "unknown config key 'train.loss.nmae'; the keys under "
                                "'train.loss' are: name, label_smoothing, gamma, alpha, "
                                "class_weights"),
    ],
)
def test_refusal_is_one_message_saying_what_is_expected(root, override, message):
    with pytest.raises(UserError) as err:
        compose(root, [override])
    assert str(err.value) == message


@pytest.mark.parametrize("overrides", [
    [], ["experiment=smoke"], ["experiment=full"], ["trainer=ddp"],
    ["model/student=mobilenetv3_small_050_head512"], ["model/teacher=resnet18"]])
def test_shipped_configs_validate(root, overrides):
    validate(yaml.safe_load(compose(root, overrides)))  # compose validates too; be explicit


def test_committed_params_yaml_validates(root):
    validate(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("train.lr", "1e-3", "'train.lr' = '1e-3'"),  # YAML 1.1 reads 1e-3 as a string
        ("train.max_epochs", 5.0, "'train.max_epochs' = 5.0"),
        ("train.augment.enabled", 1, "'train.augment.enabled' = 1"),
        ("train.loss.class_weights", "squared", "'train.loss.class_weights'"),
        ("finetune.teachers", [], "'finetune.teachers' = []"),
        ("quantize.gates.int8_min_top1_agreement", 1.5,
         "'quantize.gates.int8_min_top1_agreement' = 1.5"),
        ("train.phase", "phase9", "'train.phase' = 'phase9'"),
        ("finetune.phases", ["phase1", "phase2"], "'finetune.phases'"),  # phase2 never trains
        ("data.real.phase1.train", 3, "'data.real.phase1.train' = 3"),
    ],
)
def test_schema_refuses_bad_values(root, key, value, named):
    cfg = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert named in str(err.value)


def test_schema_accepts_the_documented_alternatives(root):
    cfg = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    cfg["train"]["loss"].update(name="focal", label_smoothing=0.0, alpha=[0.5, 1.0],
                                class_weights=[1, 2.5])
    cfg["model"]["student"]["head_features"] = 512
    cfg["data"]["real"]["phase3"].update(train="/data/p3/train", unlabeled="/data/p3/unl")
    cfg["quantize"]["output_code"]["logit_step"] = None
    cfg["tracking"]["uri"] = "http://localhost:5000"
    cfg["trainer"].update(devices="auto", precision="bf16-mixed", deterministic="warn")
    validate(cfg)


def test_load_params_with_overrides(root):
    cfg = load_params(root, ["synth.images_per_class=3", "synth.profiles=[a, b]"])
    assert cfg["synth"]["images_per_class"] == 3
    assert cfg["synth"]["profiles"] == ["a", "b"]
    with pytest.raises(UserError, match="synth.nope"):
        load_params(root, ["synth.nope=1"])
    with pytest.raises(UserError, match="'train.max_epochs' = 0"):
        load_params(root, ["train.max_epochs=0"])
    with pytest.raises(UserError, match="key=value"):
        load_params(root, ["synth.images_per_class"])


def test_params_hash_ignores_key_order():
    assert params_hash({"a": 1, "b": {"c": 2}}) == params_hash({"b": {"c": 2}, "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})
