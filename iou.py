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
import functools
import io
import json
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

import dataloader
import model
import train
import visualize
from dataloader import read_mask, read_mask_dir
from utils import (CHECKPOINT_DIR, DEFAULT_DATA_ROOT, DEFAULT_THRESHOLD, DEVICES, PRED_SUFFIX, REPORT_DIR,
                   VISUALIZE_DIR, CamlabError, OneLineParser, atomic_write_text, check_range,
                   resolve_device, run_cli, safe_subdir)

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


def batch_iou(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU per image of same-sized bool masks ``preds`` and ``gts`` (N×H×W) -> float64 N.

    An empty union (both masks empty) gives 1.0.
    """
    preds, gts = _as_bool(preds, "predicted"), _as_bool(gts, "ground-truth")
    if preds.shape != gts.shape or preds.ndim not in (2, 3):
        raise CamlabError(f"batch_iou() takes two H×W or N×H×W masks of one shape, got shapes "
                          f"{preds.shape} and {gts.shape}")
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


def iou_curve(cams: np.ndarray, gts: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Mean IoU over the images at each threshold -> float64 array, one value per threshold.

    cams: float N×h×w in [0, 1] (see :func:`model.minmax`); gts: bool (or 0/255 uint8)
    N×H×W. CAMs of another size are resized to the ground truth's with bilinear interpolation
    before thresholding. Vectorised over the images; one pass per threshold.
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
    return np.array([batch_iou(threshold_masks(cams, t), gts).mean() for t in thresholds])


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


# ------------------------------------------------------------------- the whole test set
def dataset_cams(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, form: str,
                 batch_size: int = 64, of_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions int64 N, CAMs float32 N×H×W in [0, 1])`` for every image of ``data``, the
    maps at the stored image size, each of the image's top predicted class (``of_labels``: of
    its labelled class, as GT-known localisation asks); batched under ``torch.inference_mode``."""
    out_size = tuple(data.images.shape[-2:])
    return _batched(net, data, img_size, batch_size, of_labels,
                    lambda inputs, classes: model.localization_maps(net, inputs, out_size, form, classes))


def protocol_cams(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, protocol: str,
                  of_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, evaluation maps N×H×W in [0, 1])`` as ``protocol`` defines them
    (:class:`Protocol`): wsolevaluation's from the raw maps (:func:`wsol_scoremaps`)."""
    rule = _protocol(protocol)
    if rule.form != "raw":
        return dataset_cams(net, data, img_size, rule.form, of_labels=of_labels)
    preds, raw = _batched(net, data, img_size, 64, of_labels,
                          lambda inputs, classes: model.feature_maps(net, inputs, "raw", classes))
    return preds, wsol_scoremaps(raw, tuple(data.images.shape[-2:]))


def _batched(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, batch_size: int,
             of_labels: bool, maps_of) -> tuple[np.ndarray, np.ndarray]:
    """``maps_of(inputs, classes) -> (scores, maps)`` over ``data`` in batches (classes: the
    labels with ``of_labels``, else None for the top prediction), one host copy at the end (the
    GPU is never waited for batch by batch)."""
    preds, maps = [], []
    with torch.inference_mode():
        for idx in torch.arange(len(data), device=data.images.device).split(batch_size):
            inputs = dataloader.to_model_input(data.images[idx], img_size)
            scores, cams = maps_of(inputs, data.labels[idx] if of_labels else None)
            preds.append(scores.argmax(dim=1))
            maps.append(cams.float())
    return torch.cat(preds).cpu().numpy(), torch.cat(maps).cpu().numpy()


def split_masks(root: Path, split: str, names: Sequence[str]) -> np.ndarray | None:
    """bool N×H×W masks from ``root/<split>_masks/<stem>.png`` (the embedded dataset writes
    them), or None when the dataset has no such folder."""
    folder = root / f"{split}_masks"
    if not folder.is_dir():
        return None
    return np.stack([read_mask(folder / f"{Path(name).stem}.png") for name in names])


def _subset(data: "dataloader.ImageSet", n: int, seed: int = 0) -> "dataloader.ImageSet":
    if n >= len(data):
        return data
    return data.take(torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False))))


