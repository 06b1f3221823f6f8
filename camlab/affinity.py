"""AffinityNet's pixel affinities and random walk (Ahn and Kwak, CVPR 2018): the pairs within a radius, the affinity labels from low/high-α CRFs of the CAMs, the balanced affinity loss, and the random walk of CAMs through the affinity matrix.

Read from jiwoon-ahn/psa: ``tool/pyutils.py`` ``get_indices_of_pairs`` and ``voc12/data.py``
``ExtractAffinityLabelInRadius`` (the pairs and their labels), ``voc12/data.py``
``VOC12AffDataset.__getitem__`` (the confident labels from ``crf_la``/``crf_ha``, average-pooled to
the feature grid), ``infer_cls.py`` ``_crf_with_alpha`` (α 4 and 32), ``network/resnet38_aff.py``
(the affinity ``exp(−mean_c |f_i − f_j|)`` and its dense, symmetric matrix with ones on the
diagonal), ``train_aff.py`` (the loss) and ``infer_aff.py`` (β 8, logt 8, the background
``(1 − max cam)^α`` pooled with the maps, the transition matrix). Tensors and arrays in, no model.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from camlab.crf import crf_refine, crf_settings
from camlab.metrics import confusion_matrix, mean_iou
from camlab.utils import CamlabError

IGNORE = 255  # psa's ignore label: a position no CRF is confident about
PSA_RADIUS = 5  # pairs closer than 5 positions of the feature map (1/8 of the image)
PSA_LOW_ALPHA, PSA_HIGH_ALPHA = 4, 32  # infer_cls.py: crf_la (confident foreground), crf_ha (confident background)
PSA_BETA, PSA_LOGT = 8, 8  # infer_aff.py: affinity^β, the transition matrix applied 2^logt times
# "psa": get_indices_of_pairs as it is (a pair's first end is never within radius - 1 of the left,
# right or bottom edge, so no pair starts there); "full": every pair within the radius whose two
# ends lie in the map (camlab's variant, for maps too small for psa's crop)
PAIR_FORMS = ("psa", "full")
# The random walk's settings tried on training masks: β around psa's 8, logt up to psa's 8, and
# the background power α of camlab.crf.CRF_ALPHA_GRID (psa's infer_aff default 16 among them)
BETA_GRID: tuple[float, ...] = (2, 4, 8, 16)
LOGT_GRID: tuple[int, ...] = (2, 4, 6, 8)


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """psa's ``search_dist``: (0, x) for 0 < x < r, then (y, x) for 0 < y < r and |x| < r with
    x² + y² < r², in that order; each unordered pair of positions closer than r appears once."""
    if radius < 2:
        raise CamlabError(f"the affinity radius must be at least 2 (a pair of neighbours), got {radius}")
    offsets = [(0, x) for x in range(1, radius)]
    offsets += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius]
    return offsets


def pair_indices(height: int, width: int, radius: int = PSA_RADIUS, form: str = "psa") -> tuple[np.ndarray, np.ndarray]:
    """(first ends, second ends) of every pair, int64 flat indices into an ``height``×``width``
    map, offset by offset (:func:`pair_offsets`), each offset's pairs in raster order of the
    first end. ``psa``: the first ends are psa's crop ``[:-(r-1), (r-1):-(r-1)]`` for every
    offset (``get_indices_of_pairs``); ``full``: every position whose partner lies in the map."""
    if form not in PAIR_FORMS:
        raise CamlabError(f"unknown pair form {form!r}; choose one of {', '.join(PAIR_FORMS)}")
    offsets, floor = pair_offsets(radius), radius - 1
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    if form == "psa":
        if height <= floor or width <= 2 * floor:
            raise CamlabError(f"psa's pairs need a feature map at least {floor + 1} high and {2 * floor + 1} wide at "
                              f"radius {radius}, got {height}×{width}: a larger --img_size, a smaller --aff_radius, "
                              f"or --aff_pairs full")
        src = grid[:height - floor, floor:width - floor].ravel()
        dst = [grid[dy:dy + height - floor, floor + dx:floor + dx + width - 2 * floor].ravel() for dy, dx in offsets]
        return np.tile(src, len(offsets)), np.concatenate(dst)
    src, dst = [], []
    for dy, dx in offsets:
        ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        inside = (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        src.append(grid[ys[inside], xs[inside]])
        dst.append(grid[ys[inside] + dy, xs[inside] + dx])
    return np.concatenate(src), np.concatenate(dst)


def confident_labels(low: np.ndarray, high: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """psa's label map for affinity training from the CRF scores at low α (``crf_la``: the
    background strong, so a foreground there is confident) and high α (``crf_ha``: the background
    weak, so a background there is confident), both (1 + K')×h×w on the feature grid (background
    first, then the present classes ``classes``, default 0..K'-1): the low-α argmax where it is a
    class (label class + 1), 0 where the high-α argmax is background (it wins), 255 elsewhere and
    where no score reaches 1e-5 (psa's padding)."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != high.shape or low.ndim != 3 or low.shape[0] < 2:
        raise CamlabError(f"confident_labels: two (1 + K)×h×w score maps of one shape, got {low.shape} and {high.shape}")
    ids = np.concatenate([[0], np.asarray(classes if classes is not None else range(low.shape[0] - 1)) + 1])
    label = ids[low.argmax(axis=0)].astype(np.int64)
    label[label == 0] = IGNORE
    label[high.argmax(axis=0) == 0] = 0
    label[np.maximum(low.max(axis=0), high.max(axis=0)) < 1e-5] = IGNORE
    return label


def pair_labels(label: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background-same, foreground-same, different) float32 indicators of each pair of a label
    map (``ExtractAffinityLabelInRadius``): both ends background; both the same class; both
    confident (not 255) and different. A pair with an ignored end is in none of the three."""
    flat = np.asarray(label).ravel()
    a, b = flat[src], flat[dst]
    valid = (a != IGNORE) & (b != IGNORE)
    same = a == b
    return ((same & (a == 0)).astype(np.float32), (same & (a != 0) & valid).astype(np.float32),
            (~same & valid).astype(np.float32))


def feature_affinities(features: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """N×C×h×w features -> N×P affinities ``exp(−mean_c |f_src − f_dst|)`` (psa's
    ``resnet38_aff.py``: the L1 distance divided by the channel count, i.e. the mean over channels)."""
    flat = features.flatten(2)
    return torch.exp(-(flat[:, :, src] - flat[:, :, dst]).abs().mean(dim=1))


def affinity_loss(aff: torch.Tensor, bg: torch.Tensor, fg: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """psa's ``train_aff.py`` loss over a batch: ``bg/4 + fg/4 + neg/2`` with
    ``bg = Σ −b·log(a + 1e-5) / (Σ b + 1e-5)``, ``fg`` alike, ``neg = Σ −n·log(1 + 1e-5 − a) /
    (Σ n + 1e-5)``, each sum over every pair of every image. -> (loss, the three terms)."""
    terms = {"bg": (-bg * torch.log(aff + 1e-5)).sum() / (bg.sum() + 1e-5),
             "fg": (-fg * torch.log(aff + 1e-5)).sum() / (fg.sum() + 1e-5),
             "neg": (-neg * torch.log(1 + 1e-5 - aff)).sum() / (neg.sum() + 1e-5)}
    return terms["bg"] / 4 + terms["fg"] / 4 + terms["neg"] / 2, terms


def affinity_matrix(aff: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, size: int) -> torch.Tensor:
    """The dense ``size``×``size`` affinity matrix of one image (psa's ``to_dense``): each pair's
    affinity at (src, dst) and (dst, src), ones on the diagonal, zeros beyond the radius."""
    mat = torch.zeros(size, size, dtype=aff.dtype, device=aff.device)
    mat[src, dst] = aff
    mat[dst, src] = aff
    mat.fill_diagonal_(1.0)
    return mat


def transition_matrix(aff_mat: torch.Tensor, beta: float) -> torch.Tensor:
    """``T = A^β / (1ᵀ A^β)`` (psa: each column divided by its sum). The walk multiplies the
    maps as row vectors, ``v T``; with A symmetric that is ``D⁻¹ A^β`` applied to the column
    vector: each position takes the affinity-weighted mean of its neighbours' scores."""
    powered = aff_mat ** beta
    return powered / powered.sum(dim=0, keepdim=True)


def walk_powers(trans: torch.Tensor, logts: Sequence[int]) -> dict[int, torch.Tensor]:
    """``T^(2^t)`` for each t of ``logts`` (psa: ``trans_mat`` squared logt times)."""
    out, power = {}, trans
    for step in range(max(logts) + 1):
        if step in logts:
            out[step] = power
        power = power @ power
    return out


def random_walk(scores: torch.Tensor, trans_power: torch.Tensor) -> torch.Tensor:
    """C×h×w scores (background first) walked: each channel, as a row vector, times ``T^(2^t)``."""
    c, h, w = scores.shape
    return (scores.reshape(c, h * w).to(trans_power.dtype) @ trans_power).reshape(c, h, w)


@functools.lru_cache(maxsize=32)
def _pool_matrix(size: int, out: int) -> np.ndarray:
    """out×size: row i averages ``[floor(i·size/out), ceil((i+1)·size/out))``, torch's
    ``adaptive_avg_pool2d`` along one axis (psa's 8×8 block mean where 8 divides the size)."""
    mat = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


@functools.lru_cache(maxsize=32)
def _upsample_matrix(out: int, size: int) -> np.ndarray:
    """out×size: linear interpolation from ``size`` samples to ``out`` (``align_corners=False``);
    bilinear upsampling is this along each axis."""
    return F.interpolate(torch.eye(size)[None], size=out, mode="linear", align_corners=False)[0].T.numpy()


def pool_scores(scores: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """C×H×W -> C×h×w, ``adaptive_avg_pool2d`` to the feature ``grid`` (as two matrix products)."""
    ph, pw = _pool_matrix(scores.shape[1], grid[0]), _pool_matrix(scores.shape[2], grid[1])
    return np.einsum("hH,cHW,wW->chw", ph, np.asarray(scores, np.float32), pw, optimize=True)


def walk_scores(maps: np.ndarray, classes: np.ndarray, alpha: float, grid: tuple[int, int]) -> torch.Tensor:
    """psa's ``infer_aff.py`` input: the present classes' maps (K×H×W in [0, 1]) under the
    background ``(1 − max_c cam)^α`` at the image's resolution, average-pooled to the feature
    ``grid`` (psa: ``avg_pool2d(8, 8)``; the same where 8 divides the size) -> (1 + K')×h×w."""
    here = np.asarray(maps, np.float32)[classes]
    background = (1 - here.max(axis=0, initial=0)) ** alpha
    return torch.from_numpy(pool_scores(np.concatenate([background[None], here]), grid))


def upsample_scores(walked: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Walked scores back to the image (bilinear, ``align_corners=False``, as psa's ``Upsample``)
    -> float32 C×H×W."""
    uh, uw = _upsample_matrix(size[0], walked.shape[1]), _upsample_matrix(size[1], walked.shape[2])
    return np.einsum("Hh,chw,Ww->cHW", uh, walked.float().numpy(), uw, optimize=True)


def walk_labels(maps: np.ndarray, present: np.ndarray, powers: Sequence[torch.Tensor], alpha: float,
                grid: tuple[int, int], pooled: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Label maps (int64 N×H×W, 0 background, k + 1 class k): per image the argmax of the walked
    background and present classes' maps (:func:`walk_scores`, :func:`random_walk` with that
    image's ``T^(2^t)``, :func:`upsample_scores`). ``pooled``: per image (its pooled class maps,
    the max of its maps at full resolution), which :func:`choose_walk` computes once."""
    out = np.zeros((len(maps), *maps.shape[2:]), np.int64)
    for i, (image_maps, here, power) in enumerate(zip(maps, present, powers)):
        classes = np.flatnonzero(here)
        if pooled is None:
            scores = walk_scores(image_maps, classes, alpha, grid)
        else:
            classes_pooled, peak = pooled[i]
            scores = torch.from_numpy(np.concatenate([pool_scores(((1 - peak) ** alpha)[None], grid), classes_pooled]))
        walked = upsample_scores(random_walk(scores, power), maps.shape[2:])
        out[i] = np.concatenate([[0], classes + 1])[walked.argmax(axis=0)]
    return out


def choose_walk(maps: np.ndarray, present: np.ndarray, gts: np.ndarray, aff_mats: Sequence[torch.Tensor],
                grid: tuple[int, int], betas: Sequence[float] = BETA_GRID, logts: Sequence[int] = LOGT_GRID,
                alphas: Sequence[float] = (1, 2, 4, 8, 16, 32)) -> tuple[dict, float]:
    """({beta, logt, alpha}, mIoU) of the random walk with the best mIoU on these maps and label
    masks (give it TRAINING images); ties go to the first in the order β, logt, α of the grids."""
    num_classes = np.asarray(present).shape[1] + 1
    pooled = []
    for image_maps, here in zip(maps, present):
        here_maps = np.asarray(image_maps, np.float32)[np.flatnonzero(here)]
        pooled.append((pool_scores(here_maps, grid), here_maps.max(axis=0, initial=0)))
    best, best_miou = None, -1.0
    for beta in betas:
        powers = [walk_powers(transition_matrix(mat, beta), logts) for mat in aff_mats]
        for logt in logts:
            for alpha in alphas:
                labels = walk_labels(maps, present, [p[logt] for p in powers], alpha, grid, pooled)
                miou = mean_iou(confusion_matrix(labels, gts, num_classes))
                if miou > best_miou:
                    best, best_miou = {"beta": beta, "logt": logt, "alpha": alpha}, miou
    return best, best_miou


def walk_crf_labels(maps: np.ndarray, present: np.ndarray, powers: Sequence[torch.Tensor], alpha: float,
                    grid: tuple[int, int], images: np.ndarray, crf: str = "affinitynet") -> np.ndarray:
    """Random walk, then dense CRF: the walked scores upsampled (background first, present
    classes) are the CRF's unary scores (``camlab.crf.crf_refine``, settings of ``crf``), each
    pixel the argmax of the marginals."""
    out = np.zeros((len(maps), *maps.shape[2:]), np.int64)
    for i, (image_maps, here, power, image) in enumerate(zip(maps, present, powers, images)):
        classes = np.flatnonzero(here)
        walked = upsample_scores(random_walk(walk_scores(image_maps, classes, alpha, grid), power), maps.shape[2:])
        refined = crf_refine(image, walked, crf_settings(crf, image.shape[:2]))
        out[i] = np.concatenate([[0], classes + 1])[refined.argmax(axis=0)]
    return out


def crf_pair_labels(image: np.ndarray, maps: np.ndarray, classes: np.ndarray, grid: tuple[int, int],
                    low: float = PSA_LOW_ALPHA, high: float = PSA_HIGH_ALPHA, crf: str = "affinitynet") -> np.ndarray:
    """One training image's confident label map on the feature ``grid`` (int64 h×w, 0, class +
    1, or 255): the dense CRF (settings of ``crf``) of ``(1 − max_c cam)^α`` and the present
    classes' maps at α ``low`` and ``high`` (psa's ``_crf_with_alpha``), each CRF's marginals
    average-pooled to the grid (psa's ``AvgPool2d(8)`` on the score maps), then
    :func:`confident_labels`."""
    here = np.asarray(maps, np.float32)[classes]
    pooled = []
    for alpha in (low, high):
        scores = np.concatenate([((1 - here.max(axis=0, initial=0)) ** alpha)[None], here])
        pooled.append(pool_scores(crf_refine(image, scores, crf_settings(crf, image.shape[:2])), grid))
    return confident_labels(pooled[0], pooled[1], classes)
