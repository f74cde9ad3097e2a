"""Source-free adaptation of a trained classifier to unlabelled target images (SHOT, Liang et
al. 2020, "Do we really need to access the source data?").

The classifier layer (the "hypothesis") stays as the source data trained it; every other
weight moves so that the model's predictions on the target images are confident for each
image (low entropy) and spread over the classes (high entropy of the mean prediction), plus a
cross-entropy to pseudo-labels from feature centroids, recomputed every epoch. No label and
no source image is needed: this is the adaptation open to a phase with unlabelled real images
only (phase 1). The caller writes the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from pipeline.data.datamodule import ImageDataset
from pipeline.data.transforms import build_augment
from pipeline.models.classifier import SEMClassifier
from pipeline.models.surgery import classifier_layer

_EPS = 1e-6


@dataclass(frozen=True)
class SourceFreeOptions:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    pseudo_label_weight: float = 0.3  # SHOT's beta: 0 leaves information maximisation alone
    seed: int = 0
    augment: Mapping = field(default_factory=lambda: {"enabled": True})

    @classmethod
    def from_config(cls, section: Mapping, seed: int, augment: Mapping) -> SourceFreeOptions:
        return cls(epochs=section["epochs"], lr=section["lr"], batch_size=section["batch_size"],
                   pseudo_label_weight=section["pseudo_label_weight"], seed=seed,
                   augment=dict(augment))


def adapt_source_free(model: SEMClassifier, images: Sequence[str],
                      opts: SourceFreeOptions) -> dict:
    """Adapt `model` in place to the unlabelled `images` (paths); the classifier layer is
    left unchanged. Deterministic for a seed. Returns figures that need no label: the mean
    prediction entropy before and after, and the share of pseudo-labels that changed in the
    last epoch."""
    if not images:
        return {"source_free_images": 0}
    _, head = classifier_layer(model.net)
    fixed = {id(p) for p in head.parameters()}
    trainable = [p for p in model.net.parameters() if id(p) not in fixed]
    saved = [p.requires_grad for p in head.parameters()]
    for p in head.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(trainable, lr=opts.lr, momentum=0.9, weight_decay=5e-4,
                                nesterov=True)
    items = [(path, i) for i, path in enumerate(images)]  # the label slot carries the index
    size = model.pp.image_size
    views = ImageDataset(items, size, build_augment(dict(opts.augment), size), seed=opts.seed,
                         preload=True)
    plain = ImageDataset(items, size, preload=True)
    generator = torch.Generator().manual_seed(opts.seed)
    features, probs = _features_and_probs(model, head, plain, opts.batch_size)
    entropy_before, pseudo, changed = float(_entropy(probs).mean()), None, 1.0
    try:
        for epoch in range(opts.epochs):
            previous, pseudo = pseudo, centroid_labels(features, probs)
            if previous is not None:
                changed = float((pseudo != previous).float().mean())
            model.train()
            order = torch.randperm(len(items), generator=generator).tolist()
            for start in range(0, len(order), opts.batch_size):
                batch = order[start: start + opts.batch_size]
                if len(batch) < 2:  # batch-norm statistics need two images
                    continue
                x = torch.stack([views[(i, epoch)][0] for i in batch])
                logits = model(x)
                loss = information_maximisation(logits) + opts.pseudo_label_weight * \
                    F.cross_entropy(logits, pseudo[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            features, probs = _features_and_probs(model, head, plain, opts.batch_size)
    finally:
        for p, grad in zip(head.parameters(), saved, strict=True):
            p.requires_grad_(grad)
        model.eval()
    return {"source_free_images": len(images), "source_free_epochs": opts.epochs,
            "source_free_entropy_before": entropy_before,
            "source_free_entropy_after": float(_entropy(probs).mean()),
            "source_free_pseudo_labels_changed": changed}


def information_maximisation(logits: Tensor) -> Tensor:
    """Mean entropy of the predictions minus the entropy of their mean: low when each image
    is predicted confidently and the batch uses every class (SHOT's L_ent + L_div)."""
    probs = logits.softmax(1)
    mean = probs.mean(0)
    return _entropy(probs).mean() + (mean * torch.log(mean + _EPS)).sum()


def centroid_labels(features: Tensor, probs: Tensor, rounds: int = 2) -> Tensor:
    """SHOT's self-supervised pseudo-labels: class centroids of the (L2-normalised, bias
    augmented) features weighted by the predictions, each image labelled by its nearest
    centroid (cosine), then the centroids recomputed from those labels `rounds - 1` times."""
    f = F.normalize(torch.cat([features, torch.ones(len(features), 1)], 1), dim=1)
    weights = probs
    for _ in range(rounds):
        centroids = F.normalize(weights.T @ f / (weights.sum(0)[:, None] + _EPS), dim=1)
        similarity = f @ centroids.T
        similarity[:, weights.sum(0) <= _EPS] = -2.0  # a class nothing is assigned to
        labels = similarity.argmax(1)
        weights = F.one_hot(labels, probs.shape[1]).float()
    return labels


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * torch.log(probs + _EPS)).sum(1)


@torch.no_grad()
def _features_and_probs(model: SEMClassifier, head: torch.nn.Linear, dataset: ImageDataset,
                        batch_size: int) -> tuple[Tensor, Tensor]:
    """The classifier layer's inputs and the softmax outputs, eval mode, no augmentation."""
    model.eval()
    features: list[Tensor] = []
    hook = head.register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
    try:
        probs = [model(x).softmax(1) for x, _ in DataLoader(dataset, batch_size=batch_size)]
    finally:
        hook.remove()
    return torch.cat(features).flatten(1), torch.cat(probs)

