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
threshold (:func:`model.minmax`, :func:`threshold_masks`). The handout asks for one threshold
shared by the CAM and SEG modes; :func:`choose_threshold` picks it from *training* masks, never
test ones, and :data:`DEFAULT_THRESHOLD` is the value used until then.

Ground-truth masks are read from ``test_seg/<stem>.png``; the masks that ``visualize.py`` writes
are ``visualize/<experiment>/<stem>_seg.png``. ``python iou.py`` tabulates every experiment's
IoUs into ``report/iou.csv`` and ``report/iou.md``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

import model
import train
from dataloader import read_mask, read_mask_dir
from camlab.utils import (DEFAULT_DATA_ROOT, DEVICES, PRED_SUFFIX, REPORT_DIR, VISUALIZE_DIR, CamlabError,
                   OneLineParser, SEED_MAX, atomic_write_text, check_range, run_cli)

# Candidate thresholds for choose_threshold: 0.05, 0.10, ..., 0.95 (rounded, so 0.15 prints as 0.15).
THRESHOLD_GRID: tuple[float, ...] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())


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
    if not mask.size or not all(shape):
        raise CamlabError(f"cannot compare masks of shapes {mask.shape} and {shape}: an empty mask "
                          "cannot be resized to another size")
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def batch_iou(preds: np.ndarray, gts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """IoU per image of same-sized bool masks ``preds`` and ``gts`` (N×H×W) -> float64 N.

    ``valid`` (bool, same shape): only these pixels count (VOC's and OpenImages' "ignore"
    pixels are the others). An empty union (both masks empty) gives 1.0.
    """
    preds, gts = _as_bool(preds, "predicted"), _as_bool(gts, "ground-truth")
    if preds.shape != gts.shape or preds.ndim not in (2, 3) or (valid is not None and np.shape(valid) != gts.shape):
        raise CamlabError(f"batch_iou() takes two H×W or N×H×W masks of one shape (and a valid mask of it too), "
                          f"got shapes {preds.shape} and {gts.shape}")
    if valid is not None:
        preds, gts = preds & valid, gts & valid
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


# ------------------------------------------------------------------------- CAMs to masks
def _check_unit_range(cams: np.ndarray) -> np.ndarray:
    """Float CAMs in [0, 1] (bool maps read as 0 and 1)."""
    cams = np.asarray(cams)
    cams = cams.astype(np.float32) if cams.dtype == np.bool_ else cams
    if cams.size and not (np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1):
        raise CamlabError("CAMs must be min-max normalised to [0, 1] first (model.minmax)")
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


def iou_curve(cams: np.ndarray, gts: np.ndarray, thresholds: Sequence[float] | np.ndarray,
              valid: np.ndarray | None = None) -> np.ndarray:
    """Mean IoU over the images at each threshold -> float64 array, one value per threshold.

    cams: float N×h×w in [0, 1] (see :func:`model.minmax`); gts: bool (or 0/255 uint8)
    N×H×W; valid: the pixels that count (:func:`batch_iou`), all by default. CAMs of another
    size are resized to the ground truth's with bilinear interpolation before thresholding.
    Vectorised over the images; one pass per threshold.
    """
    cams, gts = _as_batch(_check_unit_range(cams)), _as_bool(_as_batch(gts), "ground-truth")
    if cams.ndim != 3 or gts.ndim != 3 or 0 in cams.shape[1:] + gts.shape[1:]:
        raise CamlabError(f"iou_curve: CAMs of shape {cams.shape} and masks of shape {gts.shape} "
                          "(need non-empty H×W or N×H×W arrays)")
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if len(cams) != len(gts) or not len(cams) or not len(thresholds):
        raise CamlabError(f"iou_curve: {len(cams)} CAMs, {len(gts)} masks and {len(thresholds)} "
                          "thresholds (need as many CAMs as masks, and at least one of each)")
    cams = _resize_cams(cams, gts.shape[1:])
    valid = None if valid is None else _as_batch(np.asarray(valid, bool))
    return np.array([batch_iou(threshold_masks(cams, t), gts, valid).mean() for t in thresholds])


def choose_threshold(cams: np.ndarray, gts: np.ndarray,
                     thresholds: Sequence[float] | np.ndarray = THRESHOLD_GRID) -> tuple[float, float]:
    """(best threshold, its mean IoU) over ``thresholds``; ties go to the lowest threshold.

    Use TRAINING images' CAMs and masks only, never the test ones: a threshold tuned on the
    test masks makes the test IoU an optimistic, invalid estimate. Arguments as in
    :func:`iou_curve`.
    """
    return pick_threshold(thresholds, iou_curve(cams, gts, thresholds))


def pick_threshold(thresholds: Sequence[float] | np.ndarray, curve: np.ndarray) -> tuple[float, float]:
    """(threshold, mean IoU) at the curve's maximum; ties go to the lowest threshold."""
    best = int(np.argmax(curve))
    return float(np.asarray(thresholds, dtype=np.float64).ravel()[best]), float(curve[best])


# ------------------------------------------------------------------------------ mask files
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
                 report_dir: Path | str = REPORT_DIR, extra_md: str = "") -> None:
    """``report_dir/iou.csv`` and ``report_dir/iou.md`` (see :func:`format_table`; ``extra_md``
    is appended to the markdown), atomically."""
    csv_text, md_text = format_table(stems, experiments, matrix)
    atomic_write_text(Path(report_dir) / "iou.csv", csv_text)
    atomic_write_text(Path(report_dir) / "iou.md", md_text + extra_md)


