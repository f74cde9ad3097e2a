"""How far synthetic images are from real ones, measured instead of guessed.

- Fréchet distance between the two sets' frozen ImageNet features (EfficientNet-Lite0 from
  the offline package, globally pooled, reduced to 32 dimensions by PCA fitted on both sets:
  with a few dozen images per class a 1280-dimensional covariance is not estimable; compare
  distances of sets of similar sizes only, as the estimate grows as sets shrink);
- the cross-validated accuracy of a logistic real-vs-synthetic classifier on those
  features, on equal numbers of each (chance, 50 %, means no gap it can see);
- low-level statistics side by side: contrast, sharpness, noise level, mean grey level.
Overall and per class where both sides have labels (mapped to one phase's taxonomy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

STATS = ("contrast", "sharpness", "noise", "mean_grey")
_MIN_PER_SIDE = 10


_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def image_stats(img: np.ndarray) -> dict[str, float]:
    """Low-level statistics of a uint8 grey image, each on a 0-1 grey scale: RMS contrast,
    sharpness (variance of the Laplacian), noise sigma (Immerkær 1996: a kernel blind to
    planes and lines, so edges count little) and mean grey level."""
    f = img.astype(np.float32) / 255.0
    h, w = f.shape
    response = cv2.filter2D(f, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    noise = np.sqrt(np.pi / 2) * np.abs(response).sum() / (6 * (w - 2) * (h - 2))
    return {"contrast": float(f.std()), "mean_grey": float(f.mean()),
            "sharpness": float(cv2.Laplacian(f, cv2.CV_32F).var()), "noise": float(noise)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def domain_accuracy(a: np.ndarray, b: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated accuracy of telling `a` from `b` (equal numbers drawn from each)."""
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    x = np.concatenate([a[rng.choice(len(a), n, replace=False)],
                        b[rng.choice(len(b), n, replace=False)]])
    y = np.repeat([0, 1], n)
    clf = LogisticRegression(C=0.1, max_iter=2000)
    return float(cross_val_score(clf, x, y, cv=min(folds, n)).mean())


@dataclass
class GapRow:
    scope: str  # "all" or a class name
    n_synthetic: int
    n_real: int
    frechet: float | None
    domain_accuracy: float | None
    stats: dict[str, dict[str, float]]  # statistic → {"synthetic": median, "real": median}


def domain_gap(synthetic_features: np.ndarray, real_features: np.ndarray,
               synthetic_stats: Sequence[Mapping[str, float]],
               real_stats: Sequence[Mapping[str, float]],
               synthetic_labels: Sequence[str] | None = None,
               real_labels: Sequence[str] | None = None, *, components: int = 32,
               seed: int = 0) -> list[GapRow]:
    """The gap overall and, when both sides are labelled, per class present on both."""
    both = np.concatenate([synthetic_features, real_features])
    pca = PCA(n_components=min(components, len(both) - 1, both.shape[1]), random_state=seed)
    pca.fit(both)
    syn, real = pca.transform(synthetic_features), pca.transform(real_features)
    scopes = [("all", np.ones(len(syn), bool), np.ones(len(real), bool))]
    if synthetic_labels is not None and real_labels is not None:
        s_lab, r_lab = np.asarray(synthetic_labels), np.asarray(real_labels)
        scopes += [(c, s_lab == c, r_lab == c) for c in sorted(set(s_lab) & set(r_lab))]
    rows = []
    for scope, s_mask, r_mask in scopes:
        n_s, n_r = int(s_mask.sum()), int(r_mask.sum())
        enough = min(n_s, n_r) >= _MIN_PER_SIDE
        rows.append(GapRow(
            scope, n_s, n_r,
            frechet_distance(syn[s_mask], real[r_mask]) if enough else None,
            domain_accuracy(syn[s_mask], real[r_mask], seed) if enough else None,
            {k: {"synthetic": float(np.median([synthetic_stats[i][k] for i in np.flatnonzero(
                s_mask)])), "real": float(np.median([real_stats[i][k]
                                                     for i in np.flatnonzero(r_mask)]))}
             for k in STATS}))
    return rows


