"""Classifier heads on backbone features: the CAM paper's GAP + linear layer and ACoL's convolutional head, each giving class maps whose GAP (plus a bias) is the scores.

Adding a kind of head means one ``HeadType`` in ``HEAD_TYPES``: every kind gives class maps, and
its scores are their GAP (plus a bias), so erasing, fusion and the CAM forms read the maps alone.
"""
from __future__ import annotations

import torch
from torch import nn


# ACoL head letters (Zhang et al., CVPR 2018, and the ACoL-with-pretrained-models notes): what
# each kind of classifier head is for. camlab.methods.HEAD_LOSSES gives each letter its loss.
HEAD_KINDS: dict[str, str] = {
    "p": "complementary: cross-entropy toward the label; its CAM erases for later heads and is evaluated",
    "n": "adversarial: the rest cross-entropy, toward the mean of the other classes",
}
ACOL_DELTA = 0.6  # the ACoL paper's erasing threshold
ACOL_WIDTH = 1024  # hidden channels of the ACoL paper's (and wsolevaluation's) convolutional head


class HeadType:
    """One kind of classifier head: how it is built from the feature channels, and how it reads
    features N×C×h×w as class maps N×K×h×w. Its scores are the maps' GAP plus ``bias`` (N×K),
    which is what lets ``CAMModel.run_heads`` erase and ``localization_cam`` fuse by maps alone,
    whatever the head. Stateless: one instance per kind serves every model."""

    about = ""

    def build(self, channels: int, num_classes: int, width: int) -> nn.Module:
        raise NotImplementedError

    def maps(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bias(self, head: nn.Module) -> torch.Tensor | float:
        """Added to the maps' GAP to give the scores (K, or 0 when the maps hold it already)."""
        return 0.0

    def scores(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Scores N×K: the GAP of the class maps plus the bias."""
        return self.maps(head, features).mean(dim=(2, 3)) + self.bias(head)


class LinearHead(HeadType):
    """GAP, then a linear layer (Zhou et al.): ``M_c = sum_k w_ck f_k``, ``S_c = mean M_c + b_c``.
    The bias stays out of the maps: constant over positions, no normalisation sees it."""

    about = "GAP then a linear layer (CAM's classifier)"

    def build(self, channels: int, num_classes: int, width: int) -> nn.Module:
        return nn.Linear(channels, num_classes)

    def maps(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ck,nkhw->nchw", head.weight, features)

    def bias(self, head: nn.Module) -> torch.Tensor:
        return head.bias

    def scores(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        # GAP commutes with the linear layer: the same scores without computing K maps
        return head(features.mean(dim=(2, 3)))


class ConvHead(HeadType):
    """ACoL's classifier (Zhang et al., CVPR 2018; wsolevaluation's ``classifier_A/B``): 3×3 conv
    + ReLU, 3×3 conv + ReLU (``width`` channels, padding 1), then a 1×1 conv to one map per
    class; the scores are the maps' GAP (the last conv's bias is inside the maps)."""

    about = "3x3 conv + ReLU, 3x3 conv + ReLU, 1x1 conv to class maps, scores = their GAP (the ACoL paper's)"

    def build(self, channels: int, num_classes: int, width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, num_classes, 1))

    def maps(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        return head(features)


# ModelConfig.head -> its kind; main.py's --acol_head choices.
HEAD_TYPES: dict[str, HeadType] = {"linear": LinearHead(), "conv": ConvHead()}
