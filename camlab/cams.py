"""Tensor operations on class activation maps, shared by the model, the objectives and evaluation: picking each image's map, min-max and max normalisation, resizing.

Maps are float N×h×w (one per image) or N×K×h×w (one per class); nothing here knows a model.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def select_class(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Pick each image's map: cams N×K×h×w, classes int64 N -> N×h×w."""
    return cams[torch.arange(cams.shape[0], device=cams.device), classes]


def target_map(cams: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """N×h×w: the min-max normalised map of each image's class (``classes`` int64 N), or, with
    multi-hot ``classes`` (N×K), the element-wise max of its present classes' normalised maps."""
    if classes.ndim == 1:
        return minmax(select_class(cams, classes))
    present = classes.to(cams.dtype).view(*classes.shape, 1, 1)
    return (per_class(minmax, cams) * present).amax(dim=1)


def per_class(norm: Callable[[torch.Tensor], torch.Tensor], cams: torch.Tensor) -> torch.Tensor:
    """``norm`` (which scales each map of an N×h×w stack) applied to every map of N×K×h×w."""
    return norm(cams.flatten(0, 1)).view_as(cams)


def normalize_cam(cam: torch.Tensor, eps: float = 1e-5, valid: torch.Tensor | None = None,
                  shift: float = 0.0) -> torch.Tensor:
    """ReLU, then divide each map by its own maximum (SSENet, OC-CSE): values in [0, 1].

    cam: float N×h×w (or N×1×h×w). ``valid`` (same shape, 0/1) restricts the maximum to the
    positions that count, e.g. those a rotation drew from inside the image. A map with no
    positive value stays all zero (eps keeps it finite). ``shift``: SSENet's form,
    ``ReLU(ReLU(x) - shift) / (max ReLU(x) + eps)`` (its ``train_cls_ser.py`` uses 1e-5).
    """
    cam = F.relu(cam)
    peak = (cam if valid is None else cam * valid).flatten(1).amax(dim=1)
    top = F.relu(cam - shift) if shift else cam
    return top / (peak.view(-1, *([1] * (cam.dim() - 1))) + eps)


def minmax(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each map (N×H×W) stretched to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    span = (high - low).clamp_min(eps).view(-1, 1, 1)
    return (maps - low.view(-1, 1, 1)) / span


def class_form(raw: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """The ``class`` form of another extractor's raw maps N×h×w: ReLU, upsampled bilinearly to
    ``out_size``, min-max normalised (for CAM, what :func:`localization_maps` gives)."""
    with torch.inference_mode():
        cams = F.interpolate(raw.relu().unsqueeze(1), size=out_size, mode="bilinear", align_corners=False)[:, 0]
        return minmax(cams)


# Multi-scale inference with flips (KAIST-vilab/OC-CSE tools/utils.py and models/model_cse.py
# infer_msf; jiwoon-ahn/psa infer_cls.py uses the same four scales): each scale of the image and
# its mirror image, each map upsampled to the image, ReLU, summed, then divided by its max.
MSF_SCALES = (0.5, 1.0, 1.5, 2.0)
MSF_EPS = 1e-5


def msf_sum(total: torch.Tensor | None, cams: torch.Tensor, flipped: bool) -> torch.Tensor:
    """Add one input's class maps (N×K×H×W, already upsampled to the image) to the running sum:
    ReLU, mirrored back when the input was the mirror image."""
    cams = F.relu(cams.flip(-1) if flipped else cams)
    return cams if total is None else total + cams


def msf_normalise(total: torch.Tensor) -> torch.Tensor:
    """The summed maps divided, per image and class, by their max + 1e-5 (OC-CSE's ``norm_cam``)."""
    return total / (total.amax(dim=(-2, -1), keepdim=True) + MSF_EPS)
