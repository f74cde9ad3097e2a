"""Function matching: consistent views, the teacher cache, the transfer set and its balance,
and the k-fold groupings of the real-data benchmark."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline.data.datamodule import EpochSampler, MixupViews
from pipeline.data.folds import appearance_groups, grouped_folds
from pipeline.data.transforms import build_augment
from pipeline.matching import (
    UNLABELLED,
    MatchDataModule,
    MatchOptions,
    Teacher,
    balance_classes,
    cached_teacher_views,
    transfer_set,
    view_keys,
)
from pipeline.models.classifier import SEMClassifier


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
        out.append((str(path), i % 3))
    return out


class PixelTeacher(nn.Module):
    """A 'teacher' whose logits are a fingerprint of the exact pixels it is shown."""

    def forward(self, x):
        flat = x.flatten(1).double()
        weights = torch.arange(1, flat.shape[1] + 1, dtype=torch.float64)
        return torch.stack([flat.sum(1), (flat * weights).sum(1) / weights.sum()], 1).float()


def test_views_are_deterministic_and_mixed(items):
    views = MixupViews(items, 32, build_augment({"enabled": True}, 32), seed=3, mixup_alpha=1.0)
    a, b = views[(4, 2)][0], views[(4, 2)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, views[(4, 3)][0])  # another epoch, another view
    plain = MixupViews(items, 32, build_augment({"enabled": True}, 32), seed=3, mixup_alpha=0)
    assert not torch.equal(a, plain[(4, 2)][0])  # mixup moved the pixels


def test_teacher_and_student_get_identical_pixels(items, tmp_path):
    """The cached teacher output served with each training view is the teacher's output on
    exactly that view's pixels, and a cache reread gives the same outputs."""
    views = MixupViews(items, 32, build_augment({"enabled": True}, 32), seed=1, mixup_alpha=1.0)
    sampler = EpochSampler([y for _, y in items], seed=1, balanced=True)
    keys = view_keys(sampler, 3)
    teacher = PixelTeacher()
    targets = cached_teacher_views(teacher, views, keys, "k", tmp_path, batch_size=5)
    again = cached_teacher_views(None, views, keys, "k", tmp_path)  # from the file
    assert all(np.array_equal(targets[k], again[k]) for k in keys)
    dm = MatchDataModule(views, sampler, targets, {"val": items[:4]},
                         MatchOptions(batch_size=4, seed=1))
    loader = dm.train_dataloader()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for x, _, logits in loader:
            assert torch.allclose(teacher(x), logits, rtol=1e-6, atol=1e-6)


def test_transfer_set_holds_every_real_image_and_a_synthetic_draw():
    real = [(f"r{i}.png", i % 2) for i in range(5)]
    synthetic = [(f"s{i}.png", 0) for i in range(50)]
    transfer = transfer_set(real, ["u0.png", "u1.png"], synthetic, 10, seed=0)
    assert transfer[:5] == real
    assert transfer[5:7] == [("u0.png", UNLABELLED), ("u1.png", UNLABELLED)]
    drawn = transfer[7:]
    assert len(drawn) == 10 and len(set(drawn)) == 10 and all(y == UNLABELLED for _, y in drawn)
    assert transfer == transfer_set(real, ["u0.png", "u1.png"], synthetic, 10, seed=0)


def test_balanced_draws_follow_the_teachers_predicted_class():
    pred = [0] * 90 + [1] * 9 + [2] * 1
    sampler = EpochSampler(pred, seed=0, balanced=True)
    counts = np.zeros(3)
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for i, _ in sampler:
            counts[pred[i]] += 1
    shares = counts / counts.sum()
    assert np.allclose(shares, 1 / 3, atol=0.05)  # unbalanced draws would give 0.9/0.09/0.01
    record = balance_classes(np.array(pred), 4)
    assert record["teacher_predicted_counts"] == [90, 9, 1, 0]
    assert record["draw_share_per_class"] == [0.3333, 0.3333, 0.3333, 0.0]


def test_teacher_ensemble_averages_probabilities_and_tta_is_rotation_invariant():
    torch.manual_seed(0)
    models = [SEMClassifier("plain_cnn", 3, ["a", "b", "c"], {"image_size": 16}, loss={},
                            optimizer={"lr": 1e-3}, max_epochs=1).eval() for _ in range(2)]
    x = torch.rand(2, 1, 16, 16)
    mean = torch.stack([torch.softmax(m(x), 1) for m in models]).mean(0)
    assert torch.allclose(Teacher(models)(x).exp(), mean, atol=1e-6)
    tta = Teacher(models, dihedral=True)
    assert torch.allclose(tta(x), tta(torch.rot90(x, 1, (2, 3)).flip(3)), atol=1e-5)


def test_the_onnxruntime_teacher_equals_the_torch_teacher():
    torch.manual_seed(0)
    models = [SEMClassifier(name, 3, ["a", "b", "c"], {"image_size": 64}, loss={},
                            optimizer={"lr": 1e-3}, max_epochs=1).eval()
              for name in ("plain_cnn", "edge_cnn")]
    teacher = Teacher(models, dihedral=True)
    x = torch.rand(5, 1, 72, 72)  # resized to the members' 64 px, as in torch
    fast = teacher.on_runtime("onnxruntime")
    assert fast.runtime == "onnxruntime" and fast.members[0] is models[0]
    assert torch.allclose(fast(x), teacher(x), atol=1e-4)
    assert not torch.equal(fast(x), fast(x.flip(2).clamp(0.2, 0.8)))  # it does look at x
    with pytest.raises(ValueError, match="runtime"):
        teacher.on_runtime("tensorrt")


def test_a_fold_never_splits_a_near_duplicate_group():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, 60))
    labels = rng.integers(0, 4, len(groups))
    folds = grouped_folds(labels, groups, 5, seed=0)
    seen = np.concatenate(folds)
    assert sorted(seen.tolist()) == list(range(len(groups)))  # each image in one fold
    for fold in folds:
        others = np.setdiff1d(np.arange(len(groups)), fold)
        assert not set(groups[fold]) & set(groups[others])


def test_appearance_groups_hold_clusters_and_near_duplicates_together():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 10
    features = np.concatenate([c + rng.normal(size=(10, 8)) for c in centres])
    near_dup = list(range(30))
    near_dup[5] = near_dup[25]  # an image of cluster 0 duplicates one of cluster 2
    groups = np.array(appearance_groups(features, near_dup, 3, seed=0))
    assert groups[5] == groups[25]
    assert len(set(groups[:10])) == 1 and groups[0] == groups[20]  # clusters 0 and 2 merged
    assert groups[10] != groups[0]