@dataclasses.dataclass
class Experiment:
    """A finished run, ready to evaluate: its best model (eval mode), settings and data root."""

    exp_id: str
    net: "model.CAMModel"
    cfg: "train.RunConfig"
    root: Path
    device: torch.device

    @classmethod
    def load(cls, exp_id: str, device: str = "auto") -> "Experiment":
        dev = resolve_device(device)
        net, ckpt = model.load_checkpoint(safe_subdir(CHECKPOINT_DIR, exp_id) / "best.pth", dev)
        cfg = train.RunConfig.from_args(ckpt["args"])
        return cls(exp_id, net.eval(), cfg, dataloader.resolve_root(cfg.dataset, cfg.data_root), dev)

    def has_masks(self) -> bool:
        """Only the embedded dataset writes ``train_masks/`` and ``test_masks/``."""
        return (self.root / "train_masks").is_dir() and (self.root / "test_masks").is_dir()

    def split(self, split: str, n: int | None = None) -> "dataloader.ImageSet":
        data = dataloader.load_split(self.cfg.dataset, self.root, split, img_size=self.cfg.img_size,
                                     progress=False, skip_bad=self.cfg.skip_bad)
        return (data if n is None else _subset(data, n)).to(self.device)

    @functools.cached_property
    def test(self) -> tuple["dataloader.ImageSet", np.ndarray]:
        """The test split and its masks, read once however many measures use them."""
        data = self.split("test")
        return data, split_masks(self.root, "test", data.names)

    def cams(self, data: "dataloader.ImageSet", form: str = "class",
             of_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return dataset_cams(self.net, data, self.cfg.img_size, form, of_labels=of_labels)


def localization_report(exp_id: str, form: str = "class", n_threshold: int = 500,
                        device: str = "auto") -> dict | None:
    """Mean IoU of ``exp_id``'s best checkpoint over the whole test set, at the threshold that
    is best on ``n_threshold`` training images' masks (never on test masks). None when the
    dataset has no ``train_masks/`` and ``test_masks/`` (only the embedded one has them)."""
    exp = Experiment.load(exp_id, device)
    return _localization(exp, form, n_threshold) if exp.has_masks() else None


def _localization(exp: Experiment, form: str, n_threshold: int) -> dict:
    if n_threshold < 1:
        raise CamlabError(f"--n_threshold must be at least 1, got {n_threshold}")
    fit_set = exp.split("train", n_threshold)
    curve = iou_curve(exp.cams(fit_set, form)[1], split_masks(exp.root, "train", fit_set.names), THRESHOLD_GRID)
    threshold, train_iou = pick_threshold(THRESHOLD_GRID, curve)
    test_set, test_masks = exp.test
    test_curve = iou_curve(exp.cams(test_set, form)[1], test_masks, THRESHOLD_GRID)
    return {"exp_id": exp.exp_id, "cam": form, "threshold": threshold, "train_iou": train_iou,
            "test_iou": float(test_curve[THRESHOLD_GRID.index(threshold)]),
            "n_threshold_images": len(fit_set), "n_test": len(test_set),
            "curve": (np.asarray(THRESHOLD_GRID), curve), "test_curve": (np.asarray(THRESHOLD_GRID), test_curve)}


def full_test_table(reports: list[dict]) -> str:
    """Markdown: per experiment, the CAM form, the threshold chosen on training masks, the mean
    IoU there and on the whole test set at that threshold."""
    lines = ["| experiment | CAM | threshold (chosen on train masks) | train mean IoU | test mean IoU | test images |",
             "|---|---|---:|---:|---:|---:|"]
    for r in reports:
        lines.append(f"| {_md_cell(r['exp_id'])} | {r['cam']} | {r['threshold']:.2f} | {r['train_iou']:.4f} "
                     f"| {r['test_iou']:.4f} | {r['n_test']} |")
    return "\n".join(lines) + "\n"


def _experiment_form(exp_id: str, default: str) -> str:
    """The CAM form visualize.py used for ``exp_id`` (its settings.json), else ``default``."""
    path = safe_subdir(VISUALIZE_DIR, exp_id) / "settings.json"
    try:
        return json.loads(path.read_text())["cam"]
    except (OSError, ValueError, KeyError):
        return default


def whole_test_reports(experiments: Sequence[str], form: str, n_threshold: int,
                       device: str) -> list[dict]:
    """localization_report for each experiment that has a checkpoint and masked data."""
    reports = []
    for exp_id in experiments:
        if (safe_subdir(CHECKPOINT_DIR, exp_id) / "best.pth").is_file():
            report = localization_report(exp_id, _experiment_form(exp_id, form), n_threshold, device)
            if report is not None:
                reports.append(report)
    return reports


def write_full_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``iou_full.csv``, the curves in ``iou_threshold.png``; returns the markdown table."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "cam", "threshold", "train_iou", "test_iou", "n_test"])
    for r in reports:
        writer.writerow([r["exp_id"], r["cam"], f"{r['threshold']:.2f}", f"{r['train_iou']:.4f}",
                         f"{r['test_iou']:.4f}", r["n_test"]])
    atomic_write_text(Path(report_dir) / "iou_full.csv", buf.getvalue())
    visualize.plot_iou_curves({r["exp_id"]: r["curve"] for r in reports}, Path(report_dir) / "iou_threshold.png",
                              chosen={r["exp_id"]: r["threshold"] for r in reports},
                              title="mean IoU on training masks (where the threshold is chosen)")
    return full_test_table(reports)


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
    _check_interval("pxap", interval)
    cams = _as_batch(_check_unit_range(cams))
    masks = _as_bool(_as_batch(masks), "ground-truth")
    if cams.shape != masks.shape:
        raise CamlabError(f"pxap: CAMs of shape {cams.shape} and masks of shape {masks.shape} differ")
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0, 3.0])
    fg_hist, _ = np.histogram(cams[masks], bins=edges)
    bg_hist, _ = np.histogram(cams[~masks], bins=edges)
    if not fg_hist.sum():
        raise CamlabError("pxap: the masks hold no foreground pixel")
    tp, fp = np.cumsum(fg_hist[::-1]), np.cumsum(bg_hist[::-1])  # score >= τ, τ descending
    precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=tp + fp > 0)
    recall = tp / tp[-1]
    return float(np.sum(precision[1:] * np.diff(recall)))


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


