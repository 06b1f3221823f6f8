"""The embedded benchmark: the synthetic body-plus-part dataset camlab trains and scores on when no other data is given, and its generator.

It is the benchmark's definition, not a reader: ``dataloader.py`` reads what this writes (the handout's lab layout, with masks).

``python main.py`` generates it in ``data/synthetic`` on first use; ``generate_synthetic``
writes it anywhere, deterministically from its seed.
"""
from __future__ import annotations

import colorsys
import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from camlab import utils
from camlab.utils import CamlabError, encode_png

SPLITS = ("train", "test")  # the lab layout's splits; a split's index seeds its draws


# ------------------------------------------------------------------ the synthetic dataset
# Every object is a BODY (a striped ellipse) plus a small PART stuck on its rim. The part is the
# reliable class cue: its shape and its saturated colour are fixed per class. How much the body
# says about the class is a dial, BODY_EVIDENCE in [0, 1] (version 2): the body's stripe period
# and its light stripes' hue are each drawn, with probability ``body_evidence``, from the class's
# own band of the range, and otherwise from the whole range. Balanced over classes, the bands
# tile the range, so the body's look pooled over classes (its colours, contrast, stripe periods,
# hence its saliency) is the same at every setting: the dial moves evidence, nothing else. Every
# image draws the same random numbers at every setting, so an image differs between settings only
# inside its body. At 0 the body says nothing (version 1's "no evidence"); at 1 it names the class
# on its own, like a dog's body beside its head. Backgrounds and distractors are muted and random.
# A classifier learns the part first, and its CAM covers the part rather than the whole object:
# the failure that CAM refinements (SEG, ACoL, CSE) try to repair.
SYNTHETIC_VERSION = 2
SYNTHETIC_SIZE = 64
SYNTHETIC_TRAIN = 2000  # 4 epochs at 224 px train in ~8 min on a 2-core CPU (measured)
SYNTHETIC_TEST = 500
# The default dial: the default CAM run (python main.py --mode CAM: 224 px, 4 epochs) classifies
# body-only renderings at 0.536 at this setting (0.82 at 1); the benchmark asks for 0.4-0.7 (README).
BODY_EVIDENCE = 0.85
_PERIOD_RANGE = (2.8, 7.3)  # body stripe periods in px at 64 px: ten class bands of 0.45 px
_HUE_OFFSET = 0.05       # class c's hue band is [c/K, (c+1)/K) + offset (mod 1)
RENDERINGS = ("normal", "body", "part")  # what draw_sample paints: all, body only, part only
_NOISE_STD = 10.0        # grey levels of Gaussian pixel noise
_PART_AREA = 2.0         # every part shape has this area at radius 1 (so size is no cue)
_SHIFT = 4               # cv2 drawing with 4 fractional bits: sub-pixel shapes at 64×64


@dataclass(frozen=True)
class PartStyle:
    """How one class's part looks: a shape drawn in a (jittered) RGB colour."""

    colour: str
    rgb: tuple[int, int, int]
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour}-{self.shape}"


PART_STYLES = (
    PartStyle("red", (225, 30, 30), "triangle"),
    PartStyle("orange", (245, 140, 20), "square"),
    PartStyle("yellow", (240, 230, 40), "circle"),
    PartStyle("green", (40, 190, 40), "diamond"),
    PartStyle("cyan", (40, 220, 230), "star"),
    PartStyle("blue", (40, 70, 235), "plus"),
    PartStyle("purple", (140, 50, 220), "hexagon"),
    PartStyle("magenta", (235, 40, 200), "halfdisc"),
    PartStyle("white", (250, 250, 250), "bar"),
    PartStyle("black", (10, 10, 10), "arrow"),
)
SYNTHETIC_CLASSES = [style.name for style in PART_STYLES]


