"""The registry of training methods (one ``Method`` record each: objective, flags and their checks, table labels, model configuration) and the methods beyond the lab: ACoL and class-specific erasing (CSE, OC-CSE).

The lab's two methods, CAM and SEG (the equivariance loss), are registered by ``train.py``; a
method is added by building one :class:`Method` and passing it to :func:`register`, and nothing
else in camlab branches on a method's name.

An objective is ``(model, images N×3×S×S, labels, generator, epoch from 1) -> Step``: the loss to
minimise, the scores used for accuracy, and named loss terms for the log. Labels are int64 N (one
class per image) or, under ``--multi_label``, float N×K multi-hot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from camlab.cams import normalize_cam, select_class
from camlab.heads import ACOL_WIDTH, HEAD_KINDS, HEAD_TYPES
from camlab.utils import CamlabError, Range, add_to_registry


# -------------------------------------------------------------------------------- objectives
class Step(NamedTuple):
    """What an objective returns for one batch: the loss to minimise, the scores used for
    accuracy, and named loss terms for the log (each a 0-d tensor)."""

    loss: torch.Tensor
    scores: torch.Tensor
    terms: dict[str, torch.Tensor]


# An objective: (model, images N×3×S×S, labels, generator for its random draws, epoch from 1)
# -> Step. Labels are int64 N (one class per image) or, under --multi_label, float N×K multi-hot.
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator, int], Step]


def classification_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for one label per image (int64 N); binary cross-entropy with logits,
    averaged over images and classes, for multi-hot labels (float N×K)."""
    if labels.ndim == 1:
        return F.cross_entropy(scores, labels)
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


# ------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Flag:
    """One command-line flag of a method, ``--<name>``. Its value lives in the run settings'
    field of that name (``train.RunConfig``), or, for a flag those settings do not have, in their
    ``options`` (with ``default``). ``range``: the bounds checked before any work."""

    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    nargs: str | None = None
    choices: tuple | None = None
    range: Range | None = None


def _no_check(cfg: Any) -> None:
    """A method without checks of its own."""


def _one_linear_head(cfg: Any) -> dict:
    """The lab's model: one GAP + linear head (``model.ModelConfig``'s defaults)."""
    return {}


@dataclass(frozen=True)
class Method:
    """One training method (a ``--mode`` choice).

    name: the ``--mode`` value; about: its description in ``--help``.
    objective: ``(settings, class names, teacher) -> Objective``; ``teacher`` is the frozen best
      model of the finished run that the flag named by ``teacher`` points at, else None.
    label: ``settings -> str``, how a run reads in the comparison tables (CAM, SEG rotate+hflip,
      ACoL pp conv δ=0.6, ...); short_label: the same in the segmentation table (None: label).
    group, flags: the heading of its flags in ``--help`` and the flags (:class:`Flag`).
    check: ``settings -> None``, raising a one-line CamlabError for settings it cannot train.
    model: ``settings -> dict`` of ``model.ModelConfig`` fields beyond the classes, backbone
      and cut (its heads).
    teacher: the flag naming a finished run whose best model the objective judges with.
    predated: settings whose default is not what this method's runs did before the setting
      existed (such a run reads back as what it ran).
    presets: name -> settings that ``--preset name`` sets together (a reference's configuration).
    """

    name: str
    about: str
    objective: Callable[[Any, list, Any], Objective]
    label: Callable[[Any], str]
    group: str = ""
    flags: tuple[Flag, ...] = ()
    check: Callable[[Any], None] = _no_check
    model: Callable[[Any], dict] = _one_linear_head
    teacher: str | None = None
    predated: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)
    short_label: Callable[[Any], str] | None = None

    def table_label(self, cfg: Any, short: bool = False) -> str:
        return (self.short_label or self.label)(cfg) if short else self.label(cfg)


METHODS: dict[str, Method] = {}


