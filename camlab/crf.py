"""Dense-CRF refinement of class maps into label maps (Krähenbühl and Koltun, NIPS 2011), with AffinityNet's pairwise settings, and the background threshold chosen on training masks.

Uses the ``pydensecrf2`` package (imported as ``pydensecrf``), imported only when a CRF runs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from camlab.metrics import THRESHOLD_GRID, check_unit_range, confusion_matrix, label_maps, mean_iou, pick_threshold
from camlab.utils import CamlabError


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
    [0, 1] and the classes present: :func:`label_maps` (a constant background score
    ``threshold``), or with ``images`` (uint8 N×H×W×3 RGB) the argmax of the dense CRF
    (:func:`crf_refine` with :func:`crf_settings` of ``crf``) on the background score and the
    present classes' maps. The background score is the reference's ``(1 - max_c cam)^α`` with
    α = ``threshold`` (jiwoon-ahn/psa ``infer_cls.py``, KAIST-vilab/OC-CSE ``tools/imutils.py``;
    the max over the present classes, the scores fed to the CRF as they are), or for a
    ``-const`` variant the constant ``threshold`` with the scores scaled to sum to 1 per pixel
    (camlab's earlier form)."""
    if images is None:
        return label_maps(cams, present, threshold)
    cams, present = check_unit_range(cams), np.asarray(present, bool)
    power = crf_background(crf) == "power"
    out = np.zeros((len(cams), *cams.shape[2:]), np.int64)
    for i, (image, maps, here) in enumerate(zip(images, cams, present)):
        classes = np.flatnonzero(here)
        if power:
            background = (1 - maps[classes].max(axis=0, initial=0)) ** threshold
            scores = np.concatenate([background[None], maps[classes]])
        else:
            scores = np.concatenate([np.full((1, *maps.shape[1:]), threshold), maps[classes]]).clip(1e-5, None)
            scores = scores / scores.sum(axis=0, keepdims=True)
        refined = crf_refine(image, scores, crf_settings(crf, image.shape[:2]))
        out[i] = np.concatenate([[0], classes + 1])[refined.argmax(axis=0)]
    return out


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


# --crf variants: the spatial widths (AffinityNet's in px, or scaled to the image) and the
# background score (the references' (1 - max)^α, or with "-const" camlab's earlier constant)
CRF_VARIANTS = ("affinitynet", "scaled", "affinitynet-const", "scaled-const")
CRF_DEFAULT_VARIANTS = ("affinitynet", "scaled")  # --crf without a value
# The background powers α tried under a (1 - max)^α variant, chosen on training masks: psa's low
# and high α (4, 32), OC-CSE's (6, 10, 24) and the steps between.
CRF_ALPHA_GRID: tuple[float, ...] = (1, 2, 4, 6, 8, 10, 12, 16, 24, 32)


def crf_background(variant: str) -> str:
    """``power`` (the reference's (1 - max)^α) or ``constant`` (a ``-const`` variant)."""
    if variant not in CRF_VARIANTS:
        raise CamlabError(f"unknown CRF variant {variant!r}; choose one of {', '.join(CRF_VARIANTS)}")
    return "constant" if variant.endswith("-const") else "power"


def background_grid(variant: str) -> tuple[float, ...]:
    """The background values a CRF variant chooses among: α for a power background, thresholds
    (every other value of THRESHOLD_GRID) for a constant one."""
    return CRF_ALPHA_GRID if crf_background(variant) == "power" else CRF_THRESHOLD_GRID


def crf_settings(variant: str, shape: tuple[int, int]) -> dict:
    """The pairwise settings of CRF ``variant`` for an image of ``shape`` (H, W): AffinityNet's
    as they are (``affinitynet``), or with the spatial widths scaled to the image (``scaled``)."""
    spatial = variant.removesuffix("-const")
    if variant not in CRF_VARIANTS:
        raise CamlabError(f"unknown CRF variant {variant!r}; choose one of {', '.join(CRF_VARIANTS)}")
    if spatial == "affinitynet":
        return dict(CRF_SETTINGS)
    if spatial == "scaled":
        factor = max(shape) / CRF_REFERENCE_SIDE
        return {**CRF_SETTINGS, "gaussian_sxy": CRF_SETTINGS["gaussian_sxy"] * factor,
                "bilateral_sxy": CRF_SETTINGS["bilateral_sxy"] * factor}
    raise CamlabError(f"unknown CRF variant {variant!r}; choose one of {', '.join(CRF_VARIANTS)}")


def crf_refine(image: np.ndarray, probs: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """Dense-CRF marginals of one image: ``image`` uint8 H×W×3 (RGB), ``probs`` C×H×W per-pixel
    scores of the labels (the unary is ``-log(clip(score, 1e-5, 1))``, pydensecrf's
    ``unary_from_softmax``, as AffinityNet's ``crf_inference`` feeds it; they need not sum to 1)
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