def _regular(n: int, phase: float = np.pi / 2) -> np.ndarray:
    """n×2 vertices (x, y) of a regular n-gon on the unit circle."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), -np.sin(angles)], axis=1)


def _equal_area(points: np.ndarray) -> np.ndarray:
    """``points`` scaled to area ``_PART_AREA`` and centred on their mean vertex."""
    points = points - points.mean(axis=0)
    return points * np.sqrt(_PART_AREA / cv2.contourArea(points.astype(np.float32)))


_HALF_ANGLES = np.linspace(0, np.pi, 17)
_SHAPES = {name: _equal_area(np.asarray(points, dtype=np.float64)) for name, points in {
    "triangle": _regular(3),
    "square": _regular(4, np.pi / 4),
    "circle": _regular(32),
    "diamond": _regular(4) * [0.6, 1.0],
    "star": _regular(10) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None],
    "plus": [(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
             (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)],
    "hexagon": _regular(6),
    "halfdisc": np.stack([np.cos(_HALF_ANGLES), -np.sin(_HALF_ANGLES)], axis=1),
    "bar": [(-1, -.4), (1, -.4), (1, .4), (-1, .4)],
    "arrow": [(0, -1), (.8, -.1), (.3, -.1), (.3, 1), (-.3, 1), (-.3, -.1), (-.8, -.1)],
}.items()}


@dataclass
class Sample:
    """One drawn synthetic image and its ground truth.

    image: uint8 H×W×3 RGB.  mask: bool H×W, the whole object (body ∪ part).
    part_mask: bool H×W, the discriminative part only (a subset of ``mask``).  label: the class.
    body: the body's drawn look (stripe period in px, light hue, and which of the two came from
    the class's band), for the tests and the diagnostics.
    """

    image: np.ndarray
    mask: np.ndarray
    part_mask: np.ndarray
    label: int
    body: "BodyLook | None" = None


@dataclass(frozen=True)
class BodyLook:
    period: float        # stripe period in px at SYNTHETIC_SIZE
    hue: float           # hue of the light stripes, in [0, 1)
    period_from_class: bool
    hue_from_class: bool


def check_body_evidence(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise CamlabError(f"--body_evidence {value:g}: the share of bodies that carry class evidence lies in [0, 1]")
    return float(value)


def draw_sample(rng: np.random.Generator, label: int, size: int = SYNTHETIC_SIZE,
                body_evidence: float = BODY_EVIDENCE, render: str = "normal") -> Sample:
    """Draw one object of class ``label`` on a cluttered background; every random choice comes
    from ``rng``, so the same generator state gives the same sample.

    ``render``: ``"normal"`` paints body and part; ``"body"`` leaves the part unpainted (what is
    under it shows: background and clutter) and ``"part"`` leaves the body unpainted. All three
    draw the same random numbers, so they equal the normal image outside the unpainted region.
    The masks are always those of the whole drawn object.
    """
    if not 0 <= label < len(PART_STYLES):
        raise ValueError(f"label must lie in [0, {len(PART_STYLES)}), got {label}")
    if render not in RENDERINGS:
        raise ValueError(f"render must be one of {RENDERINGS}, got {render!r}")
    check_body_evidence(body_evidence)
    image = _background(rng, size)
    _draw_distractors(rng, image)
    body, part = _object_masks(rng, PART_STYLES[label].shape, size)
    texture, look = _body_texture(rng, label, size, body_evidence)
    colour = _jitter(rng, PART_STYLES[label].rgb)
    if render != "part":
        image[body] = texture[body]
    if render != "body":
        image[part] = colour
    noisy = image + rng.normal(0.0, _NOISE_STD, image.shape)
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Sample(image, body | part, part, label, look)


def _muted_colour(rng: np.random.Generator, max_saturation: float = 0.35) -> tuple[int, int, int]:
    """A random greyish RGB colour: far from every part colour, so it is never a class cue."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, max_saturation), rng.uniform(0.3, 0.8))
    return tuple(int(round(255 * c)) for c in rgb)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], spread: float = 20.0) -> np.ndarray:
    return np.clip(np.asarray(rgb) + rng.uniform(-spread, spread, 3), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 size×size×3: a smooth field of random muted colours (a 4×4 grid, upsampled)."""
    grid = np.array([_muted_colour(rng) for _ in range(16)], dtype=np.uint8).reshape(4, 4, 3)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _place(points: np.ndarray, centre: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """Unit-shape vertices scaled, rotated by ``angle`` (radians) and moved to ``centre``."""
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points * scale @ rotation.T + centre


def _fixed(points: np.ndarray) -> np.ndarray:
    """Vertices as the int32 fixed-point numbers cv2 draws with ``shift=_SHIFT``."""
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _fill(size: int, points: np.ndarray) -> np.ndarray:
    """bool size×size mask of the polygon ``points`` (no antialiasing: masks must be exact)."""
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [_fixed(points)], 1, cv2.LINE_8, _SHIFT)
    return mask.astype(bool)


def _ellipse(a: float, b: float, n: int = 48) -> np.ndarray:
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _draw_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """2-5 muted outlines (part shapes included), blobs and lines anywhere in ``image``: clutter
    that looks like objects but is independent of the label."""
    size, shapes = image.shape[0], list(_SHAPES)
    for _ in range(rng.integers(2, 6)):
        colour, kind = _muted_colour(rng, 0.5), rng.integers(3)
        centre, radius = rng.uniform(0, size, 2), rng.uniform(3, 10) * size / SYNTHETIC_SIZE
        angle = rng.uniform(0, 2 * np.pi)
        if kind == 0:
            outline = _place(_SHAPES[shapes[rng.integers(len(shapes))]], centre, radius, angle)
            cv2.polylines(image, [_fixed(outline)], True, colour, 1, cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            blob = _place(_ellipse(1.0, rng.uniform(0.4, 1.0)), centre, radius, angle)
            cv2.fillPoly(image, [_fixed(blob)], colour, cv2.LINE_AA, _SHIFT)
        else:
            ends = _place(np.array([[-1.0, 0.0], [1.0, 0.0]]), centre, 2 * radius, angle)
            cv2.line(image, *map(tuple, _fixed(ends)), colour, 1, cv2.LINE_AA, _SHIFT)


def _object_masks(rng: np.random.Generator, part_shape: str,
                  size: int, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """bool masks (body, part): an ellipse at a random place, scale and angle, and the part
    centred on a random point of its rim (so about half of the part sticks out). ``shrink``
    scales the object (the multi-object scenes' are smaller); it changes no draw."""
    scale = rng.uniform(0.8, 1.2) * size / SYNTHETIC_SIZE * shrink
    a, b = rng.uniform(9, 14) * scale, rng.uniform(6, 9) * scale
    part_radius = rng.uniform(4.0, 5.5) * scale
    reach = a + 1.3 * part_radius + 1  # the farthest part vertex is < 1.3 radii from its centre
    centre, angle = rng.uniform(reach, size - reach, 2), rng.uniform(0, 2 * np.pi)
    body = _fill(size, _place(_ellipse(a, b), centre, 1.0, angle))
    phi = rng.uniform(0, 2 * np.pi)
    rim = _place(np.array([[a * np.cos(phi), b * np.sin(phi)]]), centre, 1.0, angle)[0]
    part = _fill(size, _place(_SHAPES[part_shape], rim, part_radius, rng.uniform(0, 2 * np.pi)))
    return body, part


def _from_band(rng: np.random.Generator, label: int, body_evidence: float, low: float,
               high: float) -> tuple[float, bool]:
    """A value in [low, high): with probability ``body_evidence`` uniform in class ``label``'s
    tenth of the range, else uniform in all of it. Both branches draw the same numbers, so the
    rest of the image never depends on the dial; balanced over classes, either branch is uniform
    on [low, high), so the value's pooled distribution does not depend on it either."""
    pick, within, anywhere = rng.uniform(size=3)
    width = (high - low) / len(PART_STYLES)
    from_class = bool(pick < body_evidence)
    return (low + width * (label + within) if from_class else low + (high - low) * anywhere), from_class


def _body_texture(rng: np.random.Generator, label: int, size: int,
                  body_evidence: float) -> tuple[np.ndarray, BodyLook]:
    """uint8 size×size×3 stripes: light ones in a muted colour of a drawn hue, dark ones in a
    random muted colour. Period and hue come from the class's band with probability
    ``body_evidence`` each (:func:`_from_band`)."""
    period, period_from_class = _from_band(rng, label, body_evidence, *_PERIOD_RANGE)
    hue, hue_from_class = _from_band(rng, label, body_evidence, 0.0, 1.0)
    hue = (hue + _HUE_OFFSET) % 1.0
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size]
    scaled = period * size / SYNTHETIC_SIZE
    stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / scaled + phase) > 0
    light_rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.85))
    light = np.array([int(round(255 * c)) for c in light_rgb], np.uint8)
    dark = np.array(_muted_colour(rng), np.uint8) // 2 + 20
    texture = np.where(stripes[..., None], light, dark)
    return texture, BodyLook(float(period), float(hue), period_from_class, hue_from_class)