# ------------------------------------------------------------------ methods compared (WSOL)
# methods.csv / methods.md columns: (key in a wsol_report, header)
METHOD_COLUMNS = (("test_acc", "test acc"), ("test_iou", "mean IoU"), ("pxap", "PxAP"),
                  ("max_box_acc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 loc"), ("gt_known_loc", "GT-known loc"))


def wsol_report(exp_id: str, n_threshold: int = 500, device: str = "auto",
                protocol: str = DEFAULT_PROTOCOL) -> dict | None:
    """Every measure of the methods table for ``exp_id`` on its test split, as fractions; None
    when the dataset has no masks (only the embedded one has them).

    test_acc: the best checkpoint's accuracy. test_iou: mean IoU of the predicted class's CAM at
    the threshold chosen on training masks (as :func:`localization_report`). PxAP, MaxBoxAccV2,
    top-1 and GT-known localisation read the labelled class's map as ``protocol`` defines it
    (:class:`Protocol`; wsolevaluation's by default); ground-truth boxes are the boxes of the
    object masks, in the protocol's convention. The mean IoU keeps the handout's definition.
    """
    exp = Experiment.load(exp_id, device)
    if not exp.has_masks():
        return None
    report = _localization(exp, "class", n_threshold)
    test_set, masks = exp.test
    preds, cams = protocol_cams(exp.net, test_set, exp.cfg.img_size, protocol)
    boxes = [[box] if (box := mask_box(m, protocol)) is not None else [] for m in masks]
    labels = test_set.labels.cpu().numpy()
    report.update(test_acc=float(np.mean(preds == labels)), pxap=pxap(cams, masks),
                  max_box_acc_v2=max_box_acc(cams, boxes, protocol=protocol)["mean"],
                  **localization_accuracy(cams, preds, labels, boxes, protocol=protocol),
                  method=_method_name(exp.cfg), mean_mask_area=float(masks.mean()), protocol=protocol)
    report["examples"] = _examples(test_set, cams, boxes, protocol)
    return report


