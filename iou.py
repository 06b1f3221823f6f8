"""Intersection over Union (IoU): how well a predicted segmentation mask covers the true one.

In plain words: lay the predicted mask P over the ground-truth mask G. The *intersection* is the
set of pixels both call foreground; the *union* is the set of pixels at least one of them calls
foreground. IoU is the size of the first divided by the size of the second,

    IoU(P, G) = |P ∩ G| / |P ∪ G|,

a number in [0, 1]: 1 when the masks are identical, 0 when they do not touch. Predicting too
much is punished (the union grows) as much as predicting too little (the intersection shrinks).
Both masks are compared at the ground truth's size. When both masks are empty the union is
empty too; we count that as 1.0 - nothing was predicted where there was nothing to find.

A CAM becomes a mask by min-max normalising it to [0, 1] and keeping the pixels at or above a
threshold (:func:`minmax_normalize`, :func:`threshold_masks`). The handout asks for one threshold
shared by the CAM and SEG modes; :func:`choose_threshold` picks it from *training* masks, never
test ones, and :data:`DEFAULT_THRESHOLD` is the value used until then.

Ground-truth masks are read from ``test_seg/<stem>.png``; the masks that ``visualize.py`` writes
are ``visualize/<experiment>/<stem>_seg.png``. ``python iou.py`` tabulates every experiment's
IoUs into ``report/iou.csv`` and ``report/iou.md``.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Sequence

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from dataloader import read_mask  # noqa: E402
from utils import DEFAULT_DATA_ROOT, REPORT_DIR, VISUALIZE_DIR, CamlabError  # noqa: E402
from utils import atomic_write, atomic_write_text  # noqa: E402

# Threshold on a min-max normalised CAM that visualisation uses until one is chosen from data.
DEFAULT_THRESHOLD: float = 0.5
# Candidate thresholds for choose_threshold: 0.05, 0.10, ..., 0.95 (rounded, so 0.15 prints as 0.15).
THRESHOLD_GRID: tuple[float, ...] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PRED_SUFFIX = "_seg.png"  # visualize.py writes <stem>_seg.png


# ------------------------------------------------------------------------------ IoU itself
def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    """bool masks as they are; uint8 masks foreground where > 127 (0/255 images)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype == np.uint8:
        return mask > 127
    raise CamlabError(f"{name} mask must be bool or uint8, not {mask.dtype}")


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool H×W mask resized to ``shape`` (H, W) by nearest neighbour (stays binary)."""
    if mask.shape == shape:
        return mask
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def batch_iou(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU per image of same-sized bool masks ``preds`` and ``gts`` (N×H×W) -> float64 N.

    An empty union (both masks empty) gives 1.0.
    """
    inter = np.logical_and(preds, gts).sum(axis=(-2, -1))
    union = np.logical_or(preds, gts).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU = |P ∩ G| / |P ∪ G| of one predicted mask and one ground-truth mask.

    pred, gt: H×W masks, bool or uint8 (uint8: foreground where > 127, as in 0/255 images).
    It is computed at the ground truth's size: a pred of another size is resized to gt's with
    nearest-neighbour interpolation. Both masks empty -> 1.0 (nothing predicted where there is
    nothing: perfect); exactly one empty -> 0.0.
    """
    pred, gt = _as_bool(pred, "predicted"), _as_bool(gt, "ground-truth")
    if pred.ndim != 2 or gt.ndim != 2:
        raise CamlabError(f"iou() takes two H×W masks, got shapes {pred.shape} and {gt.shape}")
    return float(batch_iou(_resize_nearest(pred, gt.shape), gt))


def _as_batch(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    return masks[None] if masks.ndim == 2 else masks


class IoUMeter:
    """Accumulates per-image IoUs; :meth:`compute` gives their mean (each image counts once)."""

    def __init__(self) -> None:
        self._values: list[float] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image (H×W masks) or a batch (N×H×W); same rules as :func:`iou`."""
        preds, gts = _as_batch(pred), _as_batch(gt)
        if len(preds) != len(gts):
            raise CamlabError(f"IoUMeter.update: {len(preds)} predicted masks but {len(gts)} ground truths")
        self._values.extend(iou(p, g) for p, g in zip(preds, gts))

    def compute(self) -> float:
        """Mean IoU over every image added so far."""
        if not self._values:
            raise CamlabError("IoUMeter.compute: no masks were added")
        return float(np.mean(self._values))

    @property
    def values(self) -> list[float]:
        """The per-image IoUs, in the order they were added (a copy)."""
        return list(self._values)

    def reset(self) -> None:
        self._values.clear()


