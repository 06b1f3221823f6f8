"""Boxes from score maps and the WSOL box metrics: the CAM paper's 20% box, MaxBoxAcc/MaxBoxAccV2 and top-1/GT-known localisation, in wsolevaluation's protocol or camlab's earlier one.

Boxes are (x0, y0, x1, y1) with inclusive pixel coordinates: a box covers
(x1 - x0 + 1) × (y1 - y0 + 1) pixels, and a single pixel at (x, y) is (x, y, x, y). Under the
``wsolevaluation`` protocol a predicted box ends at ``boundingRect``'s x + w, y + h, clipped to
the image, as clovaai/wsolevaluation's ``evaluation.py`` computes it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from camlab import boxeval
from camlab.metrics import CAM_CURVE_INTERVAL, as_batch, as_bool, check_count, check_interval, check_unit_range
from camlab.utils import CamlabError


# ------------------------------------------------------------------ boxes and WSOL metrics
# Boxes are (x0, y0, x1, y1) with inclusive pixel coordinates: a box covers
# (x1 - x0 + 1) × (y1 - y0 + 1) pixels, and a single pixel at (x, y) is (x, y, x, y).
Box = tuple[int, int, int, int]


BOX_FRACTION = 0.2  # the CAM paper's box rule keeps what is at least 20% of the map's max


BOX_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)  # the δ of MaxBoxAccV2 (Choe et al.)


LOC_IOU_THRESHOLD = 0.5  # top-1 and GT-known localisation count a box right from this IoU


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
        cam = check_unit_range(cam)
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


def get_protocol(name: str) -> Protocol:
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
    ys, xs = np.nonzero(as_bool(mask, "ground-truth"))
    if not len(xs):
        return None
    past = int(get_protocol(protocol).exclusive_ends)
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


def best_iou(boxes: np.ndarray | Sequence, gt_boxes: Sequence[Sequence[int]]) -> float:
    """Best IoU of any of ``boxes`` with any ground-truth box; 0.0 when either list is empty."""
    ious = _box_ious(boxes, gt_boxes)
    return float(ious.max()) if ious.size else 0.0


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
    return np.array([best_iou(threshold_boxes(cam, tau, multi_contour, protocol), gt_boxes)
                     for tau in thresholds])


EVALUATORS = ("fast", "reference")  # max_box_acc's paths: camlab.boxeval's, or cv2 per map and threshold


def max_box_acc(cams: np.ndarray, gt_boxes: Sequence[Sequence[Sequence[int]]],
                iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS, multi_contour: bool = True,
                interval: float = CAM_CURVE_INTERVAL, protocol: str = DEFAULT_PROTOCOL,
                evaluator: str = "fast") -> dict[float | str, float]:
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
    ``evaluator``: ``fast`` (``camlab.boxeval``: one pass per map, whatever the number of
    thresholds; the wsolevaluation protocol) or ``reference`` (cv2 per map and threshold, as
    wsolevaluation runs it; the only path for the ``camlab`` protocol). Both give the same
    numbers, exactly. Returns {δ: MaxBoxAcc(δ), ..., "mean": ..}.
    """
    check_interval("max_box_acc", interval)
    cams = as_batch(check_unit_range(cams))
    if cams.ndim != 3 or 0 in cams.shape[1:]:
        raise CamlabError(f"max_box_acc: CAMs must be non-empty H×W or N×H×W maps, got shape {cams.shape}")
    check_count("max_box_acc: CAMs and ground-truth box lists", len(cams), len(gt_boxes))
    meter = BoxAccuracy(iou_thresholds, multi_contour, interval, protocol, evaluator)
    for cam, boxes in zip(cams, gt_boxes):
        meter.update(cam, boxes)
    return meter.compute()


class BoxAccuracy:
    """:func:`max_box_acc` as an accumulator: ``update(cam, gt_boxes)`` one map at a time (a map
    is read, scored and dropped, so a split of any size needs the memory of one map), then
    ``compute()``. It keeps, per CAM threshold and IoU threshold δ, how many maps had a box right."""

    def __init__(self, iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS, multi_contour: bool = True,
                 interval: float = CAM_CURVE_INTERVAL, protocol: str = DEFAULT_PROTOCOL,
                 evaluator: str = "fast") -> None:
        check_interval("max_box_acc", interval)
        if evaluator not in EVALUATORS:
            raise CamlabError(f"max_box_acc: evaluator must be one of {', '.join(EVALUATORS)}, got {evaluator!r}")
        self.rule, self.thresholds = get_protocol(protocol), np.arange(0, 1, interval)
        self.fast = evaluator == "fast" and self.rule.name == "wsolevaluation"
        self.iou_thresholds, self.multi_contour = tuple(iou_thresholds), multi_contour
        self.hits = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)
        self.count = 0

    def best_ious(self, cam: np.ndarray, gt_boxes: Sequence[Sequence[int]]) -> np.ndarray:
        """Best IoU of the map's boxes with its ground-truth boxes at each CAM threshold -> float64 T."""
        if self.fast:
            return boxeval.threshold_best_ious(cam, gt_boxes, self.thresholds, self.multi_contour)
        return _threshold_ious(cam, gt_boxes, self.thresholds, self.multi_contour, self.rule)

    def update(self, cam: np.ndarray, gt_boxes: Sequence[Sequence[int]]) -> None:
        ious = self.best_ious(cam, gt_boxes)
        self.hits += ious[None, :] >= np.asarray(self.iou_thresholds)[:, None]
        self.count += 1

    def compute(self) -> dict[float | str, float]:
        if not self.count:
            raise CamlabError("max_box_acc: no map was scored")
        acc: dict[float | str, float] = {d: float((self.hits[i] / self.count).max())
                                         for i, d in enumerate(self.iou_thresholds)}
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
    cams = as_batch(np.asarray(cams))
    if cams.ndim != 3:
        raise CamlabError(f"localization_accuracy: CAMs must be H×W or N×H×W, got shape {cams.shape}")
    pred, labels = np.asarray(pred_classes).ravel(), np.asarray(labels).ravel()
    check_count("localization_accuracy: CAMs, predictions, labels and box lists",
                 len(cams), len(pred), len(labels), len(gt_boxes))
    rule = get_protocol(protocol)
    hit = np.array([best_iou(rule.box_at(c, fraction), b) >= iou_threshold for c, b in zip(cams, gt_boxes)])
    return {"top1_loc": float(np.mean(hit & (pred == labels))), "gt_known_loc": float(np.mean(hit))}