def register(method: Method, first: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` (its name must be new) and return it; ``first`` lists it
    before the others in ``--mode``."""
    return add_to_registry(METHODS, method.name, method, "method", first)


def get(name: str) -> Method:
    """The registered method ``name``, else a one-line CamlabError listing the choices."""
    if name not in METHODS:
        raise CamlabError(f"--mode {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def all_flags() -> list[Flag]:
    """Every registered method's flags, each once (two methods may share one)."""
    return list({f.name: f for m in METHODS.values() for f in m.flags}.values())


def rest_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Adversarial "rest" loss of an ACoL ``n`` head (the ACoL-with-pretrained-models notes,
    after Zhang et al., "Adversarial Complementary Learning for Weakly Supervised Object
    Localization", CVPR 2018): cross-entropy toward the mean of the non-target logits,

        L_i = -log( exp(mean_{j != y_i} z_ij) / sum_j exp(z_ij) )
            = logsumexp_j z_ij - (sum_j z_ij - z_{i,y_i}) / (C - 1),

    averaged over the batch. It falls as the target logit falls relative to the others.
    logits: float N×C (C >= 2); labels: int64 N. Returns a 0-d tensor. Computed through
    logsumexp, so large logits neither overflow nor lose the gradient.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise CamlabError(f"rest_cross_entropy needs N×C logits with C >= 2, got {tuple(logits.shape)}")
    target = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    rest_mean = (logits.sum(dim=1) - target) / (logits.shape[1] - 1)
    return (torch.logsumexp(logits, dim=1) - rest_mean).mean()


# ACoL head letter (model.HEAD_KINDS) -> its loss on (scores N×K, labels N).
HEAD_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "p": classification_loss, "n": rest_cross_entropy}


def acol_objective(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator | None = None, epoch: int = 1) -> Step:
    """ACoL (Zhang et al., CVPR 2018) with the notes' recipes: every head's loss on its own
    scores, summed; head i > 1 sees the features erased by the earlier ``p`` heads' maps of the
    label (``nn.Module.run_heads``). Accuracy reads the first head. Terms: ``p1``, ``n2``, ..."""
    outputs = model.run_heads(model.forward_features(images), labels)
    terms = {f"{out.kind}{i}": HEAD_LOSSES[out.kind](out.scores, labels)
             for i, out in enumerate(outputs, start=1)}
    loss = torch.stack(list(terms.values())).sum()
    return Step(loss, outputs[0].scores, {k: v.detach() for k, v in terms.items()})


def erased_class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p_y)``, p the softmax of ``logits`` (N×K, K >= 2), averaged: falls as the
    labelled class's probability falls. The one-label form of OC-CSE's "the erased class is
    gone" target, computed as ``logsumexp_j z_j - logsumexp_{j != y} z_j`` (stable)."""
    rest = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(rest, dim=1)).mean()


def sample_target(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """OC-CSE's target class: per image, one class drawn uniformly among those present
    (multi-hot ``labels`` N×K, at least one per image) -> int64 N. One uniform number per image
    from ``generator`` (CPU): the k-th present class, k = floor(u × number present)."""
    u = torch.rand(labels.shape[0], generator=generator).to(labels.device)
    present = labels > 0
    rank = (u * present.sum(dim=1)).long()  # 0-based, among the present classes
    return (present.cumsum(dim=1) <= rank.view(-1, 1)).sum(dim=1)


# --erase_norm -> how the target's map becomes the erasing mask (N×1×H×W in [0, 1] at the image size)
ERASE_NORMS = {
    "batch": "the reference's: the raw map upsampled (bilinear), ReLU, divided by one max over the batch (+1e-5)",
    "image": "the same, each image divided by its own max",
    "feature": "camlab's earlier: ReLU and each image's max on the feature map, then upsampled",
}
ERASE_EPS = 1e-5  # KAIST-vilab/OC-CSE models/model_cse.py: mask / (mask.max() + 1e-5)


def erasing_mask(raw: torch.Tensor, size: tuple[int, int], norm: str = "batch") -> torch.Tensor:
    """OC-CSE's erasing mask from each image's raw (pre-ReLU) target map ``raw`` N×h×w, at the
    image ``size`` (H, W): N×1×H×W in [0, 1] (see :data:`ERASE_NORMS`). The reference
    (``models/model_cse.py``) upsamples bilinearly (``align_corners=False``), takes the ReLU, and
    divides by ``mask.max() + 1e-5``: one max over the whole batch, so only the image holding the
    batch's peak reaches 1."""
    if norm not in ERASE_NORMS:
        raise CamlabError(f"--erase_norm {norm!r}: choose from {', '.join(ERASE_NORMS)}")
    if norm == "feature":
        return F.interpolate(normalize_cam(raw).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    mask = F.relu(F.interpolate(raw.unsqueeze(1), size=size, mode="bilinear", align_corners=False))
    peak = mask.amax() if norm == "batch" else mask.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return mask / (peak + ERASE_EPS)


class CseObjective:
    """Class-specific adversarial erasing after OC-CSE (Kweon et al., ICCV 2021). A target class
    is chosen per image: the label (one label per image), or one drawn uniformly among the
    present classes (multi-hot labels, :func:`sample_target`: OC-CSE as published). The trained
    network's CAM of the target (:func:`erasing_mask`: upsampled to the image, ReLU, divided by
    the batch's max, as the reference) erases the image softly, ``image * (1 - mask)``, and a
    frozen ordinary classifier (eval mode, no parameter updates, gradients flowing through it to
    the mask) judges it.

    Multi-label (OC-CSE)::

        L = BCE(scores, y) + w(epoch) * BCE(oc(erased), y with the target set to 0) + area_weight * mean(mask)

    so the erased image must lose the target and keep every other present class ("remain").
    One label per image::

        L = CE(scores, y) + w(epoch) * erased_class_loss(oc(erased), y) + area_weight * mean(mask)

    where nothing else is there to keep, so a mask covering everything erases the class best;
    ``area_weight`` (off by default) charges for the mask's area to keep it to the object.
    ``w(epoch) = erase_weight + erase_growth * (epoch - 1)`` (OC-CSE: 0.3 + 0.05 epoch).
    Terms: ``ce``, ``erase``, ``area``.
    """

    def __init__(self, classifier: nn.Module, erase_weight: float = 0.3, erase_growth: float = 0.05,
                 area_weight: float = 0.0, erase_norm: str = "batch") -> None:
        if erase_norm not in ERASE_NORMS:
            raise CamlabError(f"--erase_norm {erase_norm!r}: choose from {', '.join(ERASE_NORMS)}")
        self.classifier = classifier.eval().requires_grad_(False)
        self.erase_weight, self.erase_growth, self.area_weight = erase_weight, erase_growth, area_weight
        self.erase_norm = erase_norm

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None, epoch: int = 1) -> Step:
        scores, features, _ = model(images)
        target = labels if labels.ndim == 1 else sample_target(labels, generator)
        mask = erasing_mask(select_class(model.class_cams(features), target), images.shape[-2:], self.erase_norm)
        erased_scores, _, _ = self.classifier(images * (1 - mask))
        if labels.ndim == 1:
            erase = erased_class_loss(erased_scores, labels)
        else:
            remain = labels.scatter(1, target.view(-1, 1), 0.0)
            erase = F.binary_cross_entropy_with_logits(erased_scores, remain.to(erased_scores.dtype))
        ce, area = classification_loss(scores, labels), mask.mean()
        weight = self.erase_weight + self.erase_growth * (epoch - 1)
        loss = ce + weight * erase + self.area_weight * area
        return Step(loss, scores, {"ce": ce.detach(), "erase": erase.detach(), "area": area.detach()})


assert HEAD_LOSSES.keys() == HEAD_KINDS.keys(), "every ACoL head letter needs a loss"


# ------------------------------------------------------------------------------ the records
def _acol_check(cfg: Any) -> None:
    if cfg.multi_label and "n" in cfg.recipe:
        raise CamlabError(f"--recipe {cfg.recipe}: the adversarial 'n' head's loss is single-label; "
                          f"under --multi_label use p heads only (e.g. --recipe pp)")


def _acol_model(cfg: Any) -> dict:
    return dict(recipe=cfg.recipe, deltas=tuple(cfg.delta), head=cfg.acol_head, head_width=cfg.acol_width,
                erase_grow=cfg.acol_grow, feature_pool=cfg.acol_pool, head_init=cfg.acol_init)


def _acol_label(cfg: Any) -> str:
    """ACoL pn conv δ=0.9: the recipe, the heads (with their width when not the paper's), δ."""
    head = cfg.acol_head if cfg.acol_head != "conv" or cfg.acol_width == ACOL_WIDTH else f"conv{cfg.acol_width}"
    grow = f" grow {cfg.acol_grow}" if cfg.acol_grow else ""
    departs = [name for name, off in (("no feature pool", cfg.acol_pool == "none"), ("torch init", cfg.acol_init == "torch"))
               if off]  # camlab's earlier choices, where a run keeps them
    return f"ACoL {cfg.recipe} {head} δ={','.join(f'{d:g}' for d in cfg.delta)}{grow}" + \
        (f" ({', '.join(departs)})" if departs else "")


ACOL = register(Method(
    "ACOL", "complementary/adversarial heads on erased features", lambda cfg, classes, teacher: acol_objective,
    _acol_label, group="ACOL mode (adversarial complementary learning)",
    flags=(
        Flag("recipe", "one letter per classifier head, starting with p: "
             + "; ".join(f"{k}: {v}" for k, v in HEAD_KINDS.items()) + " (pp is the paper's ACoL)"),
        Flag("delta", "erasing threshold of each head after the first (one value: all)", float, nargs="+"),
        Flag("acol_head", "what every head is: " + "; ".join(f"{k}: {v.about}" for k, v in HEAD_TYPES.items()),
             choices=tuple(HEAD_TYPES)),
        Flag("acol_width", "hidden channels of each conv head's two 3x3 convolutions (the default is the paper's)",
             int, range=Range(1, 4096, f"hidden channels of each ACoL conv head; the paper's is {ACOL_WIDTH}")),
        Flag("acol_grow", "grow the erased region by this many feature cells (0: the paper's, where the map >= delta)",
             int, range=Range(0, 64, "feature cells to grow ACoL's erased region by")),
        Flag("acol_pool", "avg3: the references' 3x3 average pool (stride 1) of the features before the heads; none",
             choices=("avg3", "none")),
        Flag("acol_init", "xavier: the references' xavier-uniform heads with zero biases; torch: PyTorch's default",
             choices=("xavier", "torch"))),
    check=_acol_check, model=_acol_model,
    predated={"acol_head": "linear", "acol_pool": "none", "acol_init": "torch"}))

CSE = register(Method(
    "CSE", "class-specific erasing judged by a frozen CAM classifier",
    lambda cfg, classes, teacher: CseObjective(teacher, cfg.erase_weight, cfg.erase_growth, cfg.area_weight,
                                               cfg.erase_norm),
    lambda cfg: f"CSE (area weight {cfg.area_weight:g}" + (f", {cfg.erase_norm} mask)" if cfg.erase_norm != "batch" else ")"),
    group="CSE mode (class-specific adversarial erasing)",
    flags=(
        Flag("oc_exp", "exp_id of a finished CAM run: the frozen ordinary classifier"),
        Flag("erase_weight", "weight of the erasing loss in epoch 1", float, range=Range(0, 1_000, "a loss weight")),
        Flag("erase_growth", "added to the erasing weight every epoch (OC-CSE: 0.3 + 0.05 epoch)", float,
             range=Range(0, 1_000, "added to a loss weight per epoch")),
        Flag("area_weight", "weight of the mask-area term that keeps erasing masks to the object", float,
             range=Range(0, 1_000, "a loss weight")),
        Flag("erase_norm", "the erasing mask: " + "; ".join(f"{k}: {v}" for k, v in ERASE_NORMS.items()),
             choices=tuple(ERASE_NORMS))),
    teacher="oc_exp", predated={"erase_norm": "feature"}, short_label=lambda cfg: "OC-CSE" if cfg.multi_label else "CSE"))
