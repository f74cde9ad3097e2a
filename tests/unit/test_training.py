import cv2
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.datamodule import SEMDataModule
from pipeline.data.transforms import build_augment
from pipeline.errors import UserError
from pipeline.evaluate.metrics import classification_metrics
from pipeline.models.classifier import SEMClassifier, checkpoint_preprocess
from pipeline.training import CPU_TRAINER, evaluate_sets, fit

CLASSES = ["clean", "bridge", "open"]
LOSS = {"name": "ce", "label_smoothing": 0.1}
OPT = {"lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 1}
AUG = {"enabled": True, "p_affine": 0.5, "p_blur": 0.5, "p_noise": 0.5, "p_downscale": 0.5}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        path = root / f"img{i:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 48), dtype=np.uint8))
        out.append((str(path), i % 3))
    return out


def _dm(items, size, **kw):
    return SEMDataModule(
        items[:18],
        {"val": items[18:], "heldout": items[12:18]},
        size,
        augment=kw.pop("augment", AUG),
        batch_size=6,
        num_workers=0,
        seed=7,
        **kw,
    )


def _model(backbone, size, **kw):
    return SEMClassifier(
        backbone, 3, CLASSES, {"image_size": size}, loss=LOSS, optimizer=OPT, max_epochs=2, **kw
    )


def _trainer(**kw):
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        **kw,
    )


def test_plain_then_distilled_fit(items, tmp_path):
    L.seed_everything(0)
    teacher = _model("plain_cnn", 48)
    trainer = _trainer(max_epochs=1)
    trainer.fit(teacher, datamodule=_dm(items, 48))
    logged = trainer.callback_metrics
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/macro_f1",
        "heldout/acc",
        "heldout/macro_f1",
    ):
        assert key in logged, key
    assert teacher.last_confusion["val"].sum() == 6 and teacher.last_confusion["heldout"].shape == (
        3,
        3,
    )
    teacher_ckpt = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(teacher_ckpt)
    assert checkpoint_preprocess(teacher_ckpt).image_size == 48

    # Student at 32 px distilled from the 48 px teacher: the batch is served at 48 px.
    student = _model(
        "mobilenetv3_small_050",
        32,
        teacher_ckpt=str(teacher_ckpt),
        kd={"temperature": 4.0, "alpha": 0.7},
    )
    trainer = _trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(student, datamodule=_dm(items, 48))
    assert "train/kd_loss" in trainer.callback_metrics
    assert student.teacher is not None and not student.teacher.training
    assert all(not p.requires_grad for p in student.teacher.parameters())
    student_ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(student_ckpt)
    state = torch.load(student_ckpt, weights_only=True)["state_dict"]
    assert state and all(k.startswith(("net.", "hard_loss.")) for k in state)
    assert not any("teacher" in k for k in state)
    teacher_ckpt.unlink()  # loading the student must not need the teacher
    loaded = SEMClassifier.load_from_checkpoint(student_ckpt, weights_only=True, map_location="cpu")
    assert loaded.hparams.class_names == CLASSES and loaded.pp.image_size == 32
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), student.eval()(x))


def test_cached_teacher_logits_ride_with_the_batches_and_drive_kd(items):
    # Row i peaks at item i's label, so a row served with the wrong image would show.
    logits = np.eye(3, dtype=np.float32)[[label for _, label in items[:18]]] * 5.0
    dm = _dm(items, 32, teacher_logits=logits)
    x, y, t = next(iter(dm.train_dataloader()))
    assert x.shape == (6, 1, 32, 32) and t.shape == (6, 3)
    assert torch.equal(t.argmax(1), y)

    L.seed_everything(0)
    student = _model("plain_cnn", 32, kd={"temperature": 2.0, "alpha": 0.5})
    batch = (x, y, t)
    kd_total = student.training_step(batch, 0)
    L.seed_everything(0)
    plain = _model("plain_cnn", 32)
    hard = plain.training_step((x, y), 0)
    assert not torch.isclose(kd_total, hard)  # the cached logits changed the loss
    with pytest.raises(UserError, match="kd config"):
        plain.training_step(batch, 0)
    with pytest.raises(UserError, match="replay"):
        _dm(items, 32, teacher_logits=logits, replay=items[:2], replay_fraction=0.5)


def test_seeded_fits_are_identical(items):
    torch.set_num_threads(1)
    weights = []
    for _ in range(2):
        L.seed_everything(3)
        model = _model("plain_cnn", 32, drop_rate=0.2)
        trainer = _trainer(max_epochs=2)
        trainer.fit(model, datamodule=_dm(items, 32, sampler="balanced"))
        assert trainer.train_dataloader.sampler.epoch == 1  # Lightning called set_epoch
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_augmentation_depends_on_seed_epoch_index_only(items):
    dm = _dm(items, 32)
    ds = dm.train_dataloader().dataset
    a, b = ds[(3, 1)][0], ds[(3, 1)][0]
    assert torch.equal(a, b)
    assert not all(torch.equal(ds[(3, 1)][0], ds[(3, e)][0]) for e in range(2, 6))
    assert build_augment({"enabled": False}, 32) is None
    with pytest.raises(UserError, match="p_rotate"):
        build_augment({"p_rotate": 0.5}, 32)