# ------------------------------------------------------------------------- CAMs to masks
def minmax_normalize(cam: np.ndarray) -> np.ndarray:
    """Each map (the last two axes of an H×W or N×H×W array) scaled to [0, 1].

    Floating input keeps its dtype; integer input becomes float32. A constant map has no
    range to scale and becomes all zeros (not NaN). NaN or inf in a map -> CamlabError.
    """
    cam = np.asarray(cam)
    if not np.issubdtype(cam.dtype, np.floating):
        cam = cam.astype(np.float32)
    if not np.isfinite(cam).all():
        raise CamlabError("minmax_normalize: the CAM contains NaN or inf")
    lo = cam.min(axis=(-2, -1), keepdims=True)
    span = cam.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (cam - lo) / np.where(span > 0, span, 1), 0).astype(cam.dtype)


def _check_unit_range(cams: np.ndarray) -> np.ndarray:
    cams = np.asarray(cams)
    if cams.size and not (np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1):
        raise CamlabError("CAMs must be min-max normalised to [0, 1] first (minmax_normalize)")
    return cams


def threshold_masks(cams: np.ndarray, threshold: float) -> np.ndarray:
    """bool masks (same shape) of float CAMs in [0, 1] (H×W or N×H×W): cam >= threshold."""
    return _check_unit_range(cams) >= threshold


