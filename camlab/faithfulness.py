"""Faithfulness of a saliency map to the model that made it, per image: Average Drop and Increase in Confidence (Chattopadhay et al., WACV 2018, Grad-CAM++) and the deletion and insertion AUC (Petsiuk et al., BMVC 2018, RISE).

Every function works on normalised model inputs (``(pixels / 255 - mean) / std``, the
ImageNet mean and std, as ``dataloader.to_model_input`` makes them) and on maps N×H×W in
[0, 1] at any resolution (resized bilinearly to the inputs' when they differ). The model enters
as ``logits_fn(inputs M×3×H×W) -> logits M×K``; the score of a class is its softmax
probability, as in both papers. ``classes`` (int64 N) says whose probability is read: camlab
passes the labelled class, whose map the WSOL measures read.

Average Drop (%) = 100/N Σ max(0, Y_i − O_i) / Y_i and Increase in Confidence (%) =
100/N Σ [Y_i < O_i], Y_i the probability on the image, O_i on the explanation map image: the
image multiplied pointwise by the min-max normalised map IN PIXEL SPACE (the 0–1 image, before
the mean/std normalisation: what the paper calls the image, so that a 0 of the map is black).
torchcam 0.5.0's ``ClassificationMetric`` multiplies the normalised tensor instead (a 0 of the
map becomes the mean colour) and reports fractions, not percent; it is not used (the tests
hold both statements). That masking is camlab's named variant (``fill="mean"``: the image fades
to the mean colour where the map is 0), reported beside the paper's, in percent: on a dataset
where a black image is read as one class (the embedded benchmark's black arrow), the paper's
Average Drop and Increase in Confidence measure that class's share, not the maps.

Deletion and insertion (RISE's ``evaluation.CausalMetric``): pixels (all three channels of one
position) ordered by saliency, highest first, ties in raster order (a stable sort; RISE's
``np.flip(np.argsort(...))`` leaves ties to quicksort's order); ``step`` pixels change per step,
``n = ceil(HW / step)`` steps, ``n + 1`` scores. Deletion starts from the image and puts the
substrate in; insertion starts from the substrate and puts the image back. RISE's step is 224
pixels at 224² (224 steps); camlab's default is ``FAITH_STEPS`` equal steps of
``ceil(HW / steps)`` pixels (the cost: every step is a forward pass of every image). The AUC
is RISE's ``auc``: (Σ scores − scores[0]/2 − scores[-1]/2) / (len − 1), the trapezoid over
[0, 1] at equal spacing. The substrates (``SUBSTRATES``) are RISE's by default: deletion
``mean`` (``torch.zeros_like`` of the normalised input, which is the ImageNet mean colour),
insertion ``blur`` (its Gaussian blur of the normalised input, kernel 11, sigma 5, zero padded);
``black`` (the 0 pixel image) is a named variant.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from camlab.utils import IMAGENET_MEAN, IMAGENET_STD, CamlabError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

FAITH_STEPS = 16  # deletion / insertion: equal steps over the image's pixels (RISE: 224 at 224²)
FAITH_BATCH = 64  # perturbed inputs per forward pass
BLUR_SIZE, BLUR_SIGMA = 11, 5.0  # RISE's insertion substrate (Evaluation.ipynb: klen 11, ksig 5)
MODES = ("deletion", "insertion")
FILLS = ("black", "mean")  # the explanation map image where the map is 0: the paper's black, camlab's mean colour


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's mean and std, 1×3×1×1 in ``like``'s dtype and device."""
    return (torch.tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(1, 3, 1, 1))