def gap_table(rows: Sequence[GapRow]) -> str:
    """A markdown table of the rows."""
    head = ("| scope | synthetic | real | Fréchet distance | real-vs-synthetic accuracy | "
            + " | ".join(f"{k} syn / real" for k in STATS) + " |")
    lines = [head, "|" + "---|" * (5 + len(STATS))]
    for r in rows:
        fd = "—" if r.frechet is None else f"{r.frechet:.1f}"
        acc = "—" if r.domain_accuracy is None else f"{100 * r.domain_accuracy:.1f} %"
        stats = " | ".join(f"{r.stats[k]['synthetic']:.4f} / {r.stats[k]['real']:.4f}"
                           for k in STATS)
        lines.append(f"| {r.scope} | {r.n_synthetic} | {r.n_real} | {fd} | {acc} | {stats} |")
    return "\n".join(lines)


def measure_folders(synthetic_dir: Path, real_dir: Path, taxonomy, phase: str, out_dir: Path,
                    *, per_class: int = 60, image_size: int = 128, seed: int = 0,
                    style=None) -> list[GapRow]:
    """The gap between a synthesize output folder and a real folder (class folders through
    the importer, or an unlabelled folder), written to out_dir (JSON and figure); returns
    the rows (`gap_table` prints them). `style` (a pipeline.data.style.StyleTransfer)
    restyles the synthetic images first, as training would see them."""
    from dataclasses import asdict

    from pipeline.data.images import read_gray8, to_model_input
    from pipeline.data.importer import import_folder, load_unlabelled
    from pipeline.errors import UserError
    from pipeline.evaluate.plots import save_figure
    from pipeline.files import read_csv, write_json
    from pipeline.models.features import image_features

    labels_csv = Path(synthetic_dir) / "labels.csv"
    if not labels_csv.is_file():
        raise UserError(f"{labels_csv} not found: give the synthesize stage's output folder "
                        "(data/synthetic)")
    rng = np.random.default_rng(seed)
    rows = read_csv(labels_csv)
    by_fine: dict[str, list[dict]] = {}
    for row in rows:
        by_fine.setdefault(row["fine_class"], []).append(row)
    picked = [r for fine in sorted(by_fine) for r in (
        by_fine[fine][i] for i in sorted(rng.choice(len(by_fine[fine]),
                                                    min(per_class, len(by_fine[fine])),
                                                    replace=False).tolist()))]
    syn_paths = [Path(synthetic_dir) / r["path"] for r in picked]
    syn_labels = [taxonomy.map_fine(r["fine_class"], phase) for r in picked]
    classes = taxonomy.phase(phase).classes
    labelled = any(d.is_dir() and taxonomy.resolve_folder(d.name, classes)
                   for d in Path(real_dir).iterdir()) if Path(real_dir).is_dir() else False
    if labelled:
        found = import_folder(Path(real_dir), classes, taxonomy).items
        real_paths, real_labels = [p for p, _ in found], [c for _, c in found]
    else:
        real_paths, real_labels = load_unlabelled(Path(real_dir))[0], None
    if not real_paths:
        raise UserError(f"{real_dir}: no readable images")
    images = {side: [to_model_input(read_gray8(Path(p)), image_size) for p in paths]
              for side, paths in (("synthetic", syn_paths), ("real", real_paths))}
    if style is not None:
        images["synthetic"] = [style(img, np.random.default_rng([seed, i, 7]))
                               for i, img in enumerate(images["synthetic"])]
    features = {side: image_features(np.stack(imgs)[:, None].astype(np.float32) / 255.0)
                for side, imgs in images.items()}
    stats = {side: [image_stats(img) for img in imgs] for side, imgs in images.items()}
    rows_out = domain_gap(features["synthetic"], features["real"], stats["synthetic"],
                          stats["real"], syn_labels if real_labels else None, real_labels,
                          seed=seed)
    out_dir = Path(out_dir)
    write_json(out_dir / "domain_gap.json", {
        "synthetic": str(synthetic_dir), "real": str(real_dir), "taxonomy": phase,
        "style": None if style is None else {"method": style.method, "p": style.p,
                                             "fda_beta": style.fda_beta,
                                             "references": len(style.references)},
        "rows": [asdict(r) for r in rows_out]})
    save_figure(stats_figure(stats), out_dir / "domain_gap_stats.png")
    return rows_out


def stats_figure(stats: Mapping[str, Sequence[Mapping[str, float]]]):
    """Histograms of each low-level statistic, synthetic against real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATS), figsize=(4 * len(STATS), 3))
    for ax, key in zip(axes, STATS, strict=True):
        for side, values in stats.items():
            ax.hist([v[key] for v in values], bins=30, alpha=0.5, density=True, label=side)
        ax.set_title(key)
    axes[0].legend()
    fig.tight_layout()
    return fig