def test_config_mistakes_are_user_errors(items, tmp_path):
    with pytest.raises(UserError, match="sampler"):
        _dm(items, 32, sampler="weighted")
    with pytest.raises(UserError, match="not found"):
        model = _model(
            "plain_cnn",
            32,
            teacher_ckpt=str(tmp_path / "none.ckpt"),
            kd={"temperature": 2.0, "alpha": 0.5},
        )
        model.setup("fit")


class _Scripted(SEMClassifier):
    """Predicts the class written in each image's first pixel (as class / 10)."""

    def forward(self, x):
        return F.one_hot((x[:, 0, 0, 0] * 10).round().long(), self.hparams.num_classes).float()


def _scripted_loader(y_true, y_pred):
    x = torch.zeros(len(y_pred), 1, 32, 32)
    x[:, 0, 0, 0] = torch.tensor(y_pred, dtype=torch.float32) / 10
    # Batches of 2 over 5 images: the scores must add up states, not average batches.
    return DataLoader(TensorDataset(x, torch.tensor(y_true)), batch_size=2)


def test_validation_metrics_are_the_reported_metrics():
    """Logged val acc/macro-F1/loss/confusion equal classification_metrics on the same
    predictions, with a class only predicted (3) and one absent from both (4)."""
    names = ["clean", "bridge", "open", "cmp", "via"]
    sets = {
        "val": ([0, 0, 1, 1, 2], [0, 3, 1, 1, 2]),  # hand value: (2/3 + 1 + 1 + 0) / 4
        "val_1": ([0, 1, 2, 2, 3, 1, 0], [0, 2, 2, 1, 3, 1, 1]),
    }
    model = _Scripted("plain_cnn", 5, names, {"image_size": 32}, loss=LOSS, optimizer=OPT,
                      max_epochs=1)
    trainer = _trainer()
    for _ in range(2):  # a second epoch must start from zero, not add to the first
        trainer.validate(model, [_scripted_loader(*sets[k]) for k in sets], verbose=False)
        logged = trainer.callback_metrics
        for name, (y_true, y_pred) in sets.items():
            m = classification_metrics(y_true, y_pred, names)
            assert float(logged[f"{name}/macro_f1"]) == pytest.approx(m["macro_f1"]), name
            assert float(logged[f"{name}/acc"]) == pytest.approx(m["accuracy"]), name
            assert model.last_confusion[name].tolist() == m["confusion"], name
            logits = F.one_hot(torch.tensor(y_pred), 5).float()
            loss = F.cross_entropy(logits, torch.tensor(y_true))
            assert float(logged[f"{name}/loss"]) == pytest.approx(float(loss)), name
    assert float(logged["val/macro_f1"]) == pytest.approx(2 / 3)


def test_fit_returns_one_curve_row_per_epoch_with_train_and_val_scores(items, tmp_path):
    L.seed_everything(3)
    result = fit(_model("plain_cnn", 32), _dm(items, 32), trainer_cfg=CPU_TRAINER, max_epochs=3,
                 patience=5, out_file=tmp_path / "model.ckpt", progress=False)
    assert [row["epoch"] for row in result.curve] == [0, 1, 2]
    for row in result.curve:
        assert {"train/loss", "val/acc", "val/macro_f1", "heldout/acc"} <= set(row)
        assert 0.0 <= row["val/acc"] <= 1.0
    assert len({row["train/loss"] for row in result.curve}) > 1  # a row per epoch, not one copy


def test_fit_keeps_the_last_epoch_or_the_best_val_one(items, tmp_path):
    """keep="last" delivers the final epoch's weights whatever val says; keep="best" the
    epoch whose val macro-F1 is the curve's best."""
    delivered = {}
    for keep in ("last", "best"):
        L.seed_everything(3)
        model = _model("plain_cnn", 32)
        result = fit(model, _dm(items, 32), trainer_cfg=CPU_TRAINER, max_epochs=4, patience=4,
                     out_file=tmp_path / f"{keep}.ckpt", progress=False, keep=keep)
        delivered[keep] = result.model
        if keep == "last":  # the model trained in place ends at the last epoch
            last = model.state_dict()
            assert all(torch.equal(v, last[k]) for k, v in result.model.state_dict().items())
    curve = [row["val/macro_f1"] for row in result.curve]
    val = {"val": items[18:]}
    for keep, want in (("best", max(curve)), ("last", curve[-1])):
        got = evaluate_sets(delivered[keep], val)["val"]["macro_f1"]
        assert got == pytest.approx(want, abs=1e-4), keep
    with pytest.raises(ValueError, match="keep"):
        fit(_model("plain_cnn", 32), _dm(items, 32), trainer_cfg=CPU_TRAINER, max_epochs=1,
            patience=1, out_file=tmp_path / "x.ckpt", progress=False, keep="auto")