def gaussian_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """float64 size×size: RISE's ``gkern``, ``scipy.ndimage.gaussian_filter`` (truncate 4,
    mode ``reflect``) of a unit impulse at the centre; separable, so the outer product of the 1-D
    filter of a 1-D impulse. The reflection folds the Gaussian's tails (radius 4σ, wider than the
    kernel) back in, so it sums to 1 but is flatter than a truncated Gaussian."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    line = np.zeros(size)
    for x in range(size):
        idx = (x + offsets) % (2 * size)  # half-sample reflection: period 2·size, mirrored above size
        idx = np.where(idx >= size, 2 * size - 1 - idx, idx)
        line[x] = weights[idx == size // 2].sum()
    return np.outer(line, line)


def _mean_substrate(inputs: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(inputs)


def _black_substrate(inputs: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(inputs)
    return (-mean / std).expand_as(inputs).clone()


def _blur_substrate(inputs: torch.Tensor) -> torch.Tensor:
    kernel = torch.from_numpy(gaussian_kernel()).to(inputs).expand(inputs.shape[1], 1, BLUR_SIZE, BLUR_SIZE)
    return F.conv2d(inputs, kernel, padding=BLUR_SIZE // 2, groups=inputs.shape[1])


# name -> substrate of normalised inputs N×3×H×W (the same shape, normalised)
SUBSTRATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": _mean_substrate, "blur": _blur_substrate, "black": _black_substrate}
DEFAULT_SUBSTRATE = {"deletion": "mean", "insertion": "blur"}  # RISE's


def _check(inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor) -> None:
    if inputs.ndim != 4 or maps.ndim != 3 or len(maps) != len(inputs) or classes.shape != (len(inputs),):
        raise CamlabError(f"faithfulness: expected inputs N×C×H×W, maps N×h×w and classes N, got "
                          f"{tuple(inputs.shape)}, {tuple(maps.shape)} and {tuple(classes.shape)}")


def fitted_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps N×h×w at ``size`` (bilinear, when they differ), each min-max normalised to [0, 1]
    (a constant map becomes all zeros): Chattopadhay's upsampled, normalised map."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low, high = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    return torch.where(high > low, (maps - low) / (high - low).clamp_min(1e-12), torch.zeros_like(maps))


def explanation_inputs(inputs: torch.Tensor, maps: torch.Tensor, fill: str = "black") -> torch.Tensor:
    """The normalised model input of Chattopadhay's explanation map image: the 0–1 pixel image
    (``inputs · std + mean``) times the map (:func:`fitted_maps`), normalised again, so that
    the image is black where the map is 0 (``fill`` "black", the paper's). ``fill`` "mean":
    camlab's variant, the normalised tensor times the map (torchcam's masking), so that the
    image fades to the mean colour where the map is 0 (``FILLS``)."""
    if fill not in FILLS:
        raise CamlabError(f"explanation map fill {fill!r}: choose from {', '.join(FILLS)}")
    fitted = fitted_maps(maps, tuple(inputs.shape[-2:])).unsqueeze(1).to(inputs.dtype)
    if fill == "mean":
        return inputs * fitted
    mean, std = _stats(inputs)
    pixels = inputs * std + mean
    return (pixels * fitted - mean) / std


def class_probability(logits_fn: LogitsFn, inputs: torch.Tensor, classes: torch.Tensor,
                      batch: int = FAITH_BATCH) -> torch.Tensor:
    """float64 M: the softmax probability of ``classes[i]`` on ``inputs[i]``, ``batch`` inputs
    per forward pass, under ``inference_mode``."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            probs = logits_fn(inputs[start:start + batch]).double().softmax(dim=1)
            out.append(probs.gather(1, classes[start:start + batch].view(-1, 1).to(probs.device))[:, 0])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def confidences(logits_fn: LogitsFn, inputs: torch.Tensor, maps: torch.Tensor,
                classes: torch.Tensor, batch: int = FAITH_BATCH, fill: str = "black",
                y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(Y, O)`` float64 N each: the probability of ``classes`` on the image (``y`` when
    known) and on its explanation map image (:func:`explanation_inputs` with ``fill``)."""
    _check(inputs, maps, classes)
    o = class_probability(logits_fn, explanation_inputs(inputs, maps, fill), classes, batch).cpu().numpy()
    if y is None:
        y = class_probability(logits_fn, inputs, classes, batch).cpu().numpy()
    return y, o


def average_drop(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image, percent: 100 · max(0, Y − O) / Y; its mean is Average Drop (%) (lower: the
    map keeps more of what the model uses). Y = 0 (a probability that underflowed) drops 0."""
    y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
    drop = np.maximum(0.0, y - o)
    return 100.0 * np.divide(drop, y, out=np.zeros_like(drop), where=y > 0)


def increase_in_confidence(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Per image, percent: 100 where O > Y, else 0; its mean is Increase in Confidence (%)."""
    return 100.0 * (np.asarray(o, np.float64) > np.asarray(y, np.float64))


def salient_order(maps: torch.Tensor) -> torch.Tensor:
    """int64 N×HW: each map's pixel indices (raster order) from the highest value down; ties in
    raster order (a stable sort)."""
    return torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices


def step_counts(n_pixels: int, steps: int = FAITH_STEPS) -> list[int]:
    """How many pixels have been changed at each of the ``n + 1`` scores: RISE's
    ``step = ceil(HW / steps)`` pixels per step, ``n = ceil(HW / step)`` steps, the last one
    capped at HW."""
    if steps < 1 or n_pixels < 1:
        raise CamlabError(f"--faith_steps must be at least 1 (and the image non-empty), got {steps}")
    step = math.ceil(n_pixels / steps)
    return [min(k * step, n_pixels) for k in range(math.ceil(n_pixels / step) + 1)]


def causal_curves(logits_fn: LogitsFn, inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                  mode: str, steps: int = FAITH_STEPS, substrate: str | None = None,
                  batch: int = FAITH_BATCH, image_scores: torch.Tensor | None = None) -> np.ndarray:
    """float64 N×(n+1): RISE's deletion or insertion scores (``mode``) of each image, the
    probability of ``classes`` after each step of :func:`step_counts`. The ``counts[k]`` most
    salient pixels (:func:`salient_order` of the maps at the inputs' size) hold the substrate
    (deletion) or the image (insertion); the others hold the other. ``image_scores`` (the
    probabilities on the unchanged images, when known) fill deletion's first and insertion's last
    score without a forward pass. Every other (image, step) input is scored ``batch`` at a time."""
    _check(inputs, maps, classes)
    if mode not in MODES:
        raise CamlabError(f"faithfulness mode {mode!r}: choose from {', '.join(MODES)}")
    substrate = substrate or DEFAULT_SUBSTRATE[mode]
    if substrate not in SUBSTRATES:
        raise CamlabError(f"faithfulness substrate {substrate!r}: choose from {', '.join(SUBSTRATES)}")
    n, channels, height, width = inputs.shape
    counts = step_counts(height * width, steps)
    with torch.inference_mode():
        image, other = inputs.flatten(2), SUBSTRATES[substrate](inputs).flatten(2)
        start, finish = (image, other) if mode == "deletion" else (other, image)
        order = salient_order(fitted_maps(maps, (height, width)).to(inputs.device))
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(height * width, device=order.device)
                                                 .expand(n, -1).contiguous())
        known = 0 if mode == "deletion" else len(counts) - 1
        jobs = [(i, k) for i in range(n) for k in range(len(counts)) if image_scores is None or k != known]
        scores = torch.zeros(n, len(counts), dtype=torch.float64)
        if image_scores is not None:
            scores[:, known] = image_scores.double().cpu()
        for at in range(0, len(jobs), batch):
            chunk = torch.tensor(jobs[at:at + batch], device=inputs.device)
            who, point = chunk[:, 0], chunk[:, 1]
            changed = ranks[who] < torch.tensor(counts, device=inputs.device)[point].view(-1, 1)
            perturbed = torch.where(changed.unsqueeze(1), finish[who], start[who]).view(-1, channels, height, width)
            probs = logits_fn(perturbed).double().softmax(dim=1)
            scores[who.cpu(), point.cpu()] = probs.gather(1, classes.to(probs.device)[who].view(-1, 1))[:, 0].cpu()
    return scores.numpy()


def causal_auc(curves: np.ndarray) -> np.ndarray:
    """RISE's ``auc`` of each row of ``curves`` (N×(n+1), n ≥ 1): the trapezoid over [0, 1]
    at equal spacing, (Σ s − s[0]/2 − s[-1]/2) / n."""
    curves = np.atleast_2d(np.asarray(curves, np.float64))
    if curves.shape[1] < 2:
        raise CamlabError(f"a deletion/insertion curve needs at least 2 scores, got {curves.shape[1]}")
    return (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / (curves.shape[1] - 1)


def faithfulness(logits_fn: LogitsFn, inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor,
                 steps: int = FAITH_STEPS, batch: int = FAITH_BATCH) -> dict[str, np.ndarray]:
    """Every per-image measure of one batch, float64 N each: ``y`` and ``o`` (the probabilities
    of :func:`confidences`), ``drop`` (:func:`average_drop`, %), ``increase``
    (:func:`increase_in_confidence`, %), the same three of the mean-colour explanation image
    (``o_mean``, ``drop_mean``, ``increase_mean``: camlab's variant), ``deletion`` and
    ``insertion`` (:func:`causal_auc` of :func:`causal_curves` with the default substrates)."""
    y, o = confidences(logits_fn, inputs, maps, classes, batch)
    _, o_mean = confidences(logits_fn, inputs, maps, classes, batch, fill="mean", y=y)
    out = {"y": y, "o": o, "drop": average_drop(y, o), "increase": increase_in_confidence(y, o),
           "o_mean": o_mean, "drop_mean": average_drop(y, o_mean), "increase_mean": increase_in_confidence(y, o_mean)}
    for mode in MODES:
        out[mode] = causal_auc(causal_curves(logits_fn, inputs, maps, classes, mode, steps, batch=batch,
                                             image_scores=torch.from_numpy(y)))
    return out