# ------------------------------------------------------------------ boxes and WSOL metrics
# Boxes are (x0, y0, x1, y1) with inclusive pixel coordinates: a box covers
# (x1 - x0 + 1) × (y1 - y0 + 1) pixels, and a single pixel at (x, y) is (x, y, x, y).
Box = tuple[int, int, int, int]
BOX_FRACTION = 0.2  # the CAM paper's box rule keeps what is at least 20% of the map's max
BOX_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)  # the δ of MaxBoxAccV2 (Choe et al.)
LOC_IOU_THRESHOLD = 0.5  # top-1 and GT-known localisation count a box right from this IoU
CAM_CURVE_INTERVAL = 0.01  # CAM thresholds of PxAP and MaxBoxAcc: arange(0, 1, interval)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How the WSOL measures (PxAP, MaxBoxAcc/V2, top-1 and GT-known localisation) read a map.

    ``wsolevaluation``, the default: exactly what clovaai/wsolevaluation computes (inference.py,
    evaluation.py), so that a number can stand beside a published one. The evaluation map is the
    raw class map (no ReLU), resized to the image with ``cv2.INTER_CUBIC`` and min-max normalised
    (a constant map becomes zeros); a contour's box is ``(x, y, x + w, y + h)`` from
    ``cv2.boundingRect``, clipped to ``(W - 1, H - 1)``; a threshold that leaves no contour gives
    the box ``(0, 0, 0, 0)``; box areas count ``+ 1`` (``calculate_multiple_iou``); a ground-truth
    box from a mask takes the same ends as a predicted one (``boundingRect`` of the mask).

    ``camlab``, the earlier variant: the map of the ``class`` form (ReLU, divided by its max)
    upsampled bilinearly and min-max normalised; inclusive boxes ``(x, y, x + w - 1, y + h - 1)``
    of predictions and masks; no contour, no box (IoU 0). Kept under its name for older tables.
    """

    name: str
    form: str               # the CAM form evaluated (model.CAM_FORMS)
    exclusive_ends: bool    # boxes end at x + w, y + h (clipped to the image) rather than x + w - 1
    box_when_empty: bool    # no contour still scores the box (0, 0, 0, 0)
    contour_box: bool       # the 20% box: the largest contour, else the largest 8-connected component

    def box_at(self, cam: np.ndarray, fraction: float) -> np.ndarray:
        """The one box of the CAM paper's rule (what is at least ``fraction`` of the map's max)
        in this protocol: K×4 with K = 0 or 1, in this protocol's ends. ``wsolevaluation``:
        :func:`threshold_boxes` with the largest contour (maps in [0, 1], as it quantises them);
        ``camlab``: :func:`cam_box` (maps of any scale)."""
        if not self.contour_box:
            box = cam_box(cam, fraction)
            return np.zeros((0, 4), np.int64) if box is None else np.array([box], np.int64)
        cam = _check_unit_range(cam)
        if cam.ndim != 2 or cam.size == 0:
            raise CamlabError(f"a map for the 20% box must be one non-empty H×W map, got shape {cam.shape}")
        if not 0 <= fraction <= 1:  # also refuses NaN
            raise CamlabError(f"the 20% box: fraction must lie in [0, 1], got {fraction}")
        return threshold_boxes(cam, fraction, False, self)

    def inclusive(self, box: Sequence[int]) -> Box:
        """A box in this protocol's ends as inclusive pixel coordinates (for drawing)."""
        past = int(self.exclusive_ends)
        return int(box[0]), int(box[1]), int(box[2]) - past, int(box[3]) - past


PROTOCOLS = {p.name: p for p in (Protocol("wsolevaluation", "raw", True, True, True),
                                 Protocol("camlab", "class", False, False, False))}
DEFAULT_PROTOCOL = "wsolevaluation"


def wsol_scoremaps(raw: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """wsolevaluation's evaluation maps from raw CAMs N×h×w: each resized to ``out_size`` (H, W)
    with ``cv2.INTER_CUBIC``, then ``normalize_scoremap``: minus its min, divided by its new max;
    a constant map or one with NaN becomes all zeros. -> float32 N×H×W in [0, 1]."""
    out = np.zeros((len(raw), *out_size), np.float32)
    for i, cam in enumerate(np.asarray(raw, dtype=np.float32)):
        cam = cv2.resize(cam, (out_size[1], out_size[0]), interpolation=cv2.INTER_CUBIC)
        if np.isnan(cam).any() or cam.min() == cam.max():
            continue
        cam = cam - cam.min()
        out[i] = cam / cam.max()
    return out


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise CamlabError(f"--protocol {name!r}: choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def cam_box(cam: np.ndarray, fraction: float = BOX_FRACTION) -> Box | None:
    """Box of one CAM by the rule of Zhou et al., "Learning Deep Features for Discriminative
    Localization" (CVPR 2016): keep the pixels with cam >= fraction · max(cam), then box the
    largest 8-connected component (largest by pixel count; a tie goes to the component met
    first in raster order).

    cam: float H×W, any scale (only its max matters). Returns (x0, y0, x1, y1) inclusive, or
    None when the map has no positive maximum (empty, all zero or all negative).
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2:
        raise CamlabError(f"cam_box: the CAM must be one H×W map, got shape {cam.shape}")
    if not 0 <= fraction <= 1:  # also refuses NaN; above 1 no pixel would be kept
        raise CamlabError(f"cam_box: fraction must lie in [0, 1], got {fraction}")
    if not np.isfinite(cam).all():
        raise CamlabError("cam_box: the CAM holds NaN or infinite values")
    if cam.size == 0 or cam.max() <= 0:
        return None
    keep = (cam >= fraction * cam.max()).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(keep, connectivity=8)
    x, y, w, h = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), :4]  # row 0: background
    return int(x), int(y), int(x + w - 1), int(y + h - 1)


def mask_box(mask: np.ndarray, protocol: str = DEFAULT_PROTOCOL) -> Box | None:
    """Ground-truth box of one H×W mask (bool, or 0/255 uint8): the smallest box holding every
    foreground pixel, (x0, y0, x1, y1) inclusive under ``camlab``; under ``wsolevaluation`` the
    ends are ``boundingRect``'s x + w, y + h (one past the last pixel), as its predicted boxes
    are. None for an empty mask. On the embedded dataset this is an object's box."""
    ys, xs = np.nonzero(_as_bool(mask, "ground-truth"))
    if not len(xs):
        return None
    past = int(_protocol(protocol).exclusive_ends)
    return int(xs.min()), int(ys.min()), int(xs.max()) + past, int(ys.max()) + past


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2:] - boxes[..., :2] + 1).prod(axis=-1)