def _method_name(cfg: "train.RunConfig") -> str:
    """How a run's method reads in a table: CAM, SEG rotate+hflip, ACoL pn δ=0.9, CSE."""
    if cfg.mode == "SEG":
        return f"SEG {cfg.transform}"
    if cfg.mode == "ACOL":
        return f"ACoL {cfg.recipe} δ={','.join(f'{d:g}' for d in cfg.delta)}"
    if cfg.mode == "CSE":
        return f"CSE (area weight {cfg.area_weight:g})"
    return cfg.mode


def _examples(data: "dataloader.ImageSet", cams: np.ndarray, boxes: list, protocol: str,
              n: int = 8) -> list[dict]:
    """The first ``n`` test images with their maps, the protocol's 20% box and the ground-truth
    box (both inclusive, for drawing), for the report figure."""
    rule = _protocol(protocol)

    def drawn(found: np.ndarray | list) -> Box | None:
        return rule.inclusive(found[0]) if len(found) else None
    return [{"image": data.images[i].permute(1, 2, 0).cpu().numpy(), "cam": cams[i],
             "box": drawn(rule.box_at(cams[i], BOX_FRACTION)), "gt_box": drawn(boxes[i]), "name": data.names[i]}
            for i in range(min(n, len(data)))]


def finished_experiments(checkpoint_dir: Path = CHECKPOINT_DIR) -> list[str]:
    """The exp_ids under ``checkpoints/`` with a best checkpoint (k-fold runs keep theirs per fold
    and are left out), sorted."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(d.name for d in checkpoint_dir.iterdir() if (d / "best.pth").is_file())


def methods_table(reports: list[dict]) -> tuple[str, str]:
    """(csv, markdown): one row per experiment, its exp_id first, the measures of METHOD_COLUMNS."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "method"] + [key for key, _ in METHOD_COLUMNS])
    lines = ["| experiment | method | " + " | ".join(h for _, h in METHOD_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(METHOD_COLUMNS)]
    for r in reports:
        values = [f"{r[key]:.4f}" for key, _ in METHOD_COLUMNS]
        writer.writerow([r["exp_id"], r["method"]] + values)
        lines.append(f"| {_md_cell(r['exp_id'])} | {_md_cell(r['method'])} | " + " | ".join(values) + " |")
    return buf.getvalue(), "\n".join(lines) + "\n"


def write_methods_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``methods.csv``, ``methods.md`` and the figure ``methods_grid.png``; returns the markdown."""
    if not reports:
        raise CamlabError(f"no experiment under {CHECKPOINT_DIR}/ has a best.pth on a dataset with "
                          f"masks; train one first (python main.py --mode CAM)")
    csv_text, md = methods_table(reports)
    protocols = sorted({r["protocol"] for r in reports})
    note = (f"Protocol: {', '.join(protocols)} (iou.py --protocol). Mean IoU at each run's threshold chosen on "
            f"training masks (the handout's); PxAP, MaxBoxAccV2 (IoU 0.3/0.5/0.7, every contour) and top-1 / "
            f"GT-known localisation (the 20% box) read the labelled class's map; "
            f"{reports[0]['n_test']} test images.\n\n")
    atomic_write_text(Path(report_dir) / "methods.csv", csv_text)
    atomic_write_text(Path(report_dir) / "methods.md", note + md)
    visualize.plot_methods({r["exp_id"]: r["examples"] for r in reports}, Path(report_dir) / "methods_grid.png")
    return note + md


# ------------------------------------------------------------------------------- ablation
# (name, settings over the base run): the comparison of handout section 3.5, one seed for all.
ABLATION: tuple[tuple[str, dict], ...] = (
    ("cam", dict(mode="CAM")), ("seg_scale", dict(mode="SEG", transform="scale")),
    ("seg_rotate", dict(mode="SEG", transform="rotate")), ("seg_hflip", dict(mode="SEG", transform="hflip")),
    ("seg_rotate_hflip", dict(mode="SEG", transform="rotate+hflip")))
# The methods compared in the README, one seed for all. SEG takes the transform whose ablation run
# was best on *training* masks (rotate+hflip); ACoL pp the paper's delta, pn the notes' 0.9; CSE's
# ordinary classifier is the CAM run of the same comparison ("{prefix}" is filled in).
METHODS: tuple[tuple[str, dict], ...] = (
    ("cam", dict(mode="CAM")), ("seg", dict(mode="SEG", transform="rotate+hflip")),
    ("acol_pp", dict(mode="ACOL", recipe="pp", delta=(0.6,))),
    ("acol_pn", dict(mode="ACOL", recipe="pn", delta=(0.9,))),
    ("cse", dict(mode="CSE", oc_exp="{prefix}_cam")))


def _runs(base: "train.RunConfig", prefix: str, table: tuple[tuple[str, dict], ...],
          form: str) -> list["train.RunConfig"]:
    """The configs of ``table``'s runs: ``<prefix>_<name>``, ``form`` as SEG's regularised CAM."""
    return [dataclasses.replace(base, exp_id=f"{prefix}_{name}", cam=form,
                                **{k: (v.format(prefix=prefix) if isinstance(v, str) else v)
                                   for k, v in settings.items()})
            for name, settings in table]


def _trained(cfg: "train.RunConfig") -> dict:
    """The run's metrics: reused when ``checkpoints/<exp_id>`` holds a finished run with the
    same settings (so an interrupted ablation continues where it stopped), trained otherwise (a
    run interrupted before its metrics.json is retrained); other settings there are an error."""
    path = cfg.run_dir() / "metrics.json"
    if not path.is_file():  # never trained, or interrupted before it finished: (re)train it
        return train.train(dataclasses.replace(cfg, overwrite=True))
    metrics = json.loads(path.read_text())
    differ = train.differing(cfg, metrics.get("args", {}))
    if differ:
        raise CamlabError(f"{cfg.run_dir()} holds a run with other settings ({', '.join(differ)}); "
                          f"move it away or use another --prefix")
    print(f"reusing {cfg.run_dir()} (same settings)")
    return metrics


def run_ablation(base: "train.RunConfig", prefix: str = "ablation", form: str = "class",
                 n_threshold: int = 500) -> str:
    """Train (or reuse) every ABLATION run under one seed, with ``form`` as the CAM that SEG's
    loss regularises and that every run is scored on; visualise the ten images at one shared
    threshold (the CAM run's, chosen on training masks) and tabulate accuracy, ten-image mean
    IoU and whole-test mean IoU (at the shared threshold, and at each run's own threshold
    chosen on training masks) into ``report/ablation.md``."""
    rows, shared = [], None
    for cfg in _runs(base, prefix, ABLATION, form):
        metrics = _trained(cfg)
        full = localization_report(cfg.exp_id, form, n_threshold, cfg.device)
        shared = shared if shared is not None else (full["threshold"] if full else DEFAULT_THRESHOLD)
        if full:
            full["shared_iou"] = float(full["test_curve"][1][THRESHOLD_GRID.index(shared)])
        out = visualize.visualize_run(cfg.exp_id, shared, form, cfg.data_root, cfg.device)
        settings = json.loads((out / "settings.json").read_text())
        ten = iou_table(out, Path(settings["data_root"]) / "test_seg")
        rows.append({"run": cfg.exp_id, "mode": cfg.mode, "transform": "-" if cfg.mode == "CAM" else cfg.transform,
                     "test_acc": metrics["test_acc"], "weights": metrics["weights"], "ten": float(np.mean(list(ten.values()))),
                     "full": full})
    table = ablation_table(rows, base, form, shared)
    atomic_write_text(REPORT_DIR / "ablation.md", table)
    return table


def run_methods(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                protocol: str = DEFAULT_PROTOCOL) -> str:
    """Train (or reuse) every METHODS run under one seed, then evaluate them all with
    :func:`wsol_report` into ``report/methods.{csv,md}`` and ``report/methods_grid.png``."""
    configs = _runs(base, prefix, METHODS, "class")
    for cfg in configs:
        _trained(cfg)
    reports = [wsol_report(cfg.exp_id, n_threshold, cfg.device, protocol) for cfg in configs]
    return write_methods_report([r for r in reports if r is not None])


def ablation_table(rows: list[dict], base: "train.RunConfig", form: str, shared: float) -> str:
    """Markdown for report/ablation.md: the settings, then one row per run."""
    used = ", ".join(sorted({r["weights"] for r in rows}))
    head = (f"Settings: seed {base.seed}, {base.epochs} epochs, img_size {base.img_size}, batch {base.batch_size}, "
            f"lr {base.lr}, weights {base.weights} (used: {used}), ser_weight {base.ser_weight}; the {form} CAM is both "
            f"what SEG's L_ser regularises and what every run is scored on. Shared threshold {shared:.2f}: "
            f"the CAM run's best on training masks. Own threshold: each run's best on training masks. "
            f"Test masks choose nothing.\n\n")
    lines = ["| run | mode | transform | test acc | ten-image mean IoU (shared thr.) "
             "| whole-test mean IoU (shared thr.) | whole-test mean IoU (own thr.) | own thr. |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        full = r["full"]
        cells = ([f"{full['shared_iou']:.4f}", f"{full['test_iou']:.4f}", f"{full['threshold']:.2f}"]
                 if full else ["-", "-", "-"])
        lines.append(f"| {r['run']} | {r['mode']} | {_md_cell(r['transform'])} | {r['test_acc']:.4f} "
                     f"| {r['ten']:.4f} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="iou.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gt_dir", type=Path, default=None,
                        help="ground-truth masks <stem>.png (default: test_seg/ of the data root the "
                             "experiments were visualised from, else data/synthetic/test_seg)")
    parser.add_argument("--cam", default="class", choices=list(model.CAM_FORMS),
                        help="CAM form for experiments visualize.py has not recorded one for")
    parser.add_argument("--n_threshold", type=int, default=500,
                        help="training images whose masks choose each experiment's threshold")
    parser.add_argument("--no_full", action="store_true", help="only the ten-image table")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS),
                        help="how --wsol and --methods compute PxAP, MaxBoxAcc and localisation: "
                             "wsolevaluation (its evaluation map and box rule exactly) or camlab (ReLU'd map, "
                             "inclusive boxes, the earlier tables)")
    parser.add_argument("--wsol", action="store_true",
                        help="evaluate every experiment in checkpoints/ (IoU, PxAP, MaxBoxAccV2, top-1 and "
                             "GT-known localisation) into report/methods.csv and report/methods.md")
    ab = parser.add_argument_group("comparisons (train, or reuse finished runs with the same settings, then compare)")
    ab.add_argument("--ablation", action="store_true",
                    help="CAM and SEG with scale, rotate, hflip and rotate+hflip -> report/ablation.md")
    ab.add_argument("--methods", action="store_true",
                    help="CAM, SEG rotate+hflip, ACoL pp and pn, CSE -> report/methods.md")
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
    if sum((args.ablation, args.methods, args.wsol)) > 1:
        parser.error("choose one of --ablation, --methods and --wsol")
    command = _ablation if args.ablation else _methods if args.methods else _wsol if args.wsol else _report

    def body() -> None:
        check_range("--n_threshold", args.n_threshold, 1, 1_000_000, why="training images that choose a threshold")
        command(args)
    return run_cli("iou.py", body)


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
    stems, experiments, matrix = experiment_table(VISUALIZE_DIR, args.gt_dir or _default_gt_dir())
    reports = [] if args.no_full else whole_test_reports(experiments, args.cam, args.n_threshold, args.device)
    extra = ""
    if reports:
        extra = ("\n## Whole test set\n\nThreshold chosen per experiment on training masks.\n\n"
                 + write_full_report(reports))
    write_report(stems, experiments, matrix, extra_md=extra)
    print(format_table(stems, experiments, matrix)[1] + extra, end="")


def _base_run(args: argparse.Namespace) -> "train.RunConfig":
    return train.RunConfig(epochs=args.epochs, img_size=args.img_size, seed=args.seed,
                           batch_size=args.batch_size, weights=args.weights, data_root=args.data_root,
                           device=args.device).checked()


def _ablation(args: argparse.Namespace) -> None:
    print(run_ablation(_base_run(args), args.prefix or "ablation", args.cam, args.n_threshold), end="")


def _methods(args: argparse.Namespace) -> None:
    print(run_methods(_base_run(args), args.prefix or "methods", args.n_threshold, args.protocol), end="")


def _wsol(args: argparse.Namespace) -> None:
    reports = []
    for exp_id in finished_experiments():
        report = wsol_report(exp_id, args.n_threshold, args.device, args.protocol)
        if report is None:
            print(f"skipping {exp_id}: its dataset has no train_masks/ and test_masks/")
        else:
            reports.append(report)
    print(write_methods_report(reports), end="")


if __name__ == "__main__":
    sys.exit(main())