def _resize_cams(cams: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float N×h×w CAMs -> float32 N×H×W by bilinear interpolation, kept inside [0, 1]."""
    if cams.shape[1:] == shape:
        return cams
    size = (shape[1], shape[0])
    resized = [cv2.resize(c.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) for c in cams]
    return np.clip(np.stack(resized), 0, 1)  # rounding must not push a value past 1


def iou_curve(cams: np.ndarray, gts: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Mean IoU over the images at each threshold -> float64 array, one value per threshold.

    cams: float N×h×w in [0, 1] (see :func:`minmax_normalize`); gts: bool (or 0/255 uint8)
    N×H×W. CAMs of another size are resized to the ground truth's with bilinear interpolation
    before thresholding. Vectorised over the images; one pass per threshold.
    """
    cams, gts = _as_batch(_check_unit_range(cams)), _as_bool(_as_batch(gts), "ground-truth")
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if len(cams) != len(gts) or not len(cams) or not len(thresholds):
        raise CamlabError(f"iou_curve: {len(cams)} CAMs, {len(gts)} masks and {len(thresholds)} "
                          "thresholds (need as many CAMs as masks, and at least one of each)")
    cams = _resize_cams(cams, gts.shape[1:])
    return np.array([batch_iou(threshold_masks(cams, t), gts).mean() for t in thresholds])


def choose_threshold(cams: np.ndarray, gts: np.ndarray,
                     thresholds: Sequence[float] | np.ndarray = THRESHOLD_GRID) -> tuple[float, float]:
    """(best threshold, its mean IoU) over ``thresholds``; ties go to the lowest threshold.

    Use TRAINING images' CAMs and masks only, never the test ones: a threshold tuned on the
    test masks makes the test IoU an optimistic, invalid estimate. Arguments as in
    :func:`iou_curve`.
    """
    curve = iou_curve(cams, gts, thresholds)
    best = int(np.argmax(curve))
    return float(np.asarray(thresholds, dtype=np.float64).ravel()[best]), float(curve[best])


# ------------------------------------------------------------------------------ mask files
def read_mask_dir(folder: Path | str) -> dict[str, np.ndarray]:
    """stem -> bool H×W mask for every PNG/JPG/JPEG/BMP file in ``folder``, sorted by stem.

    Each file goes through :func:`dataloader.read_mask`. A missing folder, or two files with the
    same stem (``a.png`` and ``a.bmp``), -> CamlabError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CamlabError(f"mask folder {folder} does not exist")
    masks: dict[str, np.ndarray] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES and p.is_file()):
        if path.stem in masks:
            raise CamlabError(f"two masks named {path.stem!r} in {folder}: keep one of them")
        masks[path.stem] = read_mask(path)
    return dict(sorted(masks.items()))


def _table_for(pred_dir: Path, gts: dict[str, np.ndarray]) -> dict[str, float]:
    table = {}
    for stem, gt in gts.items():
        pred_path = pred_dir / f"{stem}{PRED_SUFFIX}"
        if not pred_path.is_file():
            raise CamlabError(f"no predicted mask {pred_path} for ground truth {stem!r}: "
                              "run visualize.py for this experiment first")
        table[stem] = iou(read_mask(pred_path), gt)
    return table


def _read_gts(gt_dir: Path | str) -> dict[str, np.ndarray]:
    gts = read_mask_dir(gt_dir)
    if not gts:
        raise CamlabError(f"no ground-truth masks (*.png, *.jpg, *.bmp) in {gt_dir}")
    return gts


def iou_table(pred_dir: Path | str, gt_dir: Path | str) -> dict[str, float]:
    """stem -> IoU of ``pred_dir/<stem>_seg.png`` against ``gt_dir/<stem>.png`` (sorted by stem).

    Every ground-truth stem needs a prediction (else CamlabError naming the missing file);
    other files in ``pred_dir`` (``*_cam.png`` overlays, other stems) are ignored.
    """
    return _table_for(Path(pred_dir), _read_gts(gt_dir))


def experiment_table(visualize_dir: Path | str,
                     gt_dir: Path | str) -> tuple[list[str], list[str], np.ndarray]:
    """IoU of every experiment folder under ``visualize_dir`` that holds ``*_seg.png`` files.

    Returns (stems sorted, experiment names sorted, float64 matrix stems×experiments).
    """
    visualize_dir = Path(visualize_dir)
    if not visualize_dir.is_dir():
        raise CamlabError(f"{visualize_dir} does not exist: run visualize.py first")
    runs = sorted(d for d in visualize_dir.iterdir() if d.is_dir() and any(d.glob(f"*{PRED_SUFFIX}")))
    if not runs:
        raise CamlabError(f"no experiment folder with *{PRED_SUFFIX} masks under {visualize_dir}")
    gts = _read_gts(gt_dir)
    tables = [_table_for(run, gts) for run in runs]
    matrix = np.array([[t[stem] for t in tables] for stem in gts], dtype=np.float64)
    return list(gts), [run.name for run in runs], matrix


# --------------------------------------------------------------------------------- report
def _check_matrix(stems: Sequence[str], experiments: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(stems), len(experiments)) or not len(stems):
        raise CamlabError(f"IoU matrix of shape {matrix.shape} does not match "
                          f"{len(stems)} images × {len(experiments)} experiments")
    return matrix


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a bare '|' would split the markdown cell


def format_table(stems: Sequence[str], experiments: Sequence[str], matrix: np.ndarray) -> tuple[str, str]:
    """(csv text, markdown text) of a stems×experiments IoU matrix.

    One row per stem, then a ``mean`` row (the mean over the stems); one column per experiment;
    values with 4 decimals.
    """
    matrix = _check_matrix(stems, experiments, matrix)
    header = ["image", *experiments]
    rows = [[s, *(f"{v:.4f}" for v in r)] for s, r in zip(stems, matrix)]
    rows.append(["mean", *(f"{v:.4f}" for v in matrix.mean(axis=0))])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    lines = [header, ["---", *("---:" for _ in experiments)], *rows]
    md = "".join("| " + " | ".join(_md_cell(c) for c in line) + " |\n" for line in lines)
    return buf.getvalue(), md


def write_report(stems: Sequence[str], experiments: Sequence[str], matrix: np.ndarray,
                 report_dir: Path | str = REPORT_DIR) -> None:
    """``report_dir/iou.csv`` and ``report_dir/iou.md`` (see :func:`format_table`), atomically."""
    csv_text, md_text = format_table(stems, experiments, matrix)
    atomic_write_text(Path(report_dir) / "iou.csv", csv_text)
    atomic_write_text(Path(report_dir) / "iou.md", md_text)


def plot_iou_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path | str,
                    chosen: dict[str, float] | None = None) -> None:
    """Mean IoU against threshold, one line per experiment, written atomically as PNG.

    curves: experiment -> (thresholds, mean IoUs), both float arrays T, thresholds increasing.
    chosen: experiment -> its chosen threshold, marked on that experiment's line.
    """
    if not curves:
        raise CamlabError("plot_iou_curves: no curves to draw")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, (thresholds, mious) in curves.items():
        line, = ax.plot(thresholds, mious, "-", label=name)
        if chosen and name in chosen:
            t = chosen[name]
            y = np.interp(t, thresholds, mious)
            ax.plot([t], [y], "o", color=line.get_color(), markersize=7)
    ax.set(xlabel="threshold on the normalised CAM", ylabel="mean IoU", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python iou.py``: IoU of every experiment under visualize/, printed and written to report/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt_dir", type=Path, default=DEFAULT_DATA_ROOT / "test_seg",
                        help="ground-truth masks <stem>.png (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        stems, experiments, matrix = experiment_table(VISUALIZE_DIR, args.gt_dir)
        write_report(stems, experiments, matrix)
    except CamlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(stems, experiments, matrix)[1], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
