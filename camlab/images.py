"""Decoded image sets: the ``ImageSet`` a split becomes, decoding image and mask files with one-line errors, and the decode cache.

A split is decoded once into an :class:`ImageSet` (all images as one uint8 tensor) and kept
whole in memory; the readers (``camlab.readers``, ``dataloader``) list the files, this module
decodes them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from camlab import utils
from camlab.utils import CamlabError


# ---------------------------------------------------------------------------- the image set
@dataclass
class ImageSet:
    """One decoded split.

    images: uint8 tensor N×3×H×W, RGB, contiguous.
    labels: int64 tensor N, each in ``[0, len(classes))``.
    names: N file names (relative to the split folder), in the same order.
    classes: the class names; ``len(classes)`` is the number of classes.
    skipped: the files (relative to the split folder) left out because they could not be
      decoded (``load_split(..., skip_bad=True)``); kept with the split, so that a split read
      back from the cache still tells the user which files it lacks.
    present: bool N×K, every class present in each image (multi-hot), for datasets that know
      more than the one label (``voc``); None for the others.
    """

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    present: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N×3×H×W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,) or len(self.names) != n:
            raise ValueError(f"{n} images but labels {tuple(self.labels.shape)} "
                             f"({self.labels.dtype}) and {len(self.names)} names")
        if self.present is not None and (self.present.dtype != torch.bool
                                         or tuple(self.present.shape) != (n, len(self.classes))):
            raise ValueError(f"present must be bool {n}×{len(self.classes)} (images × classes), got "
                             f"{self.present.dtype} {tuple(self.present.shape)}")

    def to(self, device: torch.device | str) -> ImageSet:
        """A copy whose tensors live on ``device`` (asynchronous copy from pinned memory)."""
        present = self.present
        if present is not None:
            present = present.to(device, non_blocking=present.is_pinned())
        return dataclasses.replace(
            self,
            images=self.images.to(device, non_blocking=self.images.is_pinned()),
            labels=self.labels.to(device, non_blocking=self.labels.is_pinned()), present=present)

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, idx: torch.Tensor) -> ImageSet:
        """The images ``idx`` (int64, repeats allowed) as a set of their own, on the same device."""
        on_device = idx.to(self.images.device)
        present = None if self.present is None else self.present[idx.to(self.present.device)]
        return dataclasses.replace(self, images=self.images[on_device], labels=self.labels[on_device],
                                   names=[self.names[i] for i in idx.tolist()], present=present)


_NOTED: set[str] = set()


def note_once(note: str, kind: str = "note") -> None:
    """``note`` on stderr (``note: ...`` or ``warning: ...``), the first time this process meets it."""
    if note not in _NOTED:
        _NOTED.add(note)
        print(f"{kind}: {utils.printable(note)}", file=sys.stderr)


def warn_skipped(skipped: list[str], folder: Path) -> None:
    """One line on stderr naming every skipped file: the user must be able to find (and fix or
    delete) each of them, however many there are. Printed on every load, cached or not."""
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} "
              f"in {folder}: {', '.join(skipped)}", file=sys.stderr)


# ------------------------------------------------------------------------------- decoding
MAX_PIXELS = 50_000_000  # an image or mask declaring more is refused from its header (--max_pixels)


@dataclass(frozen=True)
class DecodeOptions:
    """How a split is decoded: the size of mixed-size images (``img_size``), a progress bar, whether
    an undecodable file is left out (``skip_bad``), and the largest image accepted (``max_pixels``,
    read from each file's header before any decoding)."""

    img_size: int = 224
    progress: bool = True
    skip_bad: bool = False
    max_pixels: int = MAX_PIXELS


class NotSkippable(CamlabError):
    """A file that ``skip_bad`` must not leave out: it is not damaged (an image over the size limit,
    a decoder out of memory), so leaving it out would quietly change the data."""


def decode_files(folder: Path, names: list[str], labels: list[int], classes: list[str],
                 options: DecodeOptions) -> ImageSet:
    """Decode every image ``folder/<name>`` once, sized as :func:`_add_image` says (see
    :func:`decode_each` for what ``skip_bad`` does)."""
    images, kept, skipped = decode_each(folder, names, lambda i: decode_image(folder / names[i], options.max_pixels),
                                        options)
    return ImageSet(images, torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                    [names[i] for i in kept], list(classes), skipped)


def decode_each(folder: Path, names: list[str], load: Callable[[int], np.ndarray],
                options: DecodeOptions) -> tuple[torch.Tensor, list[int], list[str]]:
    """``(uint8 N×3×H×W images, the indices kept, the names skipped)``: ``load(i)`` decodes
    image ``i`` (named ``names[i]``, relative to ``folder``) as RGB H×W×3.

    A CamlabError from ``load`` (a file that cannot be decoded) stops the split, unless
    ``skip_bad``: then that image is left out (the caller drops its label and name too, so the
    lists stay aligned) and its name listed. Leaving out every image is still an error: an empty
    split would only fail later, with a message that no longer says why. A :class:`NotSkippable`
    error (an image over ``max_pixels``, a decoder out of memory) always stops it.
    """
    skip_bad = options.skip_bad
    stack, kept, skipped, first_error = _Stack(len(names), options.img_size), [], [], None
    for index, name in enumerate(tqdm(names, desc=f"decoding {folder.name}", unit="img",
                                      disable=None if options.progress else True, leave=False)):
        try:
            image = load(index)
        except CamlabError as err:
            if not skip_bad or isinstance(err, NotSkippable):
                raise
            skipped.append(name)
            first_error = first_error or err
            continue
        stack.add(image)
        kept.append(index)
    if first_error is not None and not kept:
        raise CamlabError(f"no image in {folder} can be decoded: all {len(skipped)} were skipped "
                          f"(the first: {utils.reason(first_error, limit=500)})")
    return stack.result(), kept, skipped


class _Stack:
    """The decoded images written straight into one preallocated uint8 N×3×H×W tensor, so that a
    split's decoding peaks at about the tensor's size (not at the per-image arrays, their stack
    and its channels-first copy at once). All share one size: their own while they agree, else
    ``img_size``×``img_size`` (from the first image of another size on; the earlier ones are
    resized into a tensor of that size once). Resizing as they come keeps only stored-size images
    in memory when a folder holds large photos."""

    def __init__(self, capacity: int, img_size: int) -> None:
        self.capacity, self.img_size, self.out, self.count = capacity, img_size, None, 0

    def add(self, image: np.ndarray) -> None:
        """One H×W×3 uint8 image, in the next slot."""
        size = (self.img_size, self.img_size)
        if self.out is None:
            self.out = torch.empty((self.capacity, 3, *image.shape[:2]), dtype=torch.uint8)
        elif tuple(image.shape[:2]) != tuple(self.out.shape[-2:]):
            if tuple(self.out.shape[-2:]) != size:
                resized = torch.empty((self.capacity, 3, *size), dtype=torch.uint8)
                for k in range(self.count):
                    earlier = np.ascontiguousarray(self.out[k].permute(1, 2, 0).numpy())
                    resized[k] = torch.from_numpy(_resize(earlier, self.img_size)).permute(2, 0, 1)
                self.out = resized
            image = _resize(image, self.img_size)
        self.out[self.count] = torch.from_numpy(image).permute(2, 0, 1)
        self.count += 1

    def result(self) -> torch.Tensor:
        """The images added, N×3×H×W (a copy only when images were left out: no unused rows kept)."""
        if self.out is None:
            return torch.zeros((0, 3, self.img_size, self.img_size), dtype=torch.uint8)
        return self.out if self.count == self.capacity else self.out[:self.count].clone()


def decode_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image at ``path`` as uint8 H×W×3 RGB; grey is repeated, alpha dropped, 16 bits
    scaled to 8. Read through ``np.fromfile`` so that any path the OS accepts works."""
    return _to_rgb8(imread(path, cv2.IMREAD_UNCHANGED, "image", max_pixels), path)


def declared_size(path: Path | str) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header, nothing decoded (PIL reads the header
    alone); None when PIL does not know the format (cv2 may still)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings on odd headers (bombs, corrupt EXIF): cv2 decides
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is what we want to see
            try:
                with Image.open(path) as image:
                    return image.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _sound(path: Path | str) -> bool:
    """Whether PIL finds the file whole (its header and checksums), without decoding the pixels."""
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")
            image.verify()
        return True
    except Exception:  # PIL reports damage in many types
        return False


def imread(path: Path | str, flags: int, what: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """cv2's decoder on the file's bytes; a missing, unreadable or undecodable file is a
    CamlabError naming it (one line: cv2's own messages span several). A file whose header
    declares more than ``max_pixels`` is refused before decoding, and a decoder that runs out of
    memory is said to (a :class:`NotSkippable` error, never taken for a damaged file)."""
    size = declared_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise NotSkippable(f"{what} {path} declares {size[0]}×{size[1]} pixels ({size[0] * size[1] / 1e6:,.0f} "
                           f"megapixels), over the limit of {max_pixels / 1e6:g} (--max_pixels); not decoded")
    try:
        image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flags)
    except MemoryError:
        raise NotSkippable(f"out of memory decoding {what} {path} ({_dims(size)}): not a damaged file; "
                           f"free memory or lower --max_pixels") from None
    except (OSError, ValueError, cv2.error) as err:
        if "memory" in str(err).lower() or "allocate" in str(err).lower():
            raise NotSkippable(f"out of memory decoding {what} {path} ({_dims(size)}): not a damaged file; "
                               f"free memory or lower --max_pixels") from None
        raise CamlabError(f"cannot read {what} {path}: {utils.reason(err)}") from None
    if image is None:
        if size is not None and _sound(path):
            raise NotSkippable(f"the decoder failed on {what} {path} ({_dims(size)}) although its header and "
                               f"checksums are sound: most likely out of memory, not a damaged file")
        raise CamlabError(f"cannot read {what} {path}: not a decodable image file")
    return image


def _dims(size: tuple[int, int] | None) -> str:
    return "of unknown size" if size is None else f"{size[0]}×{size[1]}"


def _to_rgb8(image: np.ndarray, path: Path | str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255 / 65535)
    if image.dtype != np.uint8:
        raise CamlabError(f"cannot read image {path}: {image.dtype} pixels are not supported")
    channels = 1 if image.ndim == 2 else image.shape[2]
    conversions = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if channels not in conversions:
        raise CamlabError(f"cannot read image {path}: {channels} channels are not supported")
    return cv2.cvtColor(image, conversions[channels])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """``size``×``size``; area averaging when shrinking avoids aliasing."""
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# Mask files must use one of these codings; anything else (e.g. JPEG artefacts) is refused.
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


BINARY_CODINGS = (frozenset({0, 255}), frozenset({0, 1}))


def read_mask(path: Path | str) -> np.ndarray:
    """A binary mask image (ground truth or prediction) as bool H×W: foreground where > 127.

    The file must hold only 0 and 255 (the handout's masks), or only 0 and 1 (read as 0 and
    255); anything else, or a file that cannot be read or decoded, -> CamlabError naming the file.
    """
    raw = imread(path, cv2.IMREAD_GRAYSCALE, "mask")
    _check_binary(raw, path)
    if raw.max(initial=0) == 1:
        raw = raw * 255
    return raw > 127


def read_mask_dir(folder: Path | str) -> dict[str, np.ndarray]:
    """stem -> bool H×W mask for every PNG/JPG/JPEG/BMP file in ``folder``, sorted by stem.

    Each file goes through :func:`dataloader.read_mask`. A missing folder, or two files with the
    same stem (``a.png`` and ``a.bmp``), -> CamlabError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CamlabError(f"mask folder {folder} does not exist")
    masks: dict[str, np.ndarray] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES and p.is_file()):
        if path.stem in masks:
            raise CamlabError(f"two masks named {path.stem!r} in {folder}: keep one of them")
        masks[path.stem] = read_mask(path)
    return dict(sorted(masks.items()))


def _check_binary(raw: np.ndarray, path: Path | str) -> None:
    present = frozenset(np.flatnonzero(np.bincount(raw.ravel(), minlength=256)).tolist())
    if any(present <= coding for coding in BINARY_CODINGS):
        return
    outside = sorted(present - {0, 1, 255})
    what = f"the value {outside[0]}" if outside else "both 1 and 255"
    raise CamlabError(f"mask {path} is not binary: it holds {what} "
                      "(allowed: only 0 and 255, or only 0 and 1; save masks as PNG, not JPEG)")


# ---------------------------------------------------------------------------------- cache
CACHE_VERSION = 1  # bump when decoding changes, so old cache files are not used


def cache_key(settings: list, files: list[Path]) -> str:
    """sha1 of the settings and each file's path, size and modification time."""
    digest = hashlib.sha1(json.dumps(settings).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached(cache_dir: Path | None, key: str, build: Callable[[], ImageSet]) -> ImageSet:
    """``build()``, or its earlier result saved as ``cache_dir/<key>.pt``."""
    if cache_dir is None:
        return build()
    path = Path(cache_dir) / f"{key}.pt"
    data = _read_cache(path)
    if data is None:
        data = build()
        payload = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
        _write_cache(path, payload)
    return data


def _read_cache(path: Path) -> ImageSet | None:
    if not path.is_file():
        return None
    try:
        return ImageSet(**torch.load(path, weights_only=True))
    except Exception:  # a truncated or foreign cache file: it is ours, so rebuild it
        return None


CACHE_KEEP_FREE = 0.1  # the cache is written only where the disk keeps this share of its size (and 1 GiB) free after


def _write_cache(path: Path, payload: dict) -> None:
    """The decoded split saved for the next run; the cache only saves time, so a write that fails
    (a full or read-only disk) is a warning and the run goes on with the split in memory. It is
    not written at all when it would leave less than :data:`CACHE_KEEP_FREE` of the disk (or 1 GiB)
    free: the cache never fills the disk."""
    size = sum(v.nbytes for v in payload.values() if isinstance(v, torch.Tensor))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(path.parent)
    except OSError:
        disk = None  # the write below names the problem
    if disk is not None and disk.free - size < max(CACHE_KEEP_FREE * disk.total, 2**30):
        print(f"warning: the data cache was not written: {size / 2**30:.1f} GiB would leave less than "
              f"{CACHE_KEEP_FREE:.0%} of {path.parent}'s disk free ({disk.free / 2**30:.1f} GiB free); decoding "
              f"again next time", file=sys.stderr)
        return
    try:
        utils.atomic_write(path, lambda f: torch.save(payload, f))
    except CamlabError as err:
        print(f"warning: the data cache was not written ({err}); decoding again next time", file=sys.stderr)


# ------------------------------------------------------------------------------ the examples
def example_images(n: int, size: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """``n`` RGB images of three classes: a square of the class's colour on grey."""
    rng, colours = np.random.default_rng(seed), ((220, 30, 30), (30, 200, 30), (30, 30, 220))
    images, labels = [], []
    for i in range(n):
        image = np.full((size, size, 3), 128, np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        image[y:y + size // 2, x:x + size // 2] = colours[i % 3]
        images.append(image)
        labels.append(i % 3)
    return images, labels
