"""The CAM extractors beside camlab's own CAM: Grad-CAM's family and Score-CAM through torchcam, opened on any model that returns class scores.

Each extractor gives one raw map per image at the hooked layer's resolution, before any resizing
or normalisation; the gradient- and score-based ones apply their own ReLU (their definitions).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from camlab.utils import CamlabError


# -------------------------------------------------------------------- other CAM extractors
# --extractor -> the torchcam class that computes it (None: camlab's own CAM, the default).
# Each gives one raw map per image at the feature maps' resolution, before any resizing or
# normalisation; the gradient- and score-based ones apply their own ReLU (their definitions).
_EXTRACTOR_TABLE: dict[str, tuple[str | None, str]] = {  # name -> (torchcam class, how it reads in a table)
    "cam": (None, "CAM"), "gradcam": ("GradCAM", "Grad-CAM"), "gradcampp": ("GradCAMpp", "Grad-CAM++"),
    "xgradcam": ("XGradCAM", "XGrad-CAM"), "layercam": ("LayerCAM", "LayerCAM"), "scorecam": ("ScoreCAM", "Score-CAM"),
    "smoothgradcampp": ("SmoothGradCAMpp", "SmoothGrad-CAM++")}


EXTRACTORS: dict[str, str | None] = {name: kind for name, (kind, _) in _EXTRACTOR_TABLE.items()}


EXTRACTOR_NAMES: dict[str, str] = {name: label for name, (_, label) in _EXTRACTOR_TABLE.items()}


DEFAULT_EXTRACTOR = "cam"


def check_extractor(name: str) -> str:
    """``name`` when it is one of ``EXTRACTORS``, else a one-line CamlabError naming the flag."""
    if name not in EXTRACTORS:
        raise CamlabError(f"--extractor {name!r}: choose one of {', '.join(EXTRACTORS)}")
    return name


def check_extractor_form(extractor: str, form: str) -> None:
    """Another extractor than camlab's CAM gives maps of one class: only the ``class`` form."""
    if extractor != DEFAULT_EXTRACTOR and form != "class":
        raise CamlabError(f"--extractor {extractor} gives class maps: use it with --cam class, not {form}")


@contextlib.contextmanager
def open_torchcam(scorer: nn.Module, layer: str, name: str, img_size: int = 224, score_batch: int = 64,
                  seed: int = 0) -> Iterator[Callable[[torch.Tensor, torch.Tensor | None],
                                                     tuple[torch.Tensor, torch.Tensor]]]:
    """``maps(inputs, classes) -> (scores N×K, raw maps N×h×w)`` of torchcam's extractor ``name``
    (one of ``EXTRACTORS`` other than ``cam``) on ``scorer`` (a module in eval mode returning the
    class scores N×K), hooked on its submodule ``layer``, for ``classes`` (int64 N; None: the top
    prediction), ``normalized=False``; the hooks are removed when the block ends. Call ``maps``
    outside ``torch.inference_mode``: the gradient-based extractors need autograd.
    ``score_batch``: how many masked images Score-CAM scores at once. SmoothGrad-CAM++ draws
    its noise from torch's global generator: each call draws it from ``seed`` instead (the global
    state is left as it was), so a map does not depend on what ran before it."""
    from torchcam import methods  # imported here: only these extractors need it
    if EXTRACTORS.get(check_extractor(name)) is None:
        raise CamlabError(f"--extractor {name} is camlab's own CAM, not one of torchcam's")
    kind = getattr(methods, EXTRACTORS[name])
    options = {"batch_size": score_batch} if issubclass(kind, methods.ScoreCAM) else {}
    with kind(scorer, layer, input_shape=(3, img_size, img_size), **options) as hooked:
        def maps(inputs: torch.Tensor, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.enable_grad(), torch.random.fork_rng(devices=[inputs.device] if inputs.is_cuda else []):
                torch.manual_seed(seed)
                scores = scorer(inputs)
                chosen = scores.argmax(dim=1) if classes is None else classes
                found = hooked(chosen.tolist(), scores, normalized=False)[0]
            return scores.detach(), found.detach()
        yield maps