def _as_boxes(boxes: np.ndarray | Sequence) -> np.ndarray:
    """Boxes as float64 K×4, fractions truncated (as the int cast did). float64, not int64: the
    areas of boxes with coordinates past 2**31 overflow int64 into wrong IoUs. CamlabError
    unless every box is 4 finite coordinates within ±2**31 (beyond any image)."""
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):  # ragged lists, non-numbers
        raise CamlabError("a box must be 4 numbers (x0, y0, x1, y1)") from None
    if array.size and (array.ndim == 0 or array.shape[-1] != 4):
        raise CamlabError(f"a box must be 4 numbers (x0, y0, x1, y1), got an array of shape {array.shape}")
    if not (np.abs(array) <= 2 ** 31).all():  # also False for NaN
        raise CamlabError("box coordinates must be finite and within ±2**31")
    return np.trunc(array).reshape(-1, 4)


def _box_ious(a: np.ndarray | Sequence, b: np.ndarray | Sequence) -> np.ndarray:
    """IoU of every box of ``a`` (K×4) with every box of ``b`` (M×4), inclusive coordinates
    -> float64 K×M (K or M may be 0)."""
    a = _as_boxes(a).reshape(-1, 1, 4)
    b = _as_boxes(b).reshape(1, -1, 4)
    if (a[..., 2:] < a[..., :2]).any() or (b[..., 2:] < b[..., :2]).any():
        raise CamlabError("a box needs x0 <= x1 and y0 <= y1 (inclusive x0, y0, x1, y1)")
    sides = np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]) + 1
    inter = np.clip(sides, 0, None).prod(axis=-1)
    return inter / (_box_area(a) + _box_area(b) - inter)


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """IoU = |A ∩ B| / (|A| + |B| - |A ∩ B|) of two boxes (x0, y0, x1, y1) with inclusive pixel
    coordinates, |A| = (x1 - x0 + 1)(y1 - y0 + 1); 0 for disjoint boxes (as wsolevaluation's
    ``calculate_multiple_iou``)."""
    ious = _box_ious(a, b)
    if ious.shape != (1, 1):
        raise CamlabError(f"box_iou() takes two boxes (x0, y0, x1, y1), got {ious.shape[0]} and {ious.shape[1]}")
    return float(ious[0, 0])


def _best_iou(boxes: np.ndarray | Sequence, gt_boxes: Sequence[Sequence[int]]) -> float:
    """Best IoU of any of ``boxes`` with any ground-truth box; 0.0 when either list is empty."""
    ious = _box_ious(boxes, gt_boxes)
    return float(ious.max()) if ious.size else 0.0


def _check_interval(what: str, interval: float) -> None:
    """The step of a threshold grid arange(0, 1, interval) must make a grid."""
    if not 0 < interval <= 1:  # also refuses NaN
        raise CamlabError(f"{what}: interval must lie in (0, 1], got {interval}")


def _check_count(what: str, *lengths: int) -> None:
    if len(set(lengths)) != 1 or not lengths[0]:
        raise CamlabError(f"{what}: got {', '.join(map(str, lengths))} items "
                          "(need as many of each, and at least one)")


def pxap(cams: np.ndarray, masks: np.ndarray, interval: float = CAM_CURVE_INTERVAL) -> float:
    """Pixel average precision (PxAP) of Choe et al., "Evaluating Weakly Supervised Object
    Localization Methods Right" (CVPR 2020), as ``MaskEvaluator`` of clovaai/wsolevaluation
    (evaluation.py) computes it, returned as a fraction in [0, 1].

    cams: float N×H×W in [0, 1]; masks: bool (or 0/255 uint8) N×H×W. Every pixel of every image
    is pooled (no per-image average). The scores of foreground and of background pixels are
    histogrammed into the bins [0, b), [b, 2b), ..., [1 - b, 1), [1, 2), [2, 3] (b = interval,
    left edges arange(0, 1, b)); summing the bins from the top gives, for each threshold
    τ_0 = 2 > τ_1 = 1 > τ_2 = 1 - b > ... > 0, TP(τ) and FP(τ), the pixels with score >= τ. Then

        PxPrec(τ) = TP / (TP + FP),  PxRec(τ) = TP / |foreground|,
        PxAP = Σ_{k>=1} PxPrec(τ_k) · (PxRec(τ_k) - PxRec(τ_{k-1})),

    where a threshold that keeps no pixel adds nothing (its recall step is 0). Without any
    foreground pixel the metric is undefined: CamlabError.
    """
    fg, bg = pixel_histograms(cams, masks, interval)
    return pxap_from_histograms(fg.sum(axis=0), bg.sum(axis=0))


