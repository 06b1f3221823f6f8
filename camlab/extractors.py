"""The CAM extractors beside camlab's own CAM: Grad-CAM's family and Score-CAM on torchcam's hooks, each paper's name computing what its reference computes, torchcam's departures kept as named variants.

Each extractor gives one raw map per image at the hooked layer's resolution, before any resizing
or normalisation; the gradient- and score-based ones apply their own ReLU (their definitions).

Three of torchcam 0.5.0's extractors depart from their papers; camlab's subclasses replace only
their weights (``_get_weights``), on torchcam's hooks, and torchcam's forms stay as ``*_torchcam``:

- Grad-CAM++ (Chattopadhay et al., WACV 2018, Eq. 19 in the exp-score form every reference
  uses): ``alpha_kij = g²_kij / (2 g²_kij + sum_ab A_kab · g³_kij)``, 0 where g = 0,
  ``w_k = sum_ij alpha_kij ReLU(g_kij)``, g the gradient of the class logit. torchcam 0.5.0
  divides a copy of alpha (``alpha[idx][mask].div_``), so its alpha stays g² and its weights
  are ``sum_ij ReLU(g)³`` (on a GAP + linear head, the class weights cubed).
- SmoothGrad-CAM++ (Omeiza et al. 2019): Grad-CAM++ whose derivative powers g, g², g³ are each
  averaged over ``n`` noisy copies of the input (torchcam's n = 4, N(0, 0.3²) added to the model
  input), the map built from the clean input's activations. torchcam 0.5.0 takes the ReLU term
  from the last noisy copy's gradient and builds the map from its activations.
- Score-CAM (Wang et al., CVPR-W 2020, Algorithm 1; also the official code and pytorch-grad-cam):
  each activation map upsampled to the input (bilinear, align_corners=False), then min-max
  normalised per (image, channel), the input multiplied by it; ``w = softmax_k(f_c(X ⊙ M_k) -
  f_c(X))`` on the class logit f_c, map ``ReLU(sum_k w_k A_k)``. torchcam 0.5.0 normalises at the
  activations' resolution and upsamples afterwards.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from camlab.utils import CamlabError


# -------------------------------------------------------------------- other CAM extractors
def _torchcam(kind: str) -> Callable[[], type]:
    """torchcam's own class ``kind`` (``torchcam.methods``), imported when first asked for."""
    def load() -> type:
        from torchcam import methods  # imported here: only these extractors need it
        return getattr(methods, kind)
    load.__qualname__ = f"torchcam.methods.{kind}"
    return load


def _camlab(kind: str) -> Callable[[], type]:
    """camlab's subclass ``kind`` of a torchcam class (:func:`_reference_classes`)."""
    def load() -> type:
        return _reference_classes()[kind]
    load.__qualname__ = f"camlab.extractors.{kind}"
    return load


# --extractor -> (a callable returning the class that computes it, how it reads in a table);
# None: camlab's own CAM, the default. A paper's name is the paper's method; a departure of a
# library is a variant beside it whose label says how it departs.
_EXTRACTOR_TABLE: dict[str, tuple[Callable[[], type] | None, str]] = {
    "cam": (None, "CAM"),
    "gradcam": (_torchcam("GradCAM"), "Grad-CAM"),
    "gradcampp": (_camlab("GradCAMppPaper"), "Grad-CAM++"),
    "gradcampp_torchcam": (_torchcam("GradCAMpp"), "Grad-CAM++ (torchcam 0.5.0, alpha undivided)"),
    "xgradcam": (_torchcam("XGradCAM"), "XGrad-CAM"),
    "layercam": (_torchcam("LayerCAM"), "LayerCAM"),
    "scorecam": (_camlab("ScoreCAMPaper"), "Score-CAM"),
    "scorecam_torchcam": (_torchcam("ScoreCAM"), "Score-CAM (torchcam 0.5.0, normalised before upsampling)"),
    "smoothgradcampp": (_camlab("SmoothGradCAMppPaper"), "SmoothGrad-CAM++"),
    "smoothgradcampp_torchcam": (_torchcam("SmoothGradCAMpp"),
                                 "SmoothGrad-CAM++ (torchcam 0.5.0, last noisy pass's gradient and activations)"),
}


