"""Moving the student to another phase: head surgery, freezing, replay mixing, phase rules."""

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_params
from pipeline.data.datamodule import MixedBatchSampler, SEMDataModule
from pipeline.data.real import require_trainable, split_real
from pipeline.errors import UserError
from pipeline.finetune import FitOptions, reestimate_batchnorm, start_model
from pipeline.models.classifier import SEMClassifier
from pipeline.models.surgery import classifier_layer, head_row_sources, transfer_weights
from pipeline.training import image_batches

LOSS = {"name": "ce", "label_smoothing": 0.0}
OPT = {"lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0}


def _model(classes, backbone="mobilenetv3_small_050"):
    torch.manual_seed(len(classes))
    return SEMClassifier(backbone, len(classes), list(classes), {"image_size": 32},
                         loss=LOSS, optimizer=OPT, max_epochs=1)


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "plain_cnn"])
def test_head_surgery_keeps_mapped_rows(taxonomy, backbone):
    p1, p3 = taxonomy.phase("phase1").classes, taxonomy.phase("phase3").classes
    student, target = _model(p1, backbone), _model(p3, backbone)
    report = transfer_weights(student.net, target.net, head_row_sources(taxonomy, "phase1", "phase3"))
    assert report["head_rows_new"] == []
    _, old = classifier_layer(student.net)
    _, new = classifier_layer(target.net)
    for p3_name, p1_name in [("BRIDGE", "bridge"), ("VIA", "via"), ("OTHERS", "other"),
                             ("CLEAN_VIA", "clean"), ("CLEAN_CRACK", "clean"), ("CMP", "cmp")]:
        assert torch.equal(new.weight[p3.index(p3_name)], old.weight[p1.index(p1_name)])
        assert torch.equal(new.bias[p3.index(p3_name)], old.bias[p1.index(p1_name)])
    # Every backbone tensor is the student's.
    old_state, new_state = student.net.state_dict(), target.net.state_dict()
    head = classifier_layer(target.net)[0]
    for key, value in new_state.items():
        if not key.startswith(head):
            assert torch.equal(value, old_state[key]), key


def test_a_checkpoint_start_can_move_to_another_input_size(taxonomy, tmp_path):
    classes = taxonomy.phase("phase1").classes
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(_model(classes))
    trainer.save_checkpoint(tmp_path / "teacher.ckpt", weights_only=True)
    opts = FitOptions(lr=1e-3, weight_decay=0.0, warmup_epochs=0, max_epochs=1, batch_size=4,
                      patience=1, seed=0, class_weights="none")
    rows = [[i] for i in range(len(classes))]
    same, _ = start_model(tmp_path / "teacher.ckpt", classes, [0], opts, head_sources=rows)
    moved, _ = start_model(tmp_path / "teacher.ckpt", classes, [0], opts, head_sources=rows,
                           image_size=48)
    assert (same.pp.image_size, moved.pp.image_size) == (32, 48)
    for key, value in same.net.state_dict().items():
        assert torch.equal(value, moved.net.state_dict()[key]), key
    assert moved(torch.rand(2, 1, 48, 48)).shape == (2, len(classes))