# ------------------------------------------------------------- writing the synthetic dataset
def generate_synthetic(root: Path | str, seed: int = 0, n_train: int = SYNTHETIC_TRAIN,
                       n_test: int = SYNTHETIC_TEST, size: int = SYNTHETIC_SIZE,
                       progress: bool = True, body_evidence: float = BODY_EVIDENCE) -> dict:
    """Write the synthetic dataset in the lab layout at ``root`` and return its meta dict.

    Besides the lab files it writes every image's object mask (``train_masks/``,
    ``test_masks/``; for choosing CAM thresholds, never for training) and ``meta.json``. The
    same arguments give byte-identical files. The dataset is built in ``<root>.tmp-<pid>`` and
    renamed into place, so an interrupted run never leaves a complete-looking half dataset.
    """
    def build(tmp: Path) -> dict:
        shares = _write_synthetic_split(tmp, "train", n_train, seed, size, progress, body_evidence)
        test_labels = _split_labels(seed, "test", n_test)
        shares += _write_synthetic_split(tmp, "test", n_test, seed, size, progress, body_evidence)
        return _synthetic_meta(seed, size, n_train, n_test, float(np.mean(shares)),
                               _copy_seg_examples(tmp, test_labels), body_evidence)
    meta = _build_aside(Path(root), "the synthetic dataset", (n_train, n_test), body_evidence, build)
    print(f"generated the synthetic dataset in {root}: {n_train} train / {n_test} test images of "
          f"{size}x{size}, {len(PART_STYLES)} classes, body evidence {body_evidence:g}; parts cover {meta['mean_part_share']:.1%} "
          f"of the object masks on average")
    return meta


