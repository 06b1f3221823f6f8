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
    [0, 1] and the classes present: :func:`label_maps`, or with ``images`` (uint8 N×H×W×3 RGB)
    the argmax of the dense CRF (:func:`crf_refine` with :func:`crf_settings` of ``crf``) whose
    unary is the background score (``threshold``) and the present classes' maps, scaled to sum to
    1 per pixel (AffinityNet feeds the scores unscaled; the per-pixel scale adds the same energy
    to every label, so the CRF's answer is the same)."""
    if images is None:
        return label_maps(cams, present, threshold)
    cams, present = check_unit_range(cams), np.asarray(present, bool)
    out = np.zeros((len(cams), *cams.shape[2:]), np.int64)
    for i, (image, maps, here) in enumerate(zip(images, cams, present)):
        classes = np.flatnonzero(here)
        scores = np.concatenate([np.full((1, *maps.shape[1:]), threshold), maps[classes]]).clip(1e-5, None)
        refined = crf_refine(image, scores / scores.sum(axis=0, keepdims=True), crf_settings(crf, image.shape[:2]))
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