def pixel_histograms(cams: np.ndarray, masks: np.ndarray, interval: float = CAM_CURVE_INTERVAL,
                     valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the histograms of its foreground and of its background pixels' scores in
    :func:`pxap`'s bins: ``(fg, bg)``, int64 N×B each. Summed over images they are what
    wsolevaluation accumulates; kept per image, a bootstrap can resample images. Pixels outside
    ``valid`` (OpenImages' ignore regions: wsolevaluation drops them) are in neither."""
    _check_interval("pxap", interval)
    cams = _as_batch(_check_unit_range(cams))
    masks = _as_bool(_as_batch(masks), "ground-truth")
    if cams.shape != masks.shape or (valid is not None and _as_batch(np.asarray(valid)).shape != masks.shape):
        raise CamlabError(f"pxap: CAMs of shape {cams.shape}, masks of shape {masks.shape} and the valid "
                          f"mask of shape {None if valid is None else np.shape(valid)} must agree")
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    n, bins = len(cams), len(edges) - 1
    # the bin of each score as np.histogram finds it: [e_k, e_k+1), the last bin closed
    index = np.clip(np.searchsorted(edges, cams.reshape(n, -1), side="right") - 1, 0, bins - 1)
    index += np.arange(n)[:, None] * bins
    flat_masks = masks.reshape(n, -1)
    counted = np.ones_like(flat_masks) if valid is None else _as_batch(np.asarray(valid, bool)).reshape(n, -1)
    fg = np.bincount(index[flat_masks & counted], minlength=n * bins).reshape(n, bins)
    bg = np.bincount(index[~flat_masks & counted], minlength=n * bins).reshape(n, bins)
    return fg, bg


def pxap_from_histograms(fg: np.ndarray, bg: np.ndarray) -> np.ndarray | float:
    """PxAP from score histograms (:func:`pixel_histograms`) summed over the images: ``fg``, ``bg``
    of shape B (one value) or R×B (R values, e.g. bootstrap resamples, each row its own sum)."""
    single = np.ndim(fg) == 1
    fg, bg = np.atleast_2d(fg).astype(np.float64), np.atleast_2d(bg).astype(np.float64)
    if not (fg.sum(axis=1) > 0).all():
        raise CamlabError("pxap: the masks hold no foreground pixel")
    tp, fp = np.cumsum(fg[:, ::-1], axis=1), np.cumsum(bg[:, ::-1], axis=1)  # score >= τ, τ descending
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = tp / tp[:, -1:]
    ap = np.sum(precision[:, 1:] * np.diff(recall, axis=1), axis=1)
    return float(ap[0]) if single else ap


# ------------------------------------------------------------------- paired bootstrap
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95


def paired_bootstrap(stat_a, stat_b, n: int, resamples: int = BOOTSTRAP_RESAMPLES,
                     level: float = BOOTSTRAP_LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """``(difference, low, high)``: ``stat_a - stat_b`` on the n images, and the percentile
    interval at ``level`` of that difference over ``resamples`` resamples of the images (with
    replacement), the SAME resample for both methods (paired: image i of one run is image i of
    the other). Each ``stat_x(weights)`` takes R×n counts (how often each image was drawn) and
    returns R values: a mean IoU is ``weights @ ious / n``, a PxAP sums per-image histograms.
    """
    if n < 1 or resamples < 1 or not 0 < level < 1:
        raise CamlabError(f"paired_bootstrap: needs n >= 1, resamples >= 1 and 0 < level < 1, "
                          f"got {n}, {resamples}, {level}")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    diffs = np.asarray(stat_a(weights), np.float64) - np.asarray(stat_b(weights), np.float64)
    point = float(np.asarray(stat_a(np.ones((1, n))))[0] - np.asarray(stat_b(np.ones((1, n))))[0])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return point, float(low), float(high)


def mean_statistic(values: np.ndarray):
    """For :func:`paired_bootstrap`: the mean of per-image ``values`` under resample weights."""
    values = np.asarray(values, np.float64)
    return lambda weights: weights @ values / weights.sum(axis=1)


def pxap_statistic(fg: np.ndarray, bg: np.ndarray):
    """For :func:`paired_bootstrap`: PxAP of the resampled images' pooled pixels."""
    return lambda weights: np.atleast_1d(pxap_from_histograms(weights @ fg, weights @ bg))


def _contour_boxes(binary: np.ndarray, multi_contour: bool, protocol: Protocol) -> np.ndarray:
    """Boxes (K×4 int64) of the contours (``cv2.RETR_TREE``) of a 0/255 uint8 map: every
    contour's with ``multi_contour``, else only the one of largest ``cv2.contourArea``. A
    contour's ``cv2.boundingRect`` (x, y, w, h) covers pixels x .. x + w - 1: its box is
    (x, y, x + w - 1, y + h - 1) under ``camlab``, (x, y, min(x + w, W - 1), min(y + h, H - 1))
    under ``wsolevaluation``. No contour: 0×4 (``camlab``) or the box (0, 0, 0, 0)."""
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return np.zeros((int(protocol.box_when_empty), 4), dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    ends = rects[:, :2] + rects[:, 2:]
    if protocol.exclusive_ends:
        ends = np.minimum(ends, [binary.shape[1] - 1, binary.shape[0] - 1])
    else:
        ends = ends - 1
    return np.concatenate([rects[:, :2], ends], axis=1)


def threshold_boxes(cam: np.ndarray, tau: float, multi_contour: bool, protocol: Protocol) -> np.ndarray:
    """The boxes of one map in [0, 1] at CAM threshold ``tau``, as wsolevaluation's
    ``scoremap2bbox``: the map is quantised to uint8 (cam · 255) and a pixel is kept when its
    value is above int(tau · the quantised max)."""
    scores = (cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(scores, int(tau * scores.max()), 255, cv2.THRESH_BINARY)
    return _contour_boxes(binary, multi_contour, protocol)


def _threshold_ious(cam: np.ndarray, gt_boxes: Sequence[Sequence[int]], thresholds: np.ndarray,
                    multi_contour: bool, protocol: Protocol) -> np.ndarray:
    """Best IoU of the map's boxes with its ground-truth boxes at each CAM threshold -> float64 T."""
    return np.array([_best_iou(threshold_boxes(cam, tau, multi_contour, protocol), gt_boxes)
                     for tau in thresholds])


def max_box_acc(cams: np.ndarray, gt_boxes: Sequence[Sequence[Sequence[int]]],
                iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS, multi_contour: bool = True,
                interval: float = CAM_CURVE_INTERVAL, protocol: str = DEFAULT_PROTOCOL) -> dict[float | str, float]:
    """MaxBoxAcc per IoU threshold δ and their mean, MaxBoxAccV2 (Choe et al., CVPR 2020), as
    ``BoxEvaluator`` of clovaai/wsolevaluation (evaluation.py) defines them, as fractions:

        BoxAcc(τ, δ) = (1/N) Σ_n 1[ max_{b ∈ boxes(s_n, τ), g ∈ B_n} IoU(b, g) >= δ ],
        MaxBoxAcc(δ) = max_τ BoxAcc(τ, δ),  MaxBoxAccV2 = mean over δ of MaxBoxAcc(δ),

    τ over arange(0, 1, interval), one τ for the whole set but chosen per δ. boxes(s, τ): the
    boxes of the contours of the thresholded map (:func:`threshold_boxes`), every contour's
    with ``multi_contour`` (V2), else the largest one's, with the ends and the empty case of
    ``protocol`` (:class:`Protocol`).

    cams: float N×H×W in [0, 1]; gt_boxes: per image, a list of boxes (x0, y0, x1, y1) in the
    protocol's convention (see :func:`mask_box`); an image without boxes never counts as right.
    Returns {δ: MaxBoxAcc(δ), ..., "mean": ..}.
    """
    _check_interval("max_box_acc", interval)
    cams = _as_batch(_check_unit_range(cams))
    if cams.ndim != 3 or 0 in cams.shape[1:]:
        raise CamlabError(f"max_box_acc: CAMs must be non-empty H×W or N×H×W maps, got shape {cams.shape}")
    _check_count("max_box_acc: CAMs and ground-truth box lists", len(cams), len(gt_boxes))
    thresholds, rule = np.arange(0, 1, interval), _protocol(protocol)
    ious = np.stack([_threshold_ious(c, b, thresholds, multi_contour, rule) for c, b in zip(cams, gt_boxes)])
    acc: dict[float | str, float] = {d: float((ious >= d).mean(axis=0).max()) for d in iou_thresholds}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def localization_accuracy(cams: np.ndarray, pred_classes: Sequence[int] | np.ndarray,
                          labels: Sequence[int] | np.ndarray, gt_boxes: Sequence[Sequence[Sequence[int]]],
                          fraction: float = BOX_FRACTION, iou_threshold: float = LOC_IOU_THRESHOLD,
                          protocol: str = DEFAULT_PROTOCOL) -> dict[str, float]:
    """Top-1 and GT-known localisation accuracy (the ILSVRC measures the CAM paper reports),
    as fractions, with one box per map at ``fraction`` of its maximum (:meth:`Protocol.box_at`):

        gt_known_loc = (1/N) Σ_n 1[IoU_n >= iou_threshold],
        top1_loc = (1/N) Σ_n 1[pred_n = label_n] · 1[IoU_n >= iou_threshold],

    IoU_n the best IoU of the image's box with any of its ground-truth boxes (0 without a box).
    cams: float N×H×W, each image's CAM of its *true* class: GT-known localisation asks for that
    map, and top-1 localisation only looks at the box when the prediction is the true class,
    where the predicted class's map is that same map. pred_classes, labels: ints N; gt_boxes:
    per image, a list of inclusive boxes (x0, y0, x1, y1).
    """
    cams = _as_batch(np.asarray(cams))
    if cams.ndim != 3:
        raise CamlabError(f"localization_accuracy: CAMs must be H×W or N×H×W, got shape {cams.shape}")
    pred, labels = np.asarray(pred_classes).ravel(), np.asarray(labels).ravel()
    _check_count("localization_accuracy: CAMs, predictions, labels and box lists",
                 len(cams), len(pred), len(labels), len(gt_boxes))
    rule = _protocol(protocol)
    hit = np.array([_best_iou(rule.box_at(c, fraction), b) >= iou_threshold for c, b in zip(cams, gt_boxes)])
    return {"top1_loc": float(np.mean(hit & (pred == labels))), "gt_known_loc": float(np.mean(hit))}


# ------------------------------------------------- semantic segmentation (the VOC protocol)
IGNORE_INDEX = 255  # VOC's "void": object borders and unclear pixels, counted nowhere


def confusion_matrix(preds: np.ndarray, gts: np.ndarray, num_classes: int,
                     ignore: int = IGNORE_INDEX) -> np.ndarray:
    """int64 C×C counts over every pixel of every image: row = ground-truth label, column =
    predicted label (C = ``num_classes``, background included as label 0). Pixels whose ground
    truth is ``ignore`` count nowhere (the VOC protocol); any other label outside [0, C) in
    either map is a CamlabError naming it."""
    preds, gts = np.asarray(preds), np.asarray(gts)
    if preds.shape != gts.shape:
        raise CamlabError(f"confusion_matrix: label maps of shapes {preds.shape} and {gts.shape} differ")
    counted = gts != ignore
    p, g = preds[counted].astype(np.int64), gts[counted].astype(np.int64)
    for what, labels in (("predicted", p), ("ground-truth", g)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise CamlabError(f"confusion_matrix: {what} label {int(bad[0])} is outside [0, {num_classes}) "
                              f"(and is not the ignore label {ignore})")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_ious(confusion: np.ndarray) -> np.ndarray:
    """Per class, IoU = TP / (TP + FP + FN) from a confusion matrix (rows ground truth): float64
    C, NaN for a class that is neither in the ground truth nor predicted (0 / 0)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)


def mean_iou(confusion: np.ndarray) -> float:
    """mIoU: the mean of :func:`class_ious` over the classes that occur (background included),
    from one confusion matrix accumulated over the whole split, as the VOC protocol pools it."""
    ious = class_ious(confusion)
    if np.isnan(ious).all():
        raise CamlabError("mean_iou: no pixel was counted (every ground-truth pixel is ignored)")
    return float(np.nanmean(ious))


def label_maps(cams: np.ndarray, present: np.ndarray, threshold: float) -> np.ndarray:
    """Per-class maps -> label maps by a background threshold: each pixel takes the argmax over
    the background, whose score is ``threshold``, and the classes present in the image (their
    maps, N×K×H×W in [0, 1]); label 0 is background, k + 1 is class k. A tie goes to the
    background, then to the lower class. -> int64 N×H×W."""
    cams, present = _check_unit_range(cams), np.asarray(present, bool)
    if cams.ndim != 4 or present.shape != cams.shape[:2]:
        raise CamlabError(f"label_maps: maps N×K×H×W and present N×K, got {cams.shape} and {present.shape}")
    scores = np.where(present[:, :, None, None], cams, -np.inf)
    background = np.full((len(cams), 1, *cams.shape[2:]), threshold, dtype=np.float64)
    return np.concatenate([background, scores], axis=1).argmax(axis=1)


def choose_background_threshold(cams: np.ndarray, present: np.ndarray, gts: np.ndarray,
                                thresholds: Sequence[float] = THRESHOLD_GRID, images: np.ndarray | None = None,
                                crf: str = "affinitynet") -> tuple[float, float]:
    """(threshold, mIoU) of the background threshold with the best mIoU on these maps and label
    masks (:func:`segment`: with ``images``, after dense CRF ``crf``; :func:`mean_iou`); ties go to
    the lowest. Give it TRAINING images: the threshold is then applied, unchanged, to the test images."""
    num_classes = np.asarray(present).shape[1] + 1
    curve = [mean_iou(confusion_matrix(segment(cams, present, t, images, crf), gts, num_classes))
             for t in thresholds]
    return pick_threshold(thresholds, np.asarray(curve))


def segment(cams: np.ndarray, present: np.ndarray, threshold: float, images: np.ndarray | None = None,
            crf: str = "affinitynet") -> np.ndarray:
    """Label maps (int64 N×H×W: 0 background, k + 1 class k) from per-class maps N×K×H×W in
    [0, 1] and the classes present: :func:`label_maps`, or with ``images`` (uint8 N×H×W×3 RGB)
    the argmax of the dense CRF (:func:`crf_refine` with :func:`crf_settings` of ``crf``) whose
    unary is the background score (``threshold``) and the present classes' maps, scaled to sum to
    1 per pixel (AffinityNet feeds the scores unscaled; the per-pixel scale adds the same energy
    to every label, so the CRF's answer is the same)."""
    if images is None:
        return label_maps(cams, present, threshold)
    cams, present = _check_unit_range(cams), np.asarray(present, bool)
    out = np.zeros((len(cams), *cams.shape[2:]), np.int64)
    for i, (image, maps, here) in enumerate(zip(images, cams, present)):
        classes = np.flatnonzero(here)
        scores = np.concatenate([np.full((1, *maps.shape[1:]), threshold), maps[classes]]).clip(1e-5, None)
        refined = crf_refine(image, scores / scores.sum(axis=0, keepdims=True), crf_settings(crf, image.shape[:2]))
        out[i] = np.concatenate([[0], classes + 1])[refined.argmax(axis=0)]
    return out


def image_confusions(preds: np.ndarray, gts: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 N×C×C: each image's :func:`confusion_matrix`; their sum is the split's."""
    return np.stack([confusion_matrix(p, g, num_classes) for p, g in zip(preds, gts)])


def miou_statistic(confusions: np.ndarray):
    """For :func:`paired_bootstrap`: the mIoU (VOC: pooled over the resampled images) of per-image
    confusion matrices N×C×C under resample weights R×N."""
    flat = np.asarray(confusions, np.float64).reshape(len(confusions), -1)
    size = confusions.shape[1]
    return lambda weights: np.array([mean_iou(row.reshape(size, size)) for row in weights @ flat])


# Dense-CRF refinement (Krähenbühl and Koltun, NIPS 2011) with the pairwise settings of
# AffinityNet's crf_inference (Ahn and Kwak, CVPR 2018; jiwoon-ahn/psa, tool/imutils.py), the
# refinement OC-CSE's pipeline uses: an appearance-free Gaussian kernel (sxy 3, compat 3), a
# bilateral kernel (sxy 80, srgb 13, compat 10), 10 mean-field iterations.
CRF_SETTINGS = {"gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 80, "bilateral_srgb": 13,
                "bilateral_compat": 10, "iterations": 10}
# The background thresholds tried under --crf: every other one of THRESHOLD_GRID (a CRF per image
# and threshold is the cost of choosing one; about 25 ms per 64×64 image on this CPU)
CRF_THRESHOLD_GRID: tuple[float, ...] = THRESHOLD_GRID[::2]
# AffinityNet's kernel widths are in pixels of PASCAL VOC images (at most 500 px a side). The
# "scaled" variant multiplies both spatial widths by the image's longer side over 500, so that a
# kernel covers the same share of the image; colour widths and compatibilities stay.
CRF_REFERENCE_SIDE = 500
CRF_VARIANTS = ("affinitynet", "scaled")


def crf_settings(variant: str, shape: tuple[int, int]) -> dict:
    """The pairwise settings of CRF ``variant`` for an image of ``shape`` (H, W): AffinityNet's
    as they are (``affinitynet``), or with the spatial widths scaled to the image (``scaled``)."""
    if variant == "affinitynet":
        return dict(CRF_SETTINGS)
    if variant == "scaled":
        factor = max(shape) / CRF_REFERENCE_SIDE
        return {**CRF_SETTINGS, "gaussian_sxy": CRF_SETTINGS["gaussian_sxy"] * factor,
                "bilateral_sxy": CRF_SETTINGS["bilateral_sxy"] * factor}
    raise CamlabError(f"unknown CRF variant {variant!r}; choose one of {', '.join(CRF_VARIANTS)}")


def crf_refine(image: np.ndarray, probs: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """Dense-CRF marginals of one image: ``image`` uint8 H×W×3 (RGB), ``probs`` C×H×W per-pixel
    class probabilities (the unary is their negative log, pydensecrf's ``unary_from_softmax``)
    -> float32 C×H×W, each pixel summing to 1. ``settings`` defaults to CRF_SETTINGS. Uses the
    ``pydensecrf2`` package (imported as ``pydensecrf``)."""
    from pydensecrf import densecrf, utils as crf_utils  # only --crf needs it
    settings = {**CRF_SETTINGS, **(settings or {})}
    image, probs = np.asarray(image), np.asarray(probs, np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or probs.ndim != 3 \
            or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 2:
        raise CamlabError(f"crf_refine: a uint8 H×W×3 image and C×H×W probabilities (C >= 2) of its size, "
                          f"got {image.dtype} {image.shape} and {probs.shape}")
    classes, height, width = probs.shape
    crf = densecrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(crf_utils.unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=settings["gaussian_sxy"], compat=settings["gaussian_compat"])
    crf.addPairwiseBilateral(sxy=settings["bilateral_sxy"], srgb=settings["bilateral_srgb"],
                             rgbim=np.ascontiguousarray(image), compat=settings["bilateral_compat"])
    return np.asarray(crf.inference(settings["iterations"]), np.float32).reshape(classes, height, width)


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="iou.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gt_dir", type=Path, default=None,
                        help="ground-truth masks <stem>.png (default: test_seg/ of the data root the "
                             "experiments were visualised from, else data/synthetic/test_seg)")
    parser.add_argument("--cam", default="class", choices=list(model.CAM_FORMS),
                        help="CAM form for experiments visualize.py has not recorded one for")
    parser.add_argument("--n_threshold", type=int, default=500,
                        help="images whose masks choose each experiment's threshold, drawn from the split that "
                             "chooses (training masks on the embedded set, val on --dataset wsol; never test)")
    parser.add_argument("--no_full", action="store_true", help="only the ten-image table")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS),
                        help="how --wsol and --methods compute PxAP, MaxBoxAcc and localisation: "
                             "wsolevaluation (its evaluation map and box rule exactly) or camlab (ReLU'd map, "
                             "inclusive boxes, the earlier tables)")
    parser.add_argument("--wsol", action="store_true",
                        help="evaluate every experiment in checkpoints/ on its test split's boxes or masks "
                             "(IoU, PxAP, MaxBoxAccV2, top-1 and GT-known localisation) into report/methods.csv "
                             "and report/methods.md")
    parser.add_argument("--extractor", default=model.DEFAULT_EXTRACTOR, choices=list(model.EXTRACTORS),
                        help="with --wsol: the map every measure reads: camlab's CAM, or one of torchcam's "
                             "gradient- and score-based extractors")
    ab = parser.add_argument_group("comparisons (train, or reuse finished runs with the same settings, then compare)")
    ab.add_argument("--ablation", action="store_true",
                    help="CAM and SEG with scale, rotate, hflip and rotate+hflip -> report/ablation.md")
    ab.add_argument("--methods", action="store_true",
                    help="CAM, SEG rotate+hflip, ACoL pp and pn, CSE -> report/methods.md")
    ab.add_argument("--extractors", nargs="*", default=None, metavar="NAME", choices=list(model.EXTRACTORS),
                    help="every extractor (or those named) on the methods comparison's CAM run at each seed "
                         "-> report/extractors.{csv,md} and extractors_grid.png")
    ab.add_argument("--semseg", action="store_true",
                    help="semantic segmentation on the multi-object set: CAM, SEG rotate+hflip and CSE "
                         "(single-label), CAM, SEG rotate+hflip and OC-CSE (multi-label); mIoU at a background threshold chosen on training "
                         "masks, paired bootstrap intervals -> report/semseg.{csv,md,png}")
    ab.add_argument("--crf", nargs="*", default=None, choices=CRF_VARIANTS, metavar="VARIANT",
                    help="with --semseg: score every run after dense-CRF refinement too: affinitynet (AffinityNet's "
                         "settings in pixels, made for ~500 px images) and/or scaled (their spatial widths scaled to "
                         "the image); no value: both")
    ab.add_argument("--runs", nargs="+", default=None, metavar="EXP_ID",
                    help="with --semseg: score these finished runs (trained on --dataset multi or voc) instead of "
                         "training the comparison")
    ab.add_argument("--dataset", default="multi", choices=("multi", "voc"),
                    help="--semseg's dataset (voc: pass --data_root VOCdevkit/VOC2012)")
    ab.add_argument("--sweep", nargs="+", metavar=("KNOB", "VALUE"), default=None,
                    help="every method of --methods at each VALUE of the embedded benchmark's KNOB "
                         "(body_evidence) -> report/sweep.{csv,md,png}; e.g. --sweep body_evidence 0 0.25 0.5 0.75 1")
    ab.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="--methods, --sweep and --extractors: train and compare at each seed (mean ± std, and paired "
                         "bootstrap intervals against CAM per seed); default: --seed")
    ab.add_argument("--body_evidence", type=float, default=None,
                    help="the embedded benchmark's body-evidence setting for --ablation and --methods "
                         "(default: the generator's default)")
    ab.add_argument("--prefix", default=None,
                    help="the runs are checkpoints/<prefix>_<name>/ (default: ablation or methods)")
    for flag in ("epochs", "img_size", "seed", "batch_size"):
        ab.add_argument(f"--{flag}", type=int, default=getattr(train.RunConfig, flag))
    ab.add_argument("--weights", default=train.RunConfig.weights)
    ab.add_argument("--data_root", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python iou.py``: IoU of every experiment under visualize/, printed and written to report/."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum((args.ablation, args.methods, args.wsol, args.sweep is not None, args.extractors is not None,
            args.semseg)) > 1:
        parser.error("choose one of --ablation, --methods, --sweep, --extractors, --semseg and --wsol")
    if (args.crf is not None or args.runs is not None) and not args.semseg:
        parser.error(f"{'--crf' if args.crf is not None else '--runs'} applies to --semseg")
    if args.sweep is not None:
        args.sweep_values = _sweep_values(parser, args.sweep)
    if args.extractor != model.DEFAULT_EXTRACTOR and not args.wsol:
        parser.error("--extractor applies to --wsol (visualize.py takes it too); --extractors compares them all")

    def body() -> None:
        check_range("--n_threshold", args.n_threshold, 1, 1_000_000, why="training images that choose a threshold")
        for seed in args.seeds or []:
            check_range("--seeds", seed, 0, SEED_MAX, why="a random seed")
        if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
            raise CamlabError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is named twice")
        if args.ablation or args.methods or args.wsol or args.sweep is not None or args.extractors is not None \
                or args.semseg:
            import compare  # the comparison runner imports this module, so it is imported when used
            command = (compare.ablation_command if args.ablation else compare.methods_command if args.methods
                       else compare.semseg_command if args.semseg
                       else compare.sweep_command if args.sweep is not None
                       else compare.extractors_command if args.extractors is not None else compare.wsol_command)
            command(args)
        else:
            _report(args)
    return run_cli("iou.py", body)


SWEEP_KNOBS = ("body_evidence",)  # what --sweep can vary: settings of the embedded benchmark


def _sweep_values(parser: argparse.ArgumentParser, words: list[str]) -> list[float]:
    """``--sweep KNOB V1 V2 ...`` -> the values, each in [0, 1] and named once."""
    knob, *values = words
    if knob not in SWEEP_KNOBS:
        parser.error(f"argument --sweep: the first word names what to vary, one of {', '.join(SWEEP_KNOBS)}; "
                     f"got {knob!r}")
    if not values:
        parser.error(f"argument --sweep: give the values of {knob} after it, e.g. --sweep {knob} 0 0.5 1")
    found = []
    for word in values:
        try:
            value = float(word)
        except ValueError:
            parser.error(f"argument --sweep: {word!r} is not a number")
        if not 0.0 <= value <= 1.0 or value in found:
            parser.error(f"argument --sweep: {word} must lie in [0, 1] and be named once")
        found.append(value)
    return found


def _default_gt_dir() -> Path:
    """``test_seg/`` of the one data root every visualised experiment records."""
    roots = set()
    for settings in sorted(VISUALIZE_DIR.glob("*/settings.json")):
        try:
            roots.add(json.loads(settings.read_text())["data_root"])
        except (OSError, ValueError, KeyError):
            continue
    if len(roots) > 1:
        raise CamlabError(f"experiments under {VISUALIZE_DIR}/ come from different data roots "
                          f"({', '.join(sorted(roots))}); pass --gt_dir")
    return Path(roots.pop()) / "test_seg" if roots else DEFAULT_DATA_ROOT / "test_seg"


def _report(args: argparse.Namespace) -> None:
    import compare  # the comparison runner imports this module, so it is imported when used
    stems, experiments, matrix = experiment_table(VISUALIZE_DIR, args.gt_dir or _default_gt_dir())
    reports = [] if args.no_full else compare.whole_test_reports(experiments, args.cam, args.n_threshold,
                                                                 args.device)
    extra = ""
    if reports:
        extra = ("\n## Whole test set\n\nThreshold chosen per experiment on training masks.\n\n"
                 + compare.write_full_report(reports))
    write_report(stems, experiments, matrix, extra_md=extra)
    print(format_table(stems, experiments, matrix)[1] + extra, end="")


if __name__ == "__main__":
    sys.exit(main())
