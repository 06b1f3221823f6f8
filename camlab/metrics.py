"""Localisation metrics on score maps (numpy only): mask IoU and thresholds, PxAP, the paired bootstrap, and the VOC confusion matrix with mIoU.

Maps are float N×H×W in [0, 1] (min-max normalised CAMs); masks are bool, or 0/255 uint8 read as
foreground where > 127. Every function here is pure: arrays in, numbers out, so they serve
camlab's runs and any other method's score maps alike.

IoU of a predicted mask P and a true mask G is ``|P ∩ G| / |P ∪ G|`` (1.0 when both are empty).
PxAP is Choe et al.'s pixel average precision ("Evaluating Weakly Supervised Object Localization
Methods Right", CVPR 2020), exactly as clovaai/wsolevaluation's ``MaskEvaluator`` computes it.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from camlab.utils import CamlabError

# Candidate thresholds for choose_threshold: 0.05, 0.10, ..., 0.95 (rounded, so 0.15 prints as 0.15).
THRESHOLD_GRID: tuple[float, ...] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())
CAM_CURVE_INTERVAL = 0.001  # CAM thresholds of PxAP and MaxBoxAcc: arange(0, 1, interval); wsolevaluation config.py's default


# ------------------------------------------------------------------------------ IoU itself
def as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    """bool masks as they are; uint8 masks foreground where > 127 (0/255 images)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype == np.uint8:
        return mask > 127
    raise CamlabError(f"{name} mask must be bool or uint8, not {mask.dtype}")


def batch_iou(preds: np.ndarray, gts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """IoU per image of same-sized bool masks ``preds`` and ``gts`` (N×H×W) -> float64 N.

    ``valid`` (bool, same shape): only these pixels count (VOC's and OpenImages' "ignore"
    pixels are the others). An empty union (both masks empty) gives 1.0.
    """
    preds, gts = as_bool(preds, "predicted"), as_bool(gts, "ground-truth")
    if preds.shape != gts.shape or preds.ndim not in (2, 3) or (valid is not None and np.shape(valid) != gts.shape):
        raise CamlabError(f"batch_iou() takes two H×W or N×H×W masks of one shape (and a valid mask of it too), "
                          f"got shapes {preds.shape} and {gts.shape}")
    if valid is not None:
        preds, gts = preds & valid, gts & valid
    inter = np.logical_and(preds, gts).sum(axis=(-2, -1))
    union = np.logical_or(preds, gts).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def as_batch(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    return masks[None] if masks.ndim == 2 else masks


# ------------------------------------------------------------------------- CAMs to masks
def check_unit_range(cams: np.ndarray, what: str = "the maps") -> np.ndarray:
    """Float CAMs in [0, 1] (bool maps read as 0 and 1); NaN, infinities and values outside
    [0, 1] are a one-line CamlabError saying which (``what`` names the maps)."""
    cams = np.asarray(cams)
    cams = cams.astype(np.float32) if cams.dtype == np.bool_ else cams
    if not cams.size:
        return cams
    if not np.isfinite(cams).all():
        bad = "NaN" if np.isnan(cams).any() else "infinite values"
        raise CamlabError(f"{what} hold {bad}: a score map must be finite, in [0, 1]")
    if not (cams.min() >= 0 and cams.max() <= 1):
        raise CamlabError(f"{what} must lie in [0, 1] (min-max normalise them first), "
                          f"found values from {float(cams.min()):.4g} to {float(cams.max()):.4g}")
    return cams


def threshold_masks(cams: np.ndarray, threshold: float) -> np.ndarray:
    """bool masks (same shape) of float CAMs in [0, 1] (H×W or N×H×W): cam >= threshold."""
    return check_unit_range(cams) >= threshold


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
    cams, gts = as_batch(check_unit_range(cams)), as_bool(as_batch(gts), "ground-truth")
    if cams.ndim != 3 or gts.ndim != 3 or 0 in cams.shape[1:] + gts.shape[1:]:
        raise CamlabError(f"iou_curve: CAMs of shape {cams.shape} and masks of shape {gts.shape} "
                          "(need non-empty H×W or N×H×W arrays)")
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if len(cams) != len(gts) or not len(cams) or not len(thresholds):
        raise CamlabError(f"iou_curve: {len(cams)} CAMs, {len(gts)} masks and {len(thresholds)} "
                          "thresholds (need as many CAMs as masks, and at least one of each)")
    cams = _resize_cams(cams, gts.shape[1:])
    valid = None if valid is None else as_batch(np.asarray(valid, bool))
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


def check_interval(what: str, interval: float) -> None:
    """The step of a threshold grid arange(0, 1, interval) must make a grid."""
    if not 0 < interval <= 1:  # also refuses NaN
        raise CamlabError(f"{what}: interval must lie in (0, 1], got {interval}")


def check_count(what: str, *lengths: int) -> None:
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
    check_interval("pxap", interval)
    cams = as_batch(check_unit_range(cams))
    masks = as_bool(as_batch(masks), "ground-truth")
    if cams.shape != masks.shape or (valid is not None and as_batch(np.asarray(valid)).shape != masks.shape):
        raise CamlabError(f"pxap: CAMs of shape {cams.shape}, masks of shape {masks.shape} and the valid "
                          f"mask of shape {None if valid is None else np.shape(valid)} must agree")
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    n, bins = len(cams), len(edges) - 1
    # the bin of each score as np.histogram finds it: [e_k, e_k+1), the last bin closed
    index = np.clip(np.searchsorted(edges, cams.reshape(n, -1), side="right") - 1, 0, bins - 1)
    index += np.arange(n)[:, None] * bins
    flat_masks = masks.reshape(n, -1)
    counted = np.ones_like(flat_masks) if valid is None else as_batch(np.asarray(valid, bool)).reshape(n, -1)
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
    cams, present = check_unit_range(cams), np.asarray(present, bool)
    if cams.ndim != 4 or present.shape != cams.shape[:2]:
        raise CamlabError(f"label_maps: maps N×K×H×W and present N×K, got {cams.shape} and {present.shape}")
    scores = np.where(present[:, :, None, None], cams, -np.inf)
    background = np.full((len(cams), 1, *cams.shape[2:]), threshold, dtype=np.float64)
    return np.concatenate([background, scores], axis=1).argmax(axis=1)


def image_confusions(preds: np.ndarray, gts: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 N×C×C: each image's :func:`confusion_matrix`; their sum is the split's."""
    return np.stack([confusion_matrix(p, g, num_classes) for p, g in zip(preds, gts)])


def miou_statistic(confusions: np.ndarray):
    """For :func:`paired_bootstrap`: the mIoU (VOC: pooled over the resampled images) of per-image
    confusion matrices N×C×C under resample weights R×N."""
    flat = np.asarray(confusions, np.float64).reshape(len(confusions), -1)
    size = confusions.shape[1]
    return lambda weights: np.array([mean_iou(row.reshape(size, size)) for row in weights @ flat])
