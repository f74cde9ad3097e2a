"""Moving a trained model to another taxonomy: weight transfer with head surgery, and freezing.

A phase-3 model starts from the phase-1 student: every backbone weight is copied, and each
row of the new classifier is initialised from the old rows of the classes that map onto it
(through the fine-class tables), so `bridge` keeps its weights as `BRIDGE` and the three
CLEAN_* classes all start from `clean`. Rows with no source keep their fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.taxonomy import Taxonomy


def classifier_layer(net: nn.Module) -> tuple[str, nn.Linear]:
    """The final classification layer (the last nn.Linear) and its qualified name."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear classifier")
    return linears[-1]


def head_row_sources(taxonomy: Taxonomy, old_phase: str, new_phase: str) -> list[list[int]]:
    """For each class of `new_phase`, the indices of `old_phase` classes that map onto it."""
    old = taxonomy.phase(old_phase)
    new = taxonomy.phase(new_phase)
    sources: list[list[int]] = []
    for cls in new.classes:
        fine = [f for f, c in new.from_fine.items() if c == cls]
        sources.append(sorted({old.index(old.from_fine[f]) for f in fine}))
    return sources


@torch.no_grad()
def transfer_weights(src: nn.Module, dst: nn.Module, row_sources: Sequence[Sequence[int]]) -> dict:
    """Copy all matching tensors from src to dst; build dst's head rows from src's rows.

    Returns {"copied": n tensors, "head_rows_from_source": [...], "head_rows_new": [...]}.
    """
    head_name, dst_head = classifier_layer(dst)
    _, src_head = classifier_layer(src)
    if len(row_sources) != dst_head.out_features:
        raise ValueError(f"{len(row_sources)} row sources for {dst_head.out_features} outputs")
    src_state = src.state_dict()
    dst_state = dst.state_dict()
    copied = 0
    for key, value in dst_state.items():
        if key.startswith(f"{head_name}.") or key not in src_state:
            continue
        if src_state[key].shape == value.shape:
            value.copy_(src_state[key])
            copied += 1
    dst.load_state_dict(dst_state)
    mapped, fresh = [], []
    for row, sources in enumerate(row_sources):
        if not sources:
            fresh.append(row)
            continue
        dst_head.weight[row] = src_head.weight[list(sources)].mean(0)
        if dst_head.bias is not None and src_head.bias is not None:
            dst_head.bias[row] = src_head.bias[list(sources)].mean(0)
        mapped.append(row)
    return {"copied": copied, "head_rows_from_source": mapped, "head_rows_new": fresh}


def feature_units(backbone: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of freezable units, stem first, classifier excluded.

    timm models expose `blocks` (MobileNet, EfficientNet) or `stages` (ConvNeXt) or
    `layer1..4` (ResNet); everything before those forms the stem unit.
    """
    children = list(backbone.named_children())
    head_name = classifier_layer(backbone)[0].split(".")[0]
    for seq_name in ("blocks", "stages", "features"):
        if hasattr(backbone, seq_name):
            names = [n for n, _ in children]
            stem = [m for n, m in children[: names.index(seq_name)]]
            units = [nn.ModuleList(stem)] if stem else []
            seq = getattr(backbone, seq_name)
            if seq_name == "features":  # PlainCNN: one unit per conv block (ends at a pool)
                unit: list[nn.Module] = []
                for m in seq:
                    unit.append(m)
                    if isinstance(m, nn.MaxPool2d):
                        units.append(nn.ModuleList(unit))
                        unit = []
                return units
            return units + list(seq)
    return [m for n, m in children if n != head_name and any(True for _ in m.parameters())]


def freeze_first(backbone: nn.Module, n: int) -> list[nn.Module]:
    """Freeze the first n units (no gradients); returns them so BatchNorm can stay in eval."""
    units = feature_units(backbone)[: max(0, n)]
    for unit in units:
        unit.requires_grad_(False)
        unit.eval()
    return units
