"""Source-free adaptation (SHOT): its objective, its pseudo-labels and what it may change."""

import numpy as np
import torch
from PIL import Image

from pipeline.models.classifier import SEMClassifier
from pipeline.models.surgery import classifier_layer
from pipeline.source_free import (
    SourceFreeOptions,
    adapt_source_free,
    centroid_labels,
    information_maximisation,
)


def test_information_maximisation_prefers_confident_and_diverse_predictions():
    confident_diverse = torch.eye(4) * 20
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = 20  # confident, but every image in one class
    uniform = torch.zeros(4, 4)  # diverse on average, but no image is confident
    im = {k: float(information_maximisation(v)) for k, v in
          {"diverse": confident_diverse, "collapsed": collapsed, "uniform": uniform}.items()}
    assert im["diverse"] < -np.log(4) + 1e-3  # its minimum: -log(classes)
    assert im["diverse"] < im["collapsed"] - 1.0 and im["diverse"] < im["uniform"] - 1.0


def test_centroid_labels_follow_the_feature_clusters_not_the_noisy_predictions():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 5
    truth = np.repeat(np.arange(3), 20)
    features = torch.tensor(centres[truth] + rng.normal(0, 0.3, (60, 8)), dtype=torch.float32)
    probs = torch.full((60, 3), 0.2)
    probs[torch.arange(60), torch.from_numpy(truth)] = 0.6
    wrong = rng.choice(60, 15, replace=False)  # a quarter predicted in the next class
    probs[wrong] = probs[wrong].roll(1, dims=1)
    assert (probs.argmax(1).numpy() == truth).mean() == 0.75
    assert (centroid_labels(features, probs).numpy() == truth).all()


def _images(tmp_path, n=12):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = tmp_path / f"u{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _model():
    torch.manual_seed(0)
    return SEMClassifier("mobilenetv3_small_050", 3, ["a", "b", "c"], {"image_size": 32},
                         loss={"name": "ce", "label_smoothing": 0.0},
                         optimizer={"lr": 1e-3, "weight_decay": 0.0, "warmup_epochs": 0},
                         max_epochs=1)


def test_adaptation_keeps_the_classifier_layer_and_is_deterministic(tmp_path):
    paths = _images(tmp_path)
    opts = SourceFreeOptions(epochs=2, lr=0.01, batch_size=5, seed=3)
    runs = []
    for _ in range(2):
        model = _model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        facts = adapt_source_free(model, paths, opts)
        runs.append(model.state_dict())
        head_name, _ = classifier_layer(model.net)
        head_keys = {k for k in before if k.startswith(f"net.{head_name}.")}
        assert head_keys and all(torch.equal(before[k], runs[-1][k]) for k in head_keys)
        assert any(not torch.equal(before[k], runs[-1][k]) for k in before
                   if k not in head_keys and k.endswith("weight"))
        assert all(p.requires_grad for p in model.parameters())  # the head's flag restored
        assert not model.training
        assert facts["source_free_images"] == 12 and facts["source_free_epochs"] == 2
        assert 0.0 <= facts["source_free_pseudo_labels_changed"] <= 1.0
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_adaptation_without_images_changes_nothing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert adapt_source_free(model, [], SourceFreeOptions()) == {"source_free_images": 0}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