def test_freezing_keeps_batchnorm_in_eval(taxonomy):
    model = _model(taxonomy.phase("phase1").classes)
    model.freeze_first_units(2)
    frozen = [p for p in model.net.backbone.conv_stem.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert any(p.requires_grad for p in model.net.backbone.blocks[-1].parameters())
    model.train()
    model.on_train_epoch_start()
    assert not model.net.backbone.bn1.training
    assert model.net.backbone.blocks[-1].training


def test_replay_is_mixed_into_every_batch():
    sampler = MixedBatchSampler(n_main=40, n_replay=20, batch_size=8, replay_fraction=0.25, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7  # ceil(40 / 6)
    for batch in batches:
        replay = [i for i, _ in batch if i >= 40]
        assert len(replay) == 2
    main = sorted(i for b in batches for i, _ in b if i < 40)
    assert main == list(range(40))  # one epoch = one pass over the real images


def test_datamodule_uses_the_replay_buffer(tmp_path):
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((32, 32), i * 20, np.uint8)).save(path)
        paths.append(str(path))
    real = [(p, 0) for p in paths[:8]]
    replay = [(p, 1) for p in paths[8:]]
    dm = SEMDataModule(real, {"val": real[:2]}, 32, augment={"enabled": False}, batch_size=4,
                       num_workers=0, seed=0, replay=replay, replay_fraction=0.5)
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert (labels == 1).sum() > 0 and (labels == 0).sum() == 8


def test_phase2_cannot_train_or_export(root):
    from pipeline.stages import finetune_real, quantize

    cfg = load_params(root)
    with pytest.raises(UserError, match="never trains"):
        finetune_real.run(cfg, root, "phase2")
    with pytest.raises(UserError, match="delivers no model"):
        quantize.run(cfg, root, "phase2")


def test_real_split_keeps_flipped_copies_together(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for k in range(12):
        img = (rng.random((8, 8)) * 255).astype(np.uint8)
        img = np.kron(img, np.ones((8, 8), np.uint8))  # blocky, distinct images
        cls = "a" if k % 2 else "b"
        Image.fromarray(img).save(tmp_path / f"{k}.png")
        items.append((str(tmp_path / f"{k}.png"), cls))
    Image.fromarray(np.fliplr(np.array(Image.open(tmp_path / "0.png")))).save(tmp_path / "0f.png")
    items.append((str(tmp_path / "0f.png"), "b"))
    train, val, report = split_real(items, ["a", "b"], val_fraction=0.3, seed=0, max_distance=4)
    assert report["near_duplicate_groups"] == 1
    in_train = {p for p, _ in train}
    assert (str(tmp_path / "0.png") in in_train) == (str(tmp_path / "0f.png") in in_train)
    assert len(train) + len(val) == 13 and val


def test_training_refuses_a_folder_that_cannot_train():
    with pytest.raises(UserError, match="at least 4 images in 2 classes"):
        require_trainable([("x.png", 0)] * 10, ["a", "b"], "/data/real")


def test_batchnorm_reestimation_changes_only_batchnorm_buffers(tmp_path):
    """AdaBN: the running statistics become those of the target images; weights stay."""
    model = _model(["a", "b", "c"])
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):  # bright, low-contrast "target" images unlike the init statistics
        path = tmp_path / f"t{i}.png"
        Image.fromarray(rng.integers(180, 220, (40, 40), dtype=np.uint8)).save(path)
        paths.append(str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = {name for name, m in model.net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert reestimate_batchnorm(model, paths, batch_size=4) == len(norms) > 0
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert changed and all(k.endswith(buffers) and k.startswith("net.") and
                           k.removeprefix("net.").rsplit(".", 1)[0] in norms for k in changed)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(buffers))
    assert not any(m.training for m in model.modules())  # left in eval, momentum restored
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # The first BatchNorm holds the average over batches of its input's batch mean (its
    # input does not depend on any BatchNorm statistics).
    first = next(m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first.register_forward_hook(lambda m, i, o: seen.append(i[0].mean((0, 2, 3))))
    with torch.no_grad():
        for x in image_batches([(p, 0) for p in paths], model.pp, 4):
            model(x)
    hook.remove()
    assert torch.allclose(first.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    assert reestimate_batchnorm(model, [], batch_size=4) == 0


def test_pseudo_label_threshold_is_the_loosest_one_that_keeps_val_precision():
    from pipeline.recipes import NO_PSEUDO_LABEL, confidence_threshold

    # Confidences 0.95 .. 0.50 (one per row); the labeller is wrong on rows 2 and 5.
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5])
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = [0, 0, 1, 0, 0, 1, 0]
    assert confidence_threshold(probs, labels, 1.0) == 0.9  # before the first mistake
    assert confidence_threshold(probs, labels, 0.8) == 0.7  # 4 of the top 5 right
    assert confidence_threshold(probs, labels, 0.0) == 0.5  # everything
    assert confidence_threshold(probs, [1] * 7, 0.5) == NO_PSEUDO_LABEL > 1.0


def test_label_free_matching_refuses_teachers_it_cannot_use(root, tmp_path):
    """With no labelled image nothing can fine-tune a teacher: label-free matching takes the
    synthetic teacher as it is, so it must hold the phase's classes."""
    import lightning

    from pipeline.recipes import PhaseData, RecipeOptions, train_phase_model

    cfg = load_params(root, ["finetune.matching.label_free=true"])
    teacher = _model(["a", "b"])
    ckpt = tmp_path / "models/teacher/model.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    data = PhaseData([("s.png", 0)], [("v.png", 0)], False, ["u.png"])
    opts = RecipeOptions.from_config(cfg, tmp_path, [])
    assert opts.label_free
    with pytest.raises(UserError, match=r"trained on \['a', 'b'\], not this phase's classes"):
        train_phase_model(data, ["a", "b", "c"], opts, tmp_path / "out")
    imagenet = RecipeOptions.from_config(
        load_params(root, ["finetune.matching.label_free=true",
                           "finetune.teachers=[synthetic,efficientnet_lite0]"]), tmp_path, [])
    with pytest.raises(UserError, match="needs labelled real images"):
        train_phase_model(data, ["a", "b"], imagenet, tmp_path / "out")


def test_source_free_adaptation_needs_label_free_matching(root, tmp_path):
    from pipeline.recipes import RecipeOptions

    with pytest.raises(UserError, match=r"finetune\.source_free\.enabled.*label_free is false"):
        load_params(root, ["finetune.matching.label_free=false"])
    opts = RecipeOptions.from_config(load_params(root, ["finetune.source_free.epochs=3"]),
                                     tmp_path, [])
    assert opts.source_free.epochs == 3 and opts.source_free.seed == opts.matching.seed
    off = load_params(root, ["finetune.source_free.enabled=false"])
    assert RecipeOptions.from_config(off, tmp_path, []).source_free is None


def test_label_free_auto_is_on_where_the_synthetic_teacher_knows_the_classes(root):
    from pipeline.recipes import label_free_for

    cfg = load_params(root)
    assert cfg["finetune"]["matching"]["label_free"] == "auto"
    assert cfg["train"]["phase"] == cfg["phases"]["phase1"]["taxonomy"] != \
        cfg["phases"]["phase3"]["taxonomy"]
    assert label_free_for(cfg, "phase1") and not label_free_for(cfg, "phase3")
    assert not label_free_for(cfg, None)
    imagenet = load_params(root, ["finetune.teachers=[synthetic,efficientnet_lite0]"])
    assert not label_free_for(imagenet, "phase1")
    for value in (True, False):
        forced = load_params(root, [f"finetune.matching.label_free={str(value).lower()}",
                                    "finetune.source_free.enabled=false"])
        assert label_free_for(forced, "phase3") is value