def _build_aside(root: Path, what: str, counts: tuple[int, int], body_evidence: float,
                 build: Callable[[Path], dict]) -> dict:
    """Check the arguments, then ``build(tmp)`` the dataset in ``<root>.tmp-<pid>``, write the
    meta dict it returns as ``meta.json`` and rename the folder to ``root``, so an interrupted
    run never leaves a complete-looking half dataset. Returns the meta dict."""
    check_body_evidence(body_evidence)
    if min(counts) < 1:
        raise CamlabError(f"{what} needs at least one image per split, got {counts[0]} and {counts[1]}")
    if root.exists():
        raise CamlabError(f"{root} already exists; delete it to generate {what} again")
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        meta = build(tmp)
        utils.atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _split_labels(seed: int, split: str, n: int) -> np.ndarray:
    """Balanced labels in a seeded random order."""
    # The seed words end in a non-zero tag: SeedSequence ignores trailing zeros, so [s, 0] and
    # [s, 0, 0] would otherwise give the same stream.
    rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    return rng.permutation(np.arange(n) % len(PART_STYLES))


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws image ``index`` of ``split``: one per image, so any image can be
    redrawn alone (the tests do) and the order of drawing does not matter."""
    return np.random.default_rng([seed, SPLITS.index(split), 2, index])


def _write_synthetic_split(root: Path, split: str, n: int, seed: int, size: int,
                           progress: bool, body_evidence: float) -> list[float]:
    """Images, masks and ``<split>_cls.txt`` of one split; returns each image's part share."""
    (root / split).mkdir(parents=True)
    (root / f"{split}_masks").mkdir()
    lines, shares = [], []
    labels = _split_labels(seed, split, n)
    for index in tqdm(range(n), desc=f"generating {split}", unit="img", disable=None if progress else True,
                      leave=False):
        sample = draw_sample(_sample_rng(seed, split, index), int(labels[index]), size, body_evidence)
        name = f"{index:05d}.png"
        (root / split / name).write_bytes(encode_png(sample.image))
        (root / f"{split}_masks" / name).write_bytes(encode_png(sample.mask.astype(np.uint8) * 255))
        lines.append(f"{name} {sample.label}\n")
        shares.append(float(sample.part_mask.sum() / sample.mask.sum()))
    (root / f"{split}_cls.txt").write_text("".join(lines), encoding="utf-8")
    return shares


