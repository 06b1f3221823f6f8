"""Exact WSOL box evaluation at a cost that does not grow with the number of CAM thresholds: every map's best box IoU at every threshold, as wsolevaluation's BoxEvaluator finds it, from one pass over its pixels.

``camlab.boxes.max_box_acc`` runs it for the wsolevaluation protocol (and keeps the per-threshold
cv2 path as ``evaluator="reference"``).

What it computes is exactly what clovaai/wsolevaluation's ``BoxEvaluator`` (evaluation.py)
computes, and what the reference path (``camlab.boxes.max_box_acc(..., evaluator="reference")``) computes by running
``cv2.threshold`` and ``cv2.findContours`` once per map and threshold: every per-threshold best
IoU is the same float64, so every MaxBoxAcc is the same number.

The rules (wsolevaluation):

* a map in [0, 1] is quantised, ``scores = (cam * 255).astype(np.uint8)``;
* at CAM threshold τ a pixel is kept when ``scores > int(τ · scores.max())``;
* the boxes are those of ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``: each contour's
  ``boundingRect`` (x, y, w, h) gives (x, y, min(x + w, W - 1), min(y + h, H - 1)); no contour
  gives the single box (0, 0, 0, 0). With ``multi_contour`` every contour's box counts (the
  borders of holes too), else only the contour of largest ``cv2.contourArea``, the first such
  in findContours' order on a tie;
* box IoUs count areas as (x1 - x0 + 1)(y1 - y0 + 1); per image and τ the best IoU over
  (predicted, ground-truth) pairs; MaxBoxAcc(δ) = max over τ of the share of images whose
  best IoU is at least δ; MaxBoxAccV2 = their mean over δ ∈ (0.3, 0.5, 0.7).

How it is fast
--------------
``int(τ · max)`` takes at most 256 values, so the thresholds collapse to distinct integer
*levels* L and only the kept sets ``scores > L`` matter. Those sets are nested: as L falls,
components of the kept set only grow and merge. One pass over the pixels gives the whole
history at once:

1. every pixel points to the greatest of its closed 8-neighbourhood in the order (value,
   largest neighbour value, raster index); pointer jumping takes each pixel to the root of its
   chain. A pixel is kept at every level its chain's pixels are (the chain only climbs), so a
   *basin* (the pixels of one root) lies in one component at every level where any of its
   pixels is kept;
2. two basins join at the levels below the largest ``min(s_p, s_q)`` over 8-adjacent pixels
   p, q between them. Basins that join at their own peak value (the many roots a quantised
   plateau leaves) are folded into their neighbour first, vectorised; the rest - one per
   regional maximum - are merged in decreasing order (Kruskal) into the component tree;
3. per basin and level the bounding box comes from the largest value of the basin in each row
   and column (a component's box is its outer contour's boundingRect);
4. holes are counted per level with the Euler number, χ = V − E₄ − E_diag + T − F (pixels,
   4- and diagonal pairs, triangles and full 2×2 squares), which for 8-connected foreground is
   components − holes. Where a needed level has a hole, the same tree is built for the
   background (4-connected, from 255 − s): its components that do not reach the image border
   are the holes, and a hole's contour (the inner border) has the hole's box grown by one;
5. ``cv2.contourArea`` of an outer contour, the polygon through the centres of its boundary
   pixels, is (2×2 windows wholly inside) + ½ (windows with three pixels inside) of the
   component with its holes filled; the hole-filled kept sets are those of one map, o_p =
   max(s_p, the level at which p's background component reaches the border), whose tree gives
   the areas. Parents precede children in findContours' list and enclose them, so the largest
   contour is a top-level one; those are listed in reverse raster order of their first pixels,
   so of equal areas the one starting on the lowest row wins, and a tie on one row is left to
   cv2 for that level.

Every one of these facts was checked against cv2 on thousands of random binary images, and the
whole evaluator against the per-threshold path (tests/test_boxeval.py). A map with more than
:data:`MAX_BASINS` regional maxima (noise) is evaluated level by level with cv2, still once per
distinct level rather than once per threshold.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

from camlab.metrics import check_unit_range
from camlab.utils import CamlabError

MAX_BASINS = 254  # more regional maxima than this: the map is evaluated with cv2, level by level
_NLEV = 256  # levels L = 0 .. 255 of uint8 scores (a level at or above the max keeps nothing)


# ------------------------------------------------------------------------- input checks
def _check_maps(cams: np.ndarray, what: str) -> np.ndarray:
    """Maps as given (bool as float32), refusing NaN, infinities and values outside [0, 1]."""
    return check_unit_range(cams, f"{what}: the CAMs")


def _gt_array(boxes: np.ndarray | Sequence) -> np.ndarray:
    """Ground-truth boxes as float64 G×4, fractions truncated, with the checks and messages of
    ``camlab.boxes._as_boxes`` and ``_box_ious``."""
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise CamlabError("a box must be 4 numbers (x0, y0, x1, y1)") from None
    if array.size and (array.ndim == 0 or array.shape[-1] != 4):
        raise CamlabError(f"a box must be 4 numbers (x0, y0, x1, y1), got an array of shape {array.shape}")
    if not (np.abs(array) <= 2 ** 31).all():
        raise CamlabError("box coordinates must be finite and within ±2**31")
    array = np.trunc(array).reshape(-1, 4)
    if (array[:, 2:] < array[:, :2]).any():
        raise CamlabError("a box needs x0 <= x1 and y0 <= y1 (inclusive x0, y0, x1, y1)")
    return array


def _levels(thresholds: np.ndarray, smax: np.uint8) -> np.ndarray:
    """``int(τ · smax)`` of every threshold (the same float products as a per-τ loop), as int64
    clipped to [-1, 256]: below 0 every pixel is kept, from the max on none."""
    products = np.asarray(thresholds) * smax
    if products.size and not np.isfinite(products).all():
        raise CamlabError("CAM thresholds must be finite numbers")
    return np.clip(np.trunc(products), -1, _NLEV).astype(np.int64).reshape(-1)


# ------------------------------------------------------------------ the cv2 path, per level
def _cv2_boxes(scores: np.ndarray, level: int, multi_contour: bool) -> np.ndarray:
    """wsolevaluation's boxes of one level: findContours on ``scores > level``."""
    _, binary = cv2.threshold(scores, int(level), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return np.zeros((1, 4), np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64).reshape(-1, 4)
    ends = np.minimum(rects[:, :2] + rects[:, 2:], [scores.shape[1] - 1, scores.shape[0] - 1])
    return np.concatenate([rects[:, :2], ends], axis=1)


# -------------------------------------------------------------------- the fast path, per map
_NONE = 255  # the uint8 label of pixels in no basin (MAX_BASINS <= 254)
_RAW_BASINS = 8 * MAX_BASINS  # more roots than this before folding plateaus: noise, left to cv2 at once
_MAX_PIXELS = 1 << 22  # float32 histogram counts (4 per pixel at most) stay exact below 2**24
_3X3 = np.ones((3, 3), np.uint8)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _hist(values: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
    """Counts of the uint8 values 0..255 of a 2-D array (float32 256×1, exact below 2**24),
    added to ``into`` when given."""
    if into is None:
        return cv2.calcHist([values], [0], None, [_NLEV], [0, _NLEV])
    return cv2.calcHist([values], [0], None, [_NLEV], [0, _NLEV], into, True)


def _suffix(hist: np.ndarray) -> np.ndarray:
    """Σ_{v > L} hist[..., v] for L = 0 .. 255 (hist over v = 0 .. 255)."""
    out = np.zeros(hist.shape, hist.dtype)
    out[..., :-1] = np.cumsum(hist[..., :0:-1], axis=-1)[..., ::-1]
    return out


_ARANGE: dict[int, np.ndarray] = {}  # 0 .. n-1 as float64 and intp, per pixel count


def _aranges(n: int) -> tuple[np.ndarray, np.ndarray]:
    if n not in _ARANGE:
        if len(_ARANGE) > 8:
            _ARANGE.clear()
        _ARANGE[n] = (np.arange(n, dtype=np.float64), np.arange(n, dtype=np.intp))
    return _ARANGE[n]


def _jump(parent: np.ndarray) -> np.ndarray:
    """Pointer jumping to the roots of an acyclic parent array (intp); reuses ``parent``."""
    buffer = np.empty_like(parent)
    while True:
        np.take(parent, parent, out=buffer, mode="clip")  # "clip": unbuffered (all in range)
        if np.array_equal(buffer, parent):
            return parent
        parent, buffer = buffer, parent


def _basins(s: np.ndarray, lmin: int, kernel: np.ndarray = _3X3):
    """Steepest-ascent basins of the pixels above ``lmin``: (basin id per pixel, int32, -1 for
    the others; peak value per basin, int64). Each pixel points to the greatest pixel of its
    closed 8-neighbourhood (``kernel`` _CROSS: 4-neighbourhood) in the order (value, largest
    neighbour value, raster index); the second key sends the pixels of a plateau towards its
    higher rim, which leaves fewer roots. The keys are exact integers in float64 so that
    cv2.dilate finds the greatest."""
    h, w = s.shape
    n = h * w
    bits = max(1, int(n - 1).bit_length())
    idx_f, idx = _aranges(n)
    key = np.left_shift(s, 8, dtype=np.uint16)
    key |= cv2.dilate(s, kernel)
    key = key.astype(np.float64)
    key *= float(1 << bits)
    key += idx_f.reshape(h, w)
    best = cv2.dilate(key, kernel).reshape(-1)  # the border counts as -inf
    parent = best.astype(np.intp)
    parent &= (1 << bits) - 1
    active = (s > lmin).reshape(-1)
    np.copyto(parent, idx, where=~active)
    parent = _jump(parent)
    roots = np.flatnonzero(active & (parent == idx))
    rootid = np.full(n, -1, np.int32)
    rootid[roots] = np.arange(len(roots), dtype=np.int32)
    return rootid.take(parent), s.reshape(-1)[roots].astype(np.int64)


_DIRECTIONS = ((slice(None), slice(None, -1), slice(None), slice(1, None)),      # right
               (slice(None, -1), slice(None), slice(1, None), slice(None)),      # down
               (slice(None, -1), slice(None, -1), slice(1, None), slice(1, None)),  # down-right
               (slice(None, -1), slice(1, None), slice(1, None), slice(None, -1)))  # down-left


def _unique_edges(lo: np.ndarray, hi: np.ndarray, w: np.ndarray, k: int):
    """Edges (lo < hi, int64) reduced to one per pair, with the pair's largest weight."""
    if not len(lo):
        return lo, hi, w
    pair = lo * k + hi
    if k * k <= 1 << 17:  # few basins: a dense table
        table = np.zeros(k * k, np.int64)
        np.maximum.at(table, pair, w + 1)
        pair = np.flatnonzero(table)
        w = table[pair] - 1
        return pair // k, pair % k, w
    packed = np.unique(pair * (_NLEV + 1) + w)  # sorted: a pair's largest weight last
    pair = packed // (_NLEV + 1)
    last = np.flatnonzero(np.append(pair[1:] != pair[:-1], True))
    pair, w = pair[last], packed[last] % (_NLEV + 1)
    return pair // k, pair % k, w


def _fold(lo: np.ndarray, hi: np.ndarray, wt: np.ndarray, peak: np.ndarray):
    """Fold every basin that joins a greater one (by peak, then id) at its own peak value into
    it: such a basin is never a component of its own. -> (root per basin, edges between roots)."""
    k = len(peak)
    top = np.arange(k)
    while len(lo):
        pa, pb = peak.take(lo), peak.take(hi)
        lo_less = pa <= pb  # equal peaks: the smaller id (lo) is the lesser
        fold = wt == np.minimum(pa, pb)
        if not fold.any():
            break
        par = np.arange(k)
        par[np.where(lo_less, lo, hi)[fold]] = np.where(lo_less, hi, lo)[fold]
        par = _jump(par)
        top = par.take(top)
        lo, hi = par.take(lo), par.take(hi)
        keep = lo != hi
        lo, hi, wt = lo[keep], hi[keep], wt[keep]
        lo, hi, wt = _unique_edges(np.minimum(lo, hi), np.maximum(lo, hi), wt, k)
    return top, lo, hi, wt


def _components(lo: np.ndarray, hi: np.ndarray, wt: np.ndarray, k: int) -> np.ndarray:
    """Kruskal over the basin edges in decreasing weight: rep[L, b] is the component (a basin
    id) of basin b at level L, where edges of weight above L join."""
    uf = list(range(k))

    def find(x: int) -> int:
        while uf[x] != x:
            uf[x] = uf[uf[x]]
            x = uf[x]
        return x

    rep = np.empty((_NLEV, k), np.intp)
    label = np.arange(k)
    upper = _NLEV
    for e in np.argsort(-wt, kind="stable"):
        a, b = find(int(lo[e])), find(int(hi[e]))
        if a == b:
            continue
        we = int(wt[e])
        rep[we:upper] = label
        upper = we
        uf[b] = a
        label[label == b] = a
    rep[:upper] = label
    return rep


def _extents(basin: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """rows×k: the largest value of each basin in each row of the H×W maps (uint8 labels,
    _NONE for no basin; -1 where none), from the runs of equal label along the rows."""
    rows, cols = s.shape
    flat = basin.reshape(-1)
    start = np.empty(flat.size, bool)
    start[0] = True
    np.not_equal(flat[1:], flat[:-1], out=start[1:])
    start[::cols] = True
    start = np.flatnonzero(start)
    top = np.maximum.reduceat(s.reshape(-1), start)
    owner = flat.take(start)
    keep = owner != _NONE
    ext = np.full(k * rows, -1, np.int64)
    np.maximum.at(ext, start[keep] // cols * k + owner[keep], top[keep])
    return ext.reshape(rows, k)


def _first_above(ext: np.ndarray) -> np.ndarray:
    """ext: rows×k largest value per row -> 256×k first row with a value above L (rows where
    none): the number of leading rows whose running maximum is at most L."""
    k = ext.shape[1]
    prefix = ext.astype(np.int16)  # the running maximum down the rows, by doubling (a scan:
    step = 1                       # several times faster than np.maximum.accumulate)
    while step < len(prefix):
        prefix[step:] = np.maximum(prefix[step:], prefix[:-step])
        step *= 2
    keys = prefix.astype(np.intp)
    keys += 1
    keys *= k
    keys += np.arange(k)
    counts = np.bincount(keys.reshape(-1), minlength=(_NLEV + 1) * k).reshape(_NLEV + 1, k)
    return np.cumsum(counts, axis=0)[1:]


def _last_above(ext: np.ndarray) -> np.ndarray:
    """256×k last row with a value above L (-1 where none)."""
    return len(ext) - 1 - _first_above(ext[::-1])


class _Tree(NamedTuple):
    """The component tree of a uint8 map's kept sets {m > L}, L >= lmin, over basins."""
    lab: np.ndarray     # uint8 H×W basin label, _NONE outside every basin (m <= lmin)
    peak: np.ndarray    # int64 k: the basin's largest value (alive at L < peak)
    rep: np.ndarray     # intp 256×k: the component (a basin id) of basin b at level L
    alive: np.ndarray   # bool 256×k
    pairs: np.ndarray | None  # float32 256×1 histogram of the pair minima (8-connected trees)


def _tree(m: np.ndarray, lmin: int, eight: bool) -> _Tree | None:
    """The component tree of ``m`` (8- or 4-connected), or None past MAX_BASINS basins."""
    h, w = m.shape
    basin, peak = _basins(m, lmin, _3X3 if eight else _CROSS)
    k = len(peak)
    if k > _RAW_BASINS:
        return None
    b2 = basin.reshape(h, w)
    flat_m = m.reshape(-1)
    pairs = None
    lo_e, hi_e, w_e = [], [], []
    # per direction: (the view's width, the column of its first pixel a, the flat step to b)
    layout = ((w - 1, 0, 1), (w, 0, w), (w - 1, 0, w + 1), (w - 1, 1, w - 1))
    for (ya, xa, yb, xb), (width, shift, step) in zip(_DIRECTIONS[:4 if eight else 2], layout):
        if eight:
            pairs = _hist(np.minimum(m[ya, xa], m[yb, xb]), pairs)
        if width == 0 or h == 1 and step != 1:
            continue
        cross = np.flatnonzero(b2[ya, xa] != b2[yb, xb])  # positions in the view
        first = cross // width * w + cross % width + shift  # flat index of a
        a, b = basin.take(first), basin.take(first + step)
        weight = np.minimum(flat_m.take(first), flat_m.take(first + step))
        keep = weight > lmin  # both pixels above lmin (no pair with a pixel outside the basins)
        a, b = a[keep], b[keep]
        lo_e.append(np.minimum(a, b))
        hi_e.append(np.maximum(a, b))
        w_e.append(weight[keep])
    lo, hi, wt = _unique_edges(np.concatenate(lo_e).astype(np.int64), np.concatenate(hi_e).astype(np.int64),
                               np.concatenate(w_e).astype(np.int64), k)
    top, lo, hi, wt = _fold(lo, hi, wt, peak)
    roots = np.flatnonzero(np.bincount(top, minlength=k))
    kk = len(roots)
    if kk > MAX_BASINS:
        return None
    newid = np.full(k + 1, _NONE, np.uint8)  # index -1 (no basin) stays _NONE
    newid[roots] = np.arange(kk)
    lab = newid.take(np.append(top, -1)).take(basin).reshape(h, w)
    peak = peak.take(roots)
    newid = newid.astype(np.intp)
    rep = _components(newid.take(lo), newid.take(hi), wt, kk)
    return _Tree(lab, peak, rep, np.arange(_NLEV)[:, None] < peak[None, :], pairs)


class _Groups(NamedTuple):
    """Per component (level L, representative basin r), flattened as L * k + r."""
    g: np.ndarray       # group of each alive (level, basin)
    exists: np.ndarray  # bool 256×k
    x0: np.ndarray      # bounding box of the kept pixels (int64 k*256 each)
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray


def _groups(tree: _Tree, m: np.ndarray) -> _Groups:
    """Bounding boxes of every component at every level: per basin from the largest value of
    the basin in each row and column, then over the basins of each component."""
    h, w = m.shape
    kk = len(tree.peak)
    rowext = _extents(tree.lab, m, kk)
    colext = _extents(np.ascontiguousarray(tree.lab.T), np.ascontiguousarray(m.T), kk)
    alive = tree.alive
    size = kk * _NLEV
    g = (tree.rep + (np.arange(_NLEV) * kk)[:, None])[alive]
    x0 = np.full(size, w, np.int64)
    np.minimum.at(x0, g, _first_above(colext)[alive])
    y0 = np.full(size, h, np.int64)
    np.minimum.at(y0, g, _first_above(rowext)[alive])
    x1 = np.full(size, -1, np.int64)
    np.maximum.at(x1, g, _last_above(colext)[alive])
    y1 = np.full(size, -1, np.int64)
    np.maximum.at(y1, g, _last_above(rowext)[alive])
    exists = (np.bincount(g, minlength=size) > 0).reshape(_NLEV, kk)
    return _Groups(g, exists, x0, y0, x1, y1)


def _windows(m: np.ndarray):
    """The two smallest values a <= b of every 2×2 window ((H-1)×(W-1) each)."""
    p0, p1, p2, p3 = m[:-1, :-1], m[:-1, 1:], m[1:, :-1], m[1:, 1:]
    m1, m2 = np.minimum(p0, p1), np.minimum(p2, p3)
    return np.minimum(m1, m2), np.minimum(np.maximum(m1, m2), np.minimum(np.maximum(p0, p1), np.maximum(p2, p3)))


def _holes(m: np.ndarray, tree: _Tree, groups: _Groups, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """Holes per level (int64 256) of the 8-connected kept sets: components - χ, with the Euler
    number χ = V - E4 - Ediag + T - F (pixels, 4- and diagonal pairs, triangles and full 2×2
    squares of kept pixels); a window adds 2[L < a] + [L < b] to T - F."""
    plus = _hist(wb, _hist(m))
    euler = plus.astype(np.int64) - tree.pairs.astype(np.int64) + 2 * _hist(wa).astype(np.int64)
    return groups.exists.sum(axis=1) - _suffix(euler.reshape(-1))


def _component_boxes(groups: _Groups, cells: np.ndarray, h: int, w: int, pad: int = 0):
    """(boxes, levels) of the components marked in ``cells`` (bool 256×k): boundingRect's
    (x, y, x + w, y + h) clipped to (W - 1, H - 1); ``pad`` 1 grows a hole to its border."""
    flat = np.flatnonzero(cells.reshape(-1))
    boxes = np.stack([groups.x0[flat] - pad, groups.y0[flat] - pad, np.minimum(groups.x1[flat] + 1 + pad, w - 1),
                      np.minimum(groups.y1[flat] + 1 + pad, h - 1)], axis=1)
    return boxes, flat // cells.shape[1]


def _dual(s: np.ndarray, lmax: int):
    """The background's 4-connected component tree: components of {s <= L} = {255 - s > 254 - L}
    for L <= lmax, and per component and dual level M = 254 - L whether it reaches the image
    border (else it is a hole). -> (tree, groups, touches bool 256×k) or None."""
    t = 255 - s
    tree = _tree(t, 254 - lmax, False)
    if tree is None:
        return None
    groups = _groups(tree, t)
    kk = len(tree.peak)
    border = np.zeros(t.shape, bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    on = border & (tree.lab != _NONE)
    reach = np.full(kk, -1, np.int64)  # per basin the largest value on the border
    np.maximum.at(reach, tree.lab[on].astype(np.intp), t[on].astype(np.int64))
    far = np.full(_NLEV * kk, -1, np.int64)
    np.maximum.at(far, groups.g, np.broadcast_to(reach, tree.alive.shape)[tree.alive])
    touches = far.reshape(_NLEV, kk) > np.arange(_NLEV)[:, None]
    return tree, groups, touches


def _filled(s: np.ndarray, lmax: int, dual) -> np.ndarray:
    """The map whose kept sets are those of ``s`` with every hole filled, at levels <= lmax:
    a background pixel p stays kept until the level o_p = max(s_p, the first level at which
    its background component reaches the border), capped at lmax + 1."""
    tree, groups, touches = dual
    kk = len(tree.peak)
    rep_touch = touches.reshape(-1)[tree.rep + (np.arange(_NLEV) * kk)[:, None]] & tree.alive  # M × basin
    # the first level L = 254 - M at which the basin's component reaches the border
    top_m = np.where(rep_touch.any(axis=0), _NLEV - 1 - np.argmax(rep_touch[::-1], axis=0), -1)
    first = np.where(top_m >= 0, np.minimum(254 - top_m, lmax + 1), lmax + 1)
    inside = tree.lab != _NONE
    o = s.copy()
    level = first.astype(np.uint8)[tree.lab[inside].astype(np.intp)]
    o[inside] = np.maximum(s[inside], level)
    return o


def _largest(m: np.ndarray, tree: _Tree, groups: _Groups, wa: np.ndarray, wb: np.ndarray,
             lmin: int, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of the components in ``cells`` (bool 256×k; hole-free levels), per level the one of
    largest contourArea, as findContours and ``max(contours, key=cv2.contourArea)`` choose it
    -> (winner cells, bool 256: the level is decided). The area of a hole-free component's
    contour, the polygon through its boundary pixels' centres, is the number of its 2×2 windows
    plus half the number with three pixels in it: per window [L < a] + [L < b] half-units."""
    kk = len(tree.peak)
    if kk == 1:
        return cells, np.ones(_NLEV, bool)
    # A window with three pixels kept lies in the component of any of them; its top-left pixel
    # is one unless it is the smallest, and then the top-right one is.
    bw = np.where(m[:-1, :-1] >= wb, tree.lab[:-1, :-1], tree.lab[:-1, 1:])
    mask = (wb > lmin).view(np.uint8)
    shape, ranges = [kk, _NLEV], [0, kk, 0, _NLEV]
    halves = (cv2.calcHist([bw, wa], [0, 1], mask, shape, ranges)
              + cv2.calcHist([bw, wb], [0, 1], mask, shape, ranges)).T.astype(np.int64)  # value × basin
    above = np.zeros_like(halves)  # Σ_{v > L}, level × basin
    above[:-1] = np.cumsum(halves[:0:-1], axis=0)[::-1]
    area = np.zeros(_NLEV * kk, np.int64)
    np.add.at(area, groups.g, above[tree.alive])
    area = np.where(cells.reshape(-1), area, -1).reshape(_NLEV, kk)
    tied = area == area.max(axis=1)[:, None]
    # findContours lists outer contours in reverse raster order of their first pixels: of equal
    # areas the one starting on the lowest row comes first; two on one row are left to cv2.
    start = np.where(tied, groups.y0.reshape(_NLEV, kk), -1)
    winners = tied & (start == start.max(axis=1)[:, None])
    return winners, winners.sum(axis=1) <= 1


def _fast_table(s: np.ndarray, levels: np.ndarray, multi_contour: bool):
    """Boxes of one uint8 map at ``levels`` (sorted, distinct, each in [0, max - 1]).

    Returns (boxes M×4 int64, owner M: the position in ``levels`` each box belongs to,
    positions left to cv2), or None when the map has too many regional maxima."""
    h, w = s.shape
    if h * w >= _MAX_PIXELS:
        return None
    lmin, lmax = int(levels[0]), int(levels[-1])
    need = np.zeros(_NLEV, bool)
    need[levels] = True
    tree = _tree(s, lmin, True)
    if tree is None:
        return None
    groups = _groups(tree, s)
    wa, wb = _windows(s)
    holes = _holes(s, tree, groups, wa, wb)
    decided = need & (holes == 0)
    dual = _dual(s, lmax) if (need & (holes != 0)).any() else None
    if multi_contour:
        boxes, at = [], []
        if dual is not None:  # the holes' contours: their boundingRects grow the hole by 1
            dtree, dgroups, touches = dual
            dneed = np.zeros(_NLEV, bool)
            dneed[:_NLEV - 1] = need[_NLEV - 2::-1]  # dual level M = 254 - L
            inner = dgroups.exists & ~touches & dneed[:, None]
            found = np.zeros(_NLEV, np.int64)
            found[:_NLEV - 1] = inner.sum(axis=1)[_NLEV - 2::-1]  # holes per L
            decided |= need & (holes != 0) & (holes == found)  # the two counts agree (always)
            hb, hm = _component_boxes(dgroups, inner, h, w, pad=1)
            boxes.append(hb)
            at.append(_NLEV - 2 - hm)
        cb, cl = _component_boxes(groups, groups.exists & need[:, None], h, w)
        boxes.append(cb)
        at.append(cl)
        boxes, at = np.concatenate(boxes), np.concatenate(at)
        keep = decided[at]
        boxes, at = boxes[keep], at[keep]
    else:
        m, mtree, mgroups = s, tree, groups
        if dual is not None:  # the largest contour is an outer one of the holes-filled map
            o = _filled(s, lmax, dual)
            otree = _tree(o, lmin, True)
            if otree is not None:
                m, mtree, mgroups = o, otree, _groups(otree, o)
                wa, wb = _windows(o)
                decided = need & (_holes(o, otree, mgroups, wa, wb) == 0)
        winners, unique = _largest(m, mtree, mgroups, wa, wb, lmin, mgroups.exists & decided[:, None])
        decided &= unique
        boxes, at = _component_boxes(mgroups, winners & decided[:, None], h, w)
    return boxes, np.searchsorted(levels, at), np.flatnonzero(~decided[levels])


def _table(scores: np.ndarray, levels: np.ndarray, multi_contour: bool):
    """Boxes of a uint8 map at each of ``levels`` (sorted, distinct ints in [-1, 256]):
    (boxes M×4 int64, owner M positions into ``levels``)."""
    smax = int(scores.max())
    boxes, owner = [], []
    empty = np.flatnonzero(levels >= smax)
    boxes.append(np.zeros((len(empty), 4), np.int64))
    owner.append(empty)
    inside = np.flatnonzero((levels >= 0) & (levels < smax))
    rest = np.flatnonzero(levels < 0)
    if len(inside):
        table = _fast_table(scores, levels[inside], multi_contour)
        if table is None:
            rest = np.concatenate([rest, inside])
        else:
            boxes.append(table[0])
            owner.append(inside[table[1]])
            rest = np.concatenate([rest, inside[table[2]]])
    for i in rest:
        b = _cv2_boxes(scores, int(levels[i]), multi_contour)
        boxes.append(b)
        owner.append(np.full(len(b), i))
    return np.concatenate(boxes), np.concatenate(owner).astype(np.int64)


def _best_ious(boxes: np.ndarray, owner: np.ndarray, n: int, gt: np.ndarray) -> np.ndarray:
    """Per owner (0 .. n-1) the best IoU of its boxes with the ground-truth boxes, computed as
    ``camlab.boxes._box_ious`` does (float64, inclusive areas); 0.0 without ground truth."""
    if not len(gt):
        return np.zeros(n)
    a = boxes.astype(np.float64)[:, None, :]
    b = gt[None, :, :]
    sides = np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]) + 1
    inter = np.clip(sides, 0, None).prod(axis=-1)
    area_a = (a[..., 2:] - a[..., :2] + 1).prod(axis=-1)
    area_b = (b[..., 2:] - b[..., :2] + 1).prod(axis=-1)
    ious = (inter / (area_a + area_b - inter)).max(axis=1)
    best = np.full(n, -np.inf)
    np.maximum.at(best, owner, ious)
    return best


def _distinct(per_threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct levels (sorted) of ints in [-1, 256] and each one's position among them."""
    present = np.bincount(per_threshold + 1, minlength=_NLEV + 2) > 0
    return np.flatnonzero(present) - 1, (np.cumsum(present) - 1)[per_threshold + 1]


def _map_ious(scores: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Best IoU per threshold of one quantised map (uint8 H×W) with checked ground truth."""
    levels, where = _distinct(_levels(thresholds, scores.max()))
    boxes, owner = _table(scores, levels, multi_contour)
    return _best_ious(boxes, owner, len(levels), gt)[where]


def _quantised(cam: np.ndarray) -> np.ndarray:
    """wsolevaluation's uint8 scores of one checked H×W map."""
    cam = np.asarray(cam)
    cam = cam.astype(np.float32) if cam.dtype == np.bool_ else cam
    if cam.ndim != 2 or cam.size == 0:
        raise CamlabError(f"a CAM must be one non-empty H×W map, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise CamlabError("the CAM holds NaN or infinite values; min-max normalise it to [0, 1] "
                          "first (model.minmax)")
    return np.ascontiguousarray((cam * 255).astype(np.uint8))


# --------------------------------------------------------------------------- public API
def threshold_boxes_all(cam: np.ndarray, thresholds: np.ndarray, multi_contour: bool) -> list[np.ndarray]:
    """The wsolevaluation boxes (K×4 int64, in no particular order) of one map at each CAM
    threshold: the same set as ````camlab.boxes.threshold_boxes`` (the wsolevaluation
    protocol)`` gives, τ by τ."""
    scores = _quantised(cam)
    levels, where = _distinct(_levels(thresholds, scores.max()))
    boxes, owner = _table(scores, levels, multi_contour)
    order = np.argsort(owner, kind="stable")
    boxes, owner = boxes[order], owner[order]
    starts = np.searchsorted(owner, np.arange(len(levels) + 1))
    per_level = [boxes[starts[i]:starts[i + 1]] for i in range(len(levels))]
    return [per_level[i] for i in where]


def threshold_best_ious(cam: np.ndarray, gt_boxes, thresholds: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Best IoU of the map's boxes with its ground-truth boxes at each CAM threshold -> float64 T,
    exactly ``camlab.boxes' reference ``_threshold_ious`` under the
    wsolevaluation protocol``, at the cost of at most 256 distinct levels. 0.0 at every
    threshold when ``gt_boxes`` is empty."""
    gt = _gt_array(gt_boxes)
    return _map_ious(_quantised(cam), gt, thresholds, multi_contour)
