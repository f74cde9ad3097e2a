"""Moving the student to another phase: head surgery, freezing, replay mixing, phase rules."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_params
from pipeline.data.datamodule import MixedBatchSampler, SEMDataModule
from pipeline.data.real import require_trainable, split_real
from pipeline.errors import UserError
from pipeline.models.classifier import SEMClassifier
from pipeline.models.surgery import classifier_layer, head_row_sources, transfer_weights

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
