"""The 2020 course skeleton's conventions, so that a student can move between it and camlab: its mask rule, its 224×224 rendering and its checkpoint layout.

What the skeleton's ``visualize.py`` does with a CAM (both ``returnCAM`` variants share it): the
map at the feature maps' resolution is shifted to a minimum of 0, divided by its maximum,
truncated to uint8 (``np.uint8(255 * cam)``), resized to 224×224 with OpenCV's default bilinear
interpolation, and thresholded by ``cv2.threshold(cam, 175, 255, cv2.THRESH_BINARY)``: a pixel is
foreground where its uint8 value is above 175. Its ``train.py`` saves
``checkpoints/{exp_id}_checkpoint.pth`` holding ``model_state_dict`` and ``optimizer_state_dict``.
"""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
import torch

from camlab.utils import CamlabError

SKELETON_SIZE = 224  # the side of every image the skeleton writes
SKELETON_CUT = 175  # its mask: uint8 map > 175 (cv2.THRESH_BINARY)
# torchvision's ResNet children through layer2, in order: the skeleton-style backbone is
# ``nn.Sequential(*list(resnet18().children())[:6])``, whose keys are these indices.
_STEM_AND_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")
CLASSIFIER_KEY = "fc"  # the 128 -> 10 linear layer W_CLS


def render(cam: np.ndarray, size: int = SKELETON_SIZE) -> np.ndarray:
    """The skeleton's uint8 size×size map from a float h×w CAM at the feature resolution:
    ``cam - min``, divided by the max, ``uint8(255 · x)`` (truncated), bilinear resize."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or not cam.size or not np.isfinite(cam).all():
        raise CamlabError(f"the skeleton's rendering takes one finite h×w map, got shape {cam.shape}")
    cam = cam - cam.min()
    peak = cam.max()
    scaled = np.uint8(255 * (cam / peak)) if peak > 0 else np.zeros(cam.shape, np.uint8)
    return cv2.resize(scaled, (size, size))


def mask(rendered: np.ndarray) -> np.ndarray:
    """bool mask of a rendered uint8 map: above ``SKELETON_CUT``, as ``cv2.threshold`` binarises."""
    return np.asarray(rendered) > SKELETON_CUT


def check_exportable(model_config: dict) -> None:
    """The skeleton's model is ResNet-18 through layer2, GAP and one linear layer: refuse others."""
    shape = (model_config.get("backbone"), model_config.get("cut"), model_config.get("head"),
             model_config.get("recipe"), model_config.get("feature_pool", "none"))
    if shape != ("resnet18", "layer2", "linear", "p", "none"):
        raise CamlabError("only a run of the lab's model (ResNet-18 through layer2, GAP, one linear head) "
                          f"fits the skeleton's; this one has backbone {shape[0]}, cut {shape[1]}, head {shape[2]}, "
                          f"heads {shape[3]!r}, feature pool {shape[4]}")


def skeleton_state_dict(state: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """camlab's ``CAMModel`` weights under the skeleton-style names: ``backbone.<i>.…`` for the
    i-th child of torchvision's ResNet-18 (conv1 0, bn1 1, layer1 4, layer2 5) and ``fc.weight``,
    ``fc.bias`` for the classifier; the order of the tensors is kept (the parameter order of the
    optimizer's state)."""
    index = {name: str(i) for i, name in enumerate(_STEM_AND_STAGES)}
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "backbone" and len(parts) > 2 and parts[1] in index:
            out[".".join(["backbone", index[parts[1]], *parts[2:]])] = value
        elif parts[:2] == ["heads", "0"] and len(parts) == 3:
            out[f"{CLASSIFIER_KEY}.{parts[2]}"] = value
        else:
            raise CamlabError(f"weight {key!r} has no place in the skeleton's model")
    return out


def checkpoint_payload(state: dict[str, torch.Tensor], optimizer: dict | None, epoch: int | None) -> dict:
    """What the skeleton's ``train.py`` saves: ``model_state_dict`` (and, when the run kept it,
    ``optimizer_state_dict``, whose parameter indices follow the same order), plus ``epoch``."""
    payload: dict = {"model_state_dict": skeleton_state_dict(state)}
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer
    if epoch is not None:
        payload["epoch"] = int(epoch)
    return payload
