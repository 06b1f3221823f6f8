"""The embedded benchmark: the synthetic body-plus-part dataset that camlab trains and scores on
when no other data is given, and its generator. It is the benchmark's definition, not a reader:
``dataloader.py`` reads what this writes (the handout's lab layout, with masks).

``python main.py`` generates it in ``data/synthetic`` on first use; ``generate_synthetic``
writes it anywhere, deterministically from its seed.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import utils
from utils import CamlabError, encode_png

SPLITS = ("train", "test")  # the lab layout's splits; a split's index seeds its draws


# ------------------------------------------------------------------ the synthetic dataset
# Every object is a BODY (a striped ellipse) plus a small PART stuck on its rim. The part is the
# reliable class cue: its shape and its saturated colour are fixed per class. The body carries
# only weak evidence (its stripe period drifts a little with the class, with heavy overlap),
# and backgrounds, colours of bodies and distractors are muted and random. A classifier thus
# learns to look at the part, and its CAM covers the part rather than the whole object: the
# failure that CAM refinements (such as the scale-equivariant SEG mode) try to repair.
SYNTHETIC_VERSION = 1
SYNTHETIC_SIZE = 64
SYNTHETIC_TRAIN = 2000  # 4 epochs at 224 px train in ~8 min on a 2-core CPU (measured)
SYNTHETIC_TEST = 500
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
    """

    image: np.ndarray
    mask: np.ndarray
    part_mask: np.ndarray
    label: int


def draw_sample(rng: np.random.Generator, label: int, size: int = SYNTHETIC_SIZE) -> Sample:
    """Draw one object of class ``label`` on a cluttered background; every random choice comes
    from ``rng``, so the same generator state gives the same sample."""
    if not 0 <= label < len(PART_STYLES):
        raise ValueError(f"label must lie in [0, {len(PART_STYLES)}), got {label}")
    image = _background(rng, size)
    _draw_distractors(rng, image)
    body, part = _object_masks(rng, PART_STYLES[label].shape, size)
    image[body] = _body_texture(rng, label, size)[body]
    image[part] = _jitter(rng, PART_STYLES[label].rgb)
    noisy = image + rng.normal(0.0, _NOISE_STD, image.shape)
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return Sample(image, body | part, part, label)


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
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """bool masks (body, part): an ellipse at a random place, scale and angle, and the part
    centred on a random point of its rim (so about half of the part sticks out)."""
    scale = rng.uniform(0.8, 1.2) * size / SYNTHETIC_SIZE
    a, b = rng.uniform(9, 14) * scale, rng.uniform(6, 9) * scale
    part_radius = rng.uniform(4.0, 5.5) * scale
    reach = a + 1.3 * part_radius + 1  # the farthest part vertex is < 1.3 radii from its centre
    centre, angle = rng.uniform(reach, size - reach, 2), rng.uniform(0, 2 * np.pi)
    body = _fill(size, _place(_ellipse(a, b), centre, 1.0, angle))
    phi = rng.uniform(0, 2 * np.pi)
    rim = _place(np.array([[a * np.cos(phi), b * np.sin(phi)]]), centre, 1.0, angle)[0]
    part = _fill(size, _place(_SHAPES[part_shape], rim, part_radius, rng.uniform(0, 2 * np.pi)))
    return body, part


def _body_texture(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """uint8 size×size×3 stripes in two muted colours. The period grows slowly with the label
    but varies more within a class than between neighbouring classes: weak evidence only."""
    period = (3.5 + 0.15 * label + rng.uniform(-1.0, 1.0)) * size / SYNTHETIC_SIZE
    angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size]
    stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase) > 0
    light, dark = np.array(_muted_colour(rng), np.uint8), np.array(_muted_colour(rng), np.uint8)
    return np.where(stripes[..., None], light, dark)


# ------------------------------------------------------------- writing the synthetic dataset
def generate_synthetic(root: Path | str, seed: int = 0, n_train: int = SYNTHETIC_TRAIN,
                       n_test: int = SYNTHETIC_TEST, size: int = SYNTHETIC_SIZE,
                       progress: bool = True) -> dict:
    """Write the synthetic dataset in the lab layout at ``root`` and return its meta dict.

    Besides the lab files it writes every image's object mask (``train_masks/``,
    ``test_masks/``; for choosing CAM thresholds, never for training) and ``meta.json``. The
    same arguments give byte-identical files. The dataset is built in ``<root>.tmp-<pid>`` and
    renamed into place, so an interrupted run never leaves a complete-looking half dataset.
    """
    root = Path(root)
    if n_train < 1 or n_test < 1:
        raise CamlabError(f"the synthetic dataset needs at least one image per split, "
                          f"got n_train={n_train}, n_test={n_test}")
    if root.exists():
        raise CamlabError(f"{root} already exists; delete it to generate the synthetic dataset again")
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shares = _write_synthetic_split(tmp, "train", n_train, seed, size, progress)
        test_labels = _split_labels(seed, "test", n_test)
        shares += _write_synthetic_split(tmp, "test", n_test, seed, size, progress)
        meta = _synthetic_meta(seed, size, n_train, n_test, float(np.mean(shares)),
                               _copy_seg_examples(tmp, test_labels))
        utils.atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"generated the synthetic dataset in {root}: {n_train} train / {n_test} test images of "
          f"{size}x{size}, {len(PART_STYLES)} classes; parts cover {meta['mean_part_share']:.1%} "
          f"of the object masks on average")
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
                           progress: bool) -> list[float]:
    """Images, masks and ``<split>_cls.txt`` of one split; returns each image's part share."""
    (root / split).mkdir(parents=True)
    (root / f"{split}_masks").mkdir()
    lines, shares = [], []
    labels = _split_labels(seed, split, n)
    for index in tqdm(range(n), desc=f"generating {split}", unit="img", disable=None if progress else True,
                      leave=False):
        sample = draw_sample(_sample_rng(seed, split, index), int(labels[index]), size)
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


def _synthetic_meta(seed: int, size: int, n_train: int, n_test: int, part_share: float,
                    seg_examples: list[str]) -> dict:
    return {"generator": "camlab synthetic body+part", "version": SYNTHETIC_VERSION,
            "seed": seed, "size": size, "n_train": n_train, "n_test": n_test,
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