EXTRACTORS: dict[str, Callable[[], type] | None] = {name: kind for name, (kind, _) in _EXTRACTOR_TABLE.items()}


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


def extractor_class(name: str) -> type:
    """The torchcam class (or camlab's subclass of one) that computes extractor ``name``."""
    load = EXTRACTORS[check_extractor(name)]
    if load is None:
        raise CamlabError(f"--extractor {name} is camlab's own CAM, not one of torchcam's")
    return load()


# -------------------------------------------------------------------- the papers' weights
def gradcampp_weights(d1: torch.Tensor, d2: torch.Tensor, d3: torch.Tensor,
                      activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s channel weights N×K (Eq. 19, exp-score form) from the first, second and third
    derivative powers (g, g², g³, or their means over noisy inputs) and the activations A, all
    N×K×h×w: ``alpha = d2 / (2 d2 + sum_ab A(a, b) · d3)``, 0 where d2 = 0 (g = 0) or the
    denominator is 0 (the division is guarded, no eps added), and ``w_k = sum_ij alpha · ReLU(d1)``."""
    spatial = tuple(range(2, activations.ndim))
    denominator = 2 * d2 + activations.sum(dim=spatial, keepdim=True) * d3
    defined = (d2 > 0) & (denominator != 0)
    alpha = torch.where(defined, d2 / torch.where(defined, denominator, torch.ones_like(denominator)), 0.0)
    return torch.where(d1 > 0, alpha * d1, 0.0).flatten(2).sum(-1)


def stretch(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``maps`` (…×h×w) min-max normalised to [0, 1] over its last two dimensions;
    a constant map becomes 0 (the division is guarded, no eps added)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)


@functools.cache
def _reference_classes() -> dict[str, type]:
    """camlab's subclasses of torchcam's Grad-CAM++, SmoothGrad-CAM++ and Score-CAM (defined on the
    first call: torchcam is imported only when one of its extractors is used)."""
    from torchcam import methods

    class GradCAMppPaper(methods.GradCAMpp):
        """Grad-CAM++ with the paper's alpha (Eq. 19): torchcam's hooks and backpropagation of
        the class logit, :func:`gradcampp_weights` of g, g², g³ as the weights."""

        def _get_weights(self, class_idx: int | list[int], scores: torch.Tensor, **kwargs: Any) -> list[torch.Tensor]:
            self._backprop(scores, class_idx, **kwargs)
            return [gradcampp_weights(grad, grad.pow(2), grad.pow(3), act)
                    for grad, act in zip(self.hook_g, self.hook_a, strict=True)]

    class SmoothGradCAMppPaper(methods.SmoothGradCAMpp):
        """SmoothGrad-CAM++ (Omeiza et al. 2019): g, g² and g³ each averaged over ``num_samples``
        noisy copies of the input (torchcam's noise, drawn from torch's global generator),
        :func:`gradcampp_weights` of those means with the clean input's activations, and the map
        built from the clean input's activations."""

        def _get_weights(self, class_idx: int | list[int], _: torch.Tensor | None = None,
                         **kwargs: Any) -> list[torch.Tensor]:
            clean = list(self.hook_a)  # the noisy passes replace these entries, not their contents
            sums = [[torch.zeros_like(act) for _ in range(3)] for act in clean]
            input_hook = self._ihook_enabled
            self._ihook_enabled = False  # the stored input stays the clean one
            try:
                for _ in range(self.num_samples):
                    noisy = self._input + self._distrib.sample(self._input.size()).to(device=self._input.device)
                    noisy.requires_grad_(True)  # a graph to the hooked layer even with frozen parameters
                    self._backprop(self.model(noisy), class_idx, **kwargs)
                    for (s1, s2, s3), grad in zip(sums, self.hook_g, strict=True):
                        s1.add_(grad)
                        s2.add_(grad.pow(2))
                        s3.add_(grad.pow(3))
            finally:
                self._ihook_enabled = input_hook
                self.hook_a = clean  # compute_cams combines the weights with these
            n = self.num_samples
            return [gradcampp_weights(s1 / n, s2 / n, s3 / n, act)
                    for (s1, s2, s3), act in zip(sums, clean, strict=True)]

    class ScoreCAMPaper(methods.ScoreCAM):
        """Score-CAM in the paper's order (Algorithm 1): each raw activation map upsampled to the
        input (bilinear, align_corners=False), then min-max normalised (:func:`stretch`), the input
        multiplied by it; the class logit of each masked input minus that of the input, softmax
        over the channels. ``batch_size`` masked inputs are scored at once (each mask is
        normalised on its own, so the chunks do not change the weights). Class indices only."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._targets_supported = False

        @torch.no_grad()
        def _get_weights(self, class_idx: int | list[int], *_: Any, **__: Any) -> list[torch.Tensor]:
            hooks, modes = self._hooks_enabled, [(module, module.training) for module in self.model.modules()]
            self._hooks_enabled = False  # the masked passes must not replace the hooked activations
            self.model.eval()
            try:
                return [self._channel_weights(act, class_idx) for act in self.hook_a]
            finally:
                self._hooks_enabled = hooks
                for module, training in modes:  # every module back as it was found
                    module.training = training

        def _channel_weights(self, activation: torch.Tensor, class_idx: int | list[int]) -> torch.Tensor:
            n, k = activation.shape[:2]
            images = self._input.expand(n, *self._input.shape[1:])  # a batch of one image is broadcast
            classes = torch.as_tensor([class_idx] * n if isinstance(class_idx, int) else class_idx,
                                      device=images.device).view(-1, 1)
            unmasked = self.model(images).gather(1, classes)[:, 0]
            owner = torch.arange(n, device=images.device).repeat_interleave(k)  # (image, channel) pairs, flattened
            flat = activation.flatten(0, 1).unsqueeze(1)
            gains = activation.new_empty(n * k)
            for start in range(0, n * k, self.bs):
                who = owner[start:start + self.bs]
                masks = stretch(F.interpolate(flat[start:start + self.bs], size=images.shape[2:], mode="bilinear",
                                              align_corners=False))
                scores = self.model(images[who] * masks).gather(1, classes[who])[:, 0]
                gains[start:start + self.bs] = scores - unmasked[who]
            return torch.softmax(gains.view(n, k), dim=1)

    classes = {"GradCAMppPaper": GradCAMppPaper, "SmoothGradCAMppPaper": SmoothGradCAMppPaper,
               "ScoreCAMPaper": ScoreCAMPaper}
    for name, kind in classes.items():
        kind.__qualname__, kind.__module__ = name, __name__
    return classes


@contextlib.contextmanager
def open_torchcam(scorer: nn.Module, layer: str, name: str, img_size: int = 224, score_batch: int = 64,
                  seed: int = 0) -> Iterator[Callable[[torch.Tensor, torch.Tensor | None],
                                                     tuple[torch.Tensor, torch.Tensor]]]:
    """``maps(inputs, classes) -> (scores N×K, raw maps N×h×w)`` of extractor ``name`` (one of
    ``EXTRACTORS`` other than ``cam``: torchcam's class or camlab's subclass of one) on ``scorer``
    (a module in eval mode returning the class scores N×K), hooked on its submodule ``layer``,
    for ``classes`` (int64 N; None: the top prediction), ``normalized=False``; the hooks are
    removed when the block ends. Call ``maps`` outside ``torch.inference_mode``: the
    gradient-based extractors need autograd. ``score_batch``: how many masked images Score-CAM
    scores at once. SmoothGrad-CAM++ draws its noise from torch's global generator: each call
    draws it from ``seed`` instead (the global state is left as it was), so a map does not
    depend on what ran before it."""
    from torchcam import methods  # imported here: only these extractors need it
    kind = extractor_class(name)
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