def _copy_seg_examples(root: Path, test_labels: np.ndarray) -> list[str]:
    """Copy the first test image of each class (and its mask) to ``test_seg_source/`` and
    ``test_seg/``, the lab's ten images to visualise. Returns their names."""
    (root / "test_seg_source").mkdir()
    (root / "test_seg").mkdir()
    names = []
    for label in range(len(PART_STYLES)):
        hits = np.flatnonzero(test_labels == label)
        if len(hits):
            name = f"{hits[0]:05d}.png"
            shutil.copyfile(root / "test" / name, root / "test_seg_source" / name)
            shutil.copyfile(root / "test_masks" / name, root / "test_seg" / name)
            names.append(name)
    return names


LAB_GENERATOR = "camlab synthetic body+part"  # meta.json's "generator" of the single-object benchmark


def _synthetic_meta(seed: int, size: int, n_train: int, n_test: int, part_share: float,
                    seg_examples: list[str], body_evidence: float) -> dict:
    return {"generator": LAB_GENERATOR, "version": SYNTHETIC_VERSION,
            "body_evidence": body_evidence, "seed": seed, "size": size, "n_train": n_train, "n_test": n_test,
            "classes": SYNTHETIC_CLASSES, "mean_part_share": round(part_share, 4),
            "seg_examples": seg_examples}


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished folder to ``root``. If another process got there first (two
    processes generating the default dataset at once), keep theirs: it is identical."""
    try:
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ the multi-object scenes
# The multi-label form of the benchmark (``--dataset multi``): 1 to 3 objects of different
# classes per image, each drawn exactly as a single object is (body, part, the dial), only
# smaller, far to near, so a nearer object draws over a farther one. The ground truth is a
# class-index mask (0 background, c + 1 for class c; objects are drawn without antialiasing,
# so no pixel is blended and none is void) and the image's labels are the classes visible in
# it. Placements are redrawn until every object keeps MULTI_MIN_VISIBLE of its pixels and of
# its part (the class cue), so an occluded object is still there to be found.
MULTI_GENERATOR = "camlab synthetic multi-object"
MULTI_MAX_OBJECTS = 3
MULTI_SHRINK = 0.75      # objects are 3/4 the single-object benchmark's size
MULTI_MIN_VISIBLE = 0.5  # share of each object's pixels, and of its part's, left visible
_MULTI_TRIES = 25        # placements drawn before the nearest object is dropped
MULTI_SPLITS = ("train", "val")  # the VOC reader's names: val is the split reported
MULTI_TRAIN, MULTI_VAL = 2000, 500


@dataclass
class Scene:
    """One drawn multi-object image: uint8 H×W×3 RGB ``image``; uint8 H×W ``classes`` (0
    background, c + 1 where class c's object is the nearest); ``order``: the classes drawn, far
    to near; ``parts``: bool H×W, the visible part pixels (the class cues)."""

    image: np.ndarray
    classes: np.ndarray
    order: tuple[int, ...]
    parts: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """bool K: the classes with a visible pixel (the image-level labels)."""
        return np.bincount(self.classes.ravel(), minlength=len(PART_STYLES) + 1)[1:] > 0


def draw_scene(rng: np.random.Generator, size: int = SYNTHETIC_SIZE,
               body_evidence: float = BODY_EVIDENCE) -> Scene:
    """Draw one multi-object scene; every random choice (how many objects, their classes,
    places and looks) comes from ``rng``."""
    check_body_evidence(body_evidence)
    count = int(rng.integers(1, MULTI_MAX_OBJECTS + 1))
    order = [int(c) for c in rng.choice(len(PART_STYLES), size=count, replace=False)]
    image = _background(rng, size)
    _draw_distractors(rng, image)
    placed = _place_objects(rng, order, size)
    order = order[:len(placed)]
    classes, parts = np.zeros((size, size), np.uint8), np.zeros((size, size), bool)
    for label, (body, part) in zip(order, placed):
        texture, _ = _body_texture(rng, label, size, body_evidence)
        image[body] = texture[body]
        image[part] = _jitter(rng, PART_STYLES[label].rgb)
        classes[body | part] = label + 1
        parts[body | part] = False
        parts[part] = True
    noisy = image + rng.normal(0.0, _NOISE_STD, image.shape)
    return Scene(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), classes, tuple(order), parts)


def _place_objects(rng: np.random.Generator, order: list[int],
                   size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(body, part) masks for the classes ``order``, far to near, such that each object keeps
    MULTI_MIN_VISIBLE of its pixels and of its part under the nearer ones; after _MULTI_TRIES
    failed placements the nearest object is dropped (one object always fits)."""
    while True:
        for _ in range(_MULTI_TRIES):
            placed = [_object_masks(rng, PART_STYLES[c].shape, size, MULTI_SHRINK) for c in order]
            if all(_visible_enough(placed, i) for i in range(len(placed))):
                return placed
        order = order[:-1]


def _visible_enough(placed: list[tuple[np.ndarray, np.ndarray]], index: int) -> bool:
    body, part = placed[index]
    cover = np.zeros_like(body)
    for near_body, near_part in placed[index + 1:]:
        cover |= near_body | near_part
    whole = body | part
    return ((whole & ~cover).sum() >= MULTI_MIN_VISIBLE * whole.sum()
            and (part & ~cover).sum() >= MULTI_MIN_VISIBLE * part.sum())


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split`` (its own stream, tag 3)."""
    return np.random.default_rng([seed, MULTI_SPLITS.index(split), 3, index])


def scene_name(index: int) -> str:
    return f"{index:05d}"


def generate_multi(root: Path | str, seed: int = 0, n_train: int = MULTI_TRAIN, n_val: int = MULTI_VAL,
                   size: int = SYNTHETIC_SIZE, progress: bool = True,
                   body_evidence: float = BODY_EVIDENCE) -> dict:
    """Write the multi-object scenes at ``root`` in PASCAL VOC's layout and return the meta dict:
    ``JPEGImages/<id>.png`` (RGB), ``SegmentationClass/<id>.png`` (grey class indices),
    ``ImageSets/Segmentation/{train,val}.txt`` (DeepLab's two-path lines) and ``meta.json``
    (the class names). ``--dataset multi`` and ``--dataset voc --data_root <root>`` read it
    alike. Deterministic from the arguments; built aside and renamed into place."""
    def build(tmp: Path) -> dict:
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / folder).mkdir(parents=True)
        counts = {}
        for split, n in zip(MULTI_SPLITS, (n_train, n_val)):
            lines, objects = [], []
            for index in tqdm(range(n), desc=f"generating {split}", unit="img", disable=None if progress else True,
                              leave=False):
                scene = draw_scene(_scene_rng(seed, split, index), size, body_evidence)
                name = f"{split}_{scene_name(index)}"
                (tmp / "JPEGImages" / f"{name}.png").write_bytes(encode_png(scene.image))
                (tmp / "SegmentationClass" / f"{name}.png").write_bytes(encode_png(scene.classes))
                lines.append(f"/JPEGImages/{name}.png /SegmentationClass/{name}.png\n")
                objects.append(int(scene.present.sum()))
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
            counts[split] = np.bincount(objects, minlength=MULTI_MAX_OBJECTS + 1)[1:].tolist()
        return {"generator": MULTI_GENERATOR, "version": SYNTHETIC_VERSION, "body_evidence": body_evidence,
                "seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "classes": SYNTHETIC_CLASSES,
                "objects_per_image": counts}
    meta = _build_aside(Path(root), "the multi-object set", (n_train, n_val), body_evidence, build)
    counts = meta["objects_per_image"]
    print(f"generated the multi-object set in {root}: {n_train} train / {n_val} val images of {size}x{size}, "
          f"{len(PART_STYLES)} classes, body evidence {body_evidence:g}; 1/2/3 objects in "
          f"{'/'.join(map(str, counts['train']))} train images")
    return meta


# ------------------------------------------------------------ redrawing a generated dataset
# the embedded datasets (--dataset names), each generated on first use in its own folder by
# its generator, named in its meta.json
EMBEDDED = {"lab": ("synthetic", LAB_GENERATOR), "multi": ("synthetic_multi", MULTI_GENERATOR)}


def default_root(body_evidence: float | None = None, dataset: str = "lab") -> Path:
    """Where ``main.py`` keeps an embedded dataset (``EMBEDDED``) at a dial setting:
    ``data/synthetic`` (``data/synthetic_multi``) at the default, ``data/synthetic_be<value>``
    (``data/synthetic_multi_be<value>``) at any other (generated on first use)."""
    value = BODY_EVIDENCE if body_evidence is None else check_body_evidence(body_evidence)
    base = utils.DATA_DIR / EMBEDDED[dataset][0]
    return base if value == BODY_EVIDENCE else base.with_name(f"{base.name}_be{value:g}")


def generate(dataset: str, root: Path | str, progress: bool = True, body_evidence: float = BODY_EVIDENCE) -> dict:
    """Generate the embedded ``dataset`` at ``root`` with seed 0 and the default sizes."""
    write = generate_synthetic if dataset == "lab" else generate_multi
    return write(root, seed=0, progress=progress, body_evidence=body_evidence)


def read_meta(root: Path | str, dataset: str | None = "lab") -> dict | None:
    """``meta.json`` of a dataset that the generator of embedded ``dataset`` wrote (None: any
    embedded one), or None when ``root`` holds no such dataset."""
    path = Path(root) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CamlabError(f"{path}: not readable JSON ({err})") from None
    names = [g for d, (_, g) in EMBEDDED.items() if dataset in (None, d)]
    return meta if isinstance(meta, dict) and meta.get("generator") in names else None


def redraw(meta: dict, split: str, render: str = "normal") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 N×H×W×3, part masks bool N×H×W, labels int64 N)``: the split of the dataset
    that ``meta`` describes, drawn again from its seeds with ``render`` (body only, part only, or
    normal: equal to the files on disk). For the diagnostics of what a model looks at."""
    if meta.get("version") != SYNTHETIC_VERSION:
        raise CamlabError(f"the dataset was generated by version {meta.get('version')} of the generator and this "
                          f"is version {SYNTHETIC_VERSION}; delete it and generate it again")
    n = int(meta["n_train" if split == "train" else "n_test"])
    return _redrawn(int(meta["seed"]), int(meta["size"]), float(meta["body_evidence"]), split, n, render)


@functools.lru_cache(maxsize=8)
def _redrawn(seed: int, size: int, body_evidence: float, split: str, n: int,
             render: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = _split_labels(seed, split, n)
    samples = [draw_sample(_sample_rng(seed, split, i), int(labels[i]), size, body_evidence, render)
               for i in range(n)]
    images, parts = np.stack([s.image for s in samples]), np.stack([s.part_mask for s in samples])
    for array in (images, parts, labels):
        array.setflags(write=False)  # shared by every caller of the cache
    return images, parts, labels.astype(np.int64)
