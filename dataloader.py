"""Data: the embedded synthetic dataset, readers for three on-disk formats, a decoded-image
cache, and the per-batch steps that turn stored images into model input.

A split is decoded once into an :class:`ImageSet` (all images as one uint8 tensor) and kept
whole in memory, on the training device if it fits; batches are then cut from it by index.
Resizing, flipping and normalising happen per batch in :func:`to_model_input`, on the device,
instead of per image in worker processes: the images are small and the GPU (or the vectorised
CPU code) is much faster at it than a Python loop.

Formats (``DATASETS``, the ``--dataset`` choices):

* ``lab`` - the course's layout: ``train/``, ``test/``, ``train_cls.txt`` and ``test_cls.txt``
  (``<file name> <label>`` per line), ``test_seg_source/`` and ``test_seg/`` (0/255 masks).
  The default root ``data/synthetic`` is generated on first use (:func:`generate_synthetic`).
* ``cifar10`` - the python pickles ``cifar-10-batches-py/`` (read with a restricted unpickler).
* ``folder`` - an ImageFolder tree ``train/<class>/<image>`` and ``test/<class>/<image>``.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from torchvision.datasets import folder as tv_folder
from tqdm import tqdm

import utils
from utils import CamlabError

SPLITS = ("train", "test")


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
    """

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N×3×H×W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,) or len(self.names) != n:
            raise ValueError(f"{n} images but labels {tuple(self.labels.shape)} "
                             f"({self.labels.dtype}) and {len(self.names)} names")

    def to(self, device: torch.device | str) -> ImageSet:
        """A copy whose tensors live on ``device`` (asynchronous copy from pinned memory)."""
        return dataclasses.replace(
            self,
            images=self.images.to(device, non_blocking=self.images.is_pinned()),
            labels=self.labels.to(device, non_blocking=self.labels.is_pinned()))

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, idx: torch.Tensor) -> ImageSet:
        """The images ``idx`` (int64, repeats allowed) as a set of their own, on the same device."""
        on_device = idx.to(self.images.device)
        return dataclasses.replace(self, images=self.images[on_device], labels=self.labels[on_device],
                                   names=[self.names[i] for i in idx.tolist()])


# ------------------------------------------------------------------------- loading a split
def default_root(dataset: str) -> Path:
    """Where ``dataset`` is looked for when no root is given (relative to the working dir)."""
    _check_choice("dataset", dataset, DATASETS)
    if dataset == "lab":
        return utils.DEFAULT_DATA_ROOT
    return utils.DATA_DIR / dataset


def resolve_root(dataset: str, data_root: str | Path | None) -> Path:
    """``--data_root`` when given, else the dataset's default root. An empty one is a mistake
    (an unset shell variable, say), not a request for the default."""
    if data_root is not None and not str(data_root).strip():
        raise CamlabError("--data_root is empty: name a dataset folder, or leave the flag out for the default")
    return Path(data_root) if data_root is not None else default_root(dataset)


def load_split(dataset: str, root: Path | str, split: str, *, img_size: int = 224,
               num_classes: int | None = None, download: bool = False,
               cache_dir: Path | None = utils.DATA_DIR / "cache",
               progress: bool = True, skip_bad: bool = False) -> ImageSet:
    """Read split ``train`` or ``test`` of ``dataset`` (one of ``DATASETS``) stored at ``root``.

    Images are stored at their own size when all images of the split share one, else each is
    resized to ``img_size``×``img_size`` when decoded. ``num_classes``, when given, must agree
    with the classes the data declares (for ``lab`` without ``meta.json`` it declares them).
    The decoded split is cached in ``cache_dir`` (``None``: no cache), keyed by the files' names,
    sizes and modification times, so an edited dataset is decoded again.

    An image file that cannot be decoded is a CamlabError naming it, unless ``skip_bad``: then
    every such file is left out (with its label), listed in ``ImageSet.skipped`` and in one
    warning on stderr, and only a split with no decodable image at all is an error. Errors in
    the annotation files (a bad line, a listed file that does not exist) stay errors either way:
    they are mistakes in the dataset's description, not damaged files.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("split", split, SPLITS)
    root = Path(root)
    if download:
        _download_cifar10(dataset, root, split)
    _ensure_root(dataset, root, progress)
    listing = _READERS[dataset](root, split, num_classes)
    # img_size is in the key because it decides how a split of mixed sizes is stored, and
    # skip_bad because it decides whether a damaged file is left out or is an error
    store_rule = f"native size if uniform, else {img_size}x{img_size}"
    key = _cache_key([_CACHE_VERSION, dataset, str(root.resolve()), split, num_classes, store_rule,
                      f"skip_bad={skip_bad}"], listing.files)
    data = _cached(cache_dir, key, lambda: listing.decode(img_size, progress, skip_bad))
    _warn_skipped(data.skipped, root / split)
    return data


def _warn_skipped(skipped: list[str], folder: Path) -> None:
    """One line on stderr naming every skipped file: the user must be able to find (and fix or
    delete) each of them, however many there are. Printed on every load, cached or not."""
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} "
              f"in {folder}: {', '.join(skipped)}", file=sys.stderr)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CamlabError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


_ROOT_HINTS = {
    "lab": "it must hold train/, test/, train_cls.txt and test_cls.txt; leave --data_root out "
           "to use the generated synthetic dataset",
    "cifar10": "it must hold cifar-10-batches-py/; pass --download to fetch it (needs a network)",
    "folder": "it must hold train/<class>/<images> and test/<class>/<images>",
}


def _ensure_root(dataset: str, root: Path, progress: bool) -> None:
    """Generate the default synthetic dataset on first use; any other missing root is an error."""
    if root.exists():
        return
    if dataset == "lab" and root.resolve() == utils.DEFAULT_DATA_ROOT.resolve():
        generate_synthetic(root, seed=0, progress=progress)
        return
    raise CamlabError(f"data root '{root}' does not exist ({_ROOT_HINTS[dataset]})")


@dataclass
class _Listing:
    """What a reader found before decoding anything.

    files: every file the split's content depends on (their stats form the cache key).
    decode: ``decode(img_size, progress, skip_bad) -> ImageSet`` does the expensive part.
    """

    files: list[Path]
    decode: Callable[[int, bool, bool], ImageSet]


# ------------------------------------------------------------------------ format: lab layout
def _list_lab(root: Path, split: str, num_classes: int | None) -> _Listing:
    meta_path = root / "meta.json"
    classes = _lab_classes(meta_path, num_classes)
    ann_path = root / f"{split}_cls.txt"
    entries = _parse_annotations(ann_path, root / split, len(classes))
    labels = [label for _, label in entries]
    names = [name for name, _ in entries]
    files = [ann_path] + ([meta_path] if meta_path.exists() else []) + [root / split / n for n in names]

    def decode(img_size: int, progress: bool, skip_bad: bool) -> ImageSet:
        return _decode_files(root / split, names, labels, classes, img_size, progress, skip_bad)
    return _Listing(files, decode)


def _lab_classes(meta_path: Path, num_classes: int | None) -> list[str]:
    """Class names from ``meta.json`` when there is one, else ``"0"``, ``"1"``, ..."""
    if not meta_path.exists():
        return [str(i) for i in range(10 if num_classes is None else num_classes)]
    try:
        classes = json.loads(meta_path.read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CamlabError(f"{meta_path} has no readable 'classes' list ({err})") from None
    if not isinstance(classes, list) or not classes:
        raise CamlabError(f"{meta_path}: 'classes' must be a non-empty list of names")
    _check_num_classes(num_classes, len(classes), meta_path)
    return [str(c) for c in classes]


def _check_num_classes(expected: int | None, found: int, source: Path) -> None:
    if expected is not None and expected != found:
        raise CamlabError(f"{found} classes in {source}, but {expected} were asked for")


def _parse_annotations(ann_path: Path, image_dir: Path, num_classes: int) -> list[tuple[str, int]]:
    """``(file name, label)`` for each non-empty line of ``ann_path``; every listed image must
    exist in ``image_dir``. Errors name the file and the line.

    Lines are counted as editors count them: at ``\\n``, ``\\r\\n`` and ``\\r`` only (not at the
    form feeds or Unicode separators where ``str.splitlines`` also breaks), so the number in an
    error is the one the user sees. A UTF-8 byte order mark (Windows editors write one) is dropped
    rather than read as part of the first file name.
    """
    try:
        text = ann_path.read_text(encoding="utf-8-sig")  # universal newlines: \r\n, \r -> \n
    except FileNotFoundError:
        raise CamlabError(f"annotation file {ann_path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CamlabError(f"cannot read annotation file {ann_path}: {utils.reason(err)}") from None
    entries = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            name, label = _parse_line(line, num_classes, f"{ann_path}, line {line_no}")
            if not (image_dir / name).is_file():
                raise CamlabError(f"{ann_path}, line {line_no}: image {image_dir / name} is missing")
            entries.append((name, label))
    if not entries:
        raise CamlabError(f"annotation file {ann_path} lists no images")
    return entries


def _parse_line(line: str, num_classes: int, where: str) -> tuple[str, int]:
    fields = line.split()
    if len(fields) == 1:
        raise CamlabError(f"{where}: missing label after {fields[0]!r}")
    if len(fields) != 2:
        raise CamlabError(f"{where}: malformed line {line.strip()!r} "
                          f"(expected '<file name> <label>')")
    name, text = fields
    try:
        label = int(text)
    except ValueError:
        raise CamlabError(f"{where}: label {text!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise CamlabError(f"{where}: label {label} is out of range [0, {num_classes})")
    return name, label


# --------------------------------------------------------------------- format: ImageFolder
def _list_folder(root: Path, split: str, num_classes: int | None) -> _Listing:
    classes = _folder_classes(root / split)
    other = _folder_classes(root / ("test" if split == "train" else "train"))
    if classes != other:
        differ = sorted(set(classes) ^ set(other))
        raise CamlabError(f"{root}: train/ and test/ must hold the same class folders; "
                          f"they differ in {differ}")
    _check_num_classes(num_classes, len(classes), root / split)
    try:
        samples = tv_folder.make_dataset(root / split, {c: i for i, c in enumerate(classes)},
                                         extensions=tv_folder.IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without images
        raise CamlabError(f"{root / split}: {err}") from None
    paths = [Path(p) for p, _ in samples]
    labels = [label for _, label in samples]
    names = [p.relative_to(root / split).as_posix() for p in paths]

    def decode(img_size: int, progress: bool, skip_bad: bool) -> ImageSet:
        return _decode_files(root / split, names, labels, classes, img_size, progress, skip_bad)
    return _Listing(paths, decode)


def _folder_classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise CamlabError(f"{split_dir} does not exist ({_ROOT_HINTS['folder']})")
    try:
        classes, _ = tv_folder.find_classes(split_dir)
    except FileNotFoundError:
        raise CamlabError(f"{split_dir} has no class folders ({_ROOT_HINTS['folder']})") from None
    return classes


# ------------------------------------------------------------------------ format: CIFAR-10
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _list_cifar10(root: Path, split: str, num_classes: int | None) -> _Listing:
    base = root / _CIFAR_DIR
    files = [base / name for name in _CIFAR_BATCHES[split] + ["batches.meta"]]
    for path in files:
        if not path.is_file():
            raise CamlabError(f"CIFAR-10 file {path} is missing ({_ROOT_HINTS['cifar10']})")
    label_names = _read_pickle(files[-1]).get(b"label_names")
    if not isinstance(label_names, list) or not label_names:
        raise CamlabError(f"{files[-1]} has no b'label_names' list")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in label_names]
    _check_num_classes(num_classes, len(classes), files[-1])
    # skip_bad does not apply: the batches are arrays, not separately decoded image files
    return _Listing(files, lambda img_size, progress, skip_bad: _decode_cifar10(files[:-1], classes))


def _decode_cifar10(batch_files: list[Path], classes: list[str]) -> ImageSet:
    """The batches' rows (3072 bytes: the red, green, blue 32×32 planes) as N×3×32×32."""
    images, labels = [], []
    for path in batch_files:
        batch = _read_pickle(path)
        data, batch_labels = batch.get(b"data"), batch.get(b"labels")
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                or data.shape[1] != 3 * 32 * 32 or not isinstance(batch_labels, list)
                or len(batch_labels) != data.shape[0]):
            raise CamlabError(f"{path} is not a CIFAR-10 batch (need b'data' N×3072 uint8 "
                              f"and N b'labels')")
        _check_label_range(batch_labels, len(classes), path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    names = [f"{i:05d}.png" for i in range(len(labels))]
    return ImageSet(torch.from_numpy(np.concatenate(images)).contiguous(),
                    torch.tensor(labels, dtype=torch.int64), names, classes)


def _check_label_range(labels: list, num_classes: int, path: Path) -> None:
    bad = [x for x in labels if not isinstance(x, int) or not 0 <= x < num_classes]
    if bad:
        raise CamlabError(f"{path}: label {bad[0]!r} is out of range [0, {num_classes})")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, and refuses every other global.

    A pickle can name any importable callable (``os.system``, say) and have it called while
    loading; CIFAR-10 batches need only what rebuilds an ndarray, so that is all we allow.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    """A CIFAR-10 pickle (written by Python 2, hence ``encoding="bytes"``) as a dict."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise CamlabError(f"cannot read CIFAR-10 file {path}: {err}") from None
    if not isinstance(obj, dict):
        raise CamlabError(f"cannot read CIFAR-10 file {path}: holds a {type(obj).__name__}, "
                          f"not a dict")
    return obj


def _download_cifar10(dataset: str, root: Path, split: str) -> None:
    """Let torchvision fetch and verify CIFAR-10 into ``root`` (skipped when already there)."""
    if dataset != "cifar10":
        raise CamlabError(f"--download only applies to --dataset cifar10, not {dataset!r}")
    from torchvision.datasets import CIFAR10  # only needed here
    try:
        CIFAR10(str(root), train=split == "train", download=True)
    except Exception as err:  # network and archive errors come in many types; all end here
        raise CamlabError(f"cannot download CIFAR-10 into '{root}': {utils.reason(err)}") from None


_READERS: dict[str, Callable[[Path, str, int | None], _Listing]] = {
    "lab": _list_lab, "cifar10": _list_cifar10, "folder": _list_folder}
DATASETS: tuple[str, ...] = tuple(_READERS)


# ------------------------------------------------------------------------------- decoding
def _decode_files(folder: Path, names: list[str], labels: list[int], classes: list[str],
                  img_size: int, progress: bool, skip_bad: bool) -> ImageSet:
    """Decode every image ``folder/<name>`` once, sized as :func:`_add_image` says.

    A file that cannot be decoded is a CamlabError naming it; with ``skip_bad`` it is left out
    instead (its label and name too, so the three lists stay aligned) and listed in
    ``ImageSet.skipped``. Leaving out every file is still an error: an empty split would only
    fail later, with a message that no longer says why.
    """
    arrays, kept, skipped, first_error = [], [], [], None
    for index, name in enumerate(tqdm(names, desc=f"decoding {folder.name}", unit="img",
                                      disable=None if progress else True, leave=False)):
        try:
            image = decode_image(folder / name)
        except CamlabError as err:
            if not skip_bad:
                raise
            skipped.append(name)
            first_error = first_error or err
            continue
        _add_image(arrays, image, img_size)
        kept.append(index)
    if first_error is not None and not kept:
        raise CamlabError(f"no image in {folder} can be decoded: all {len(skipped)} were skipped "
                          f"(the first: {utils.reason(first_error, limit=500)})")
    images = np.stack(arrays) if arrays else np.zeros((0, img_size, img_size, 3), np.uint8)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                    [names[i] for i in kept], list(classes), skipped)


def _add_image(arrays: list[np.ndarray], image: np.ndarray, img_size: int) -> None:
    """Append ``image`` to ``arrays`` (in place) so that all share one size: their own while
    they agree, else ``img_size``×``img_size`` (from the first image of another size on, the
    earlier ones are resized too). Resizing as they come, not at the end, keeps only stored-size
    arrays in memory when a folder holds large photos."""
    if arrays and image.shape != arrays[0].shape:
        if arrays[0].shape != (img_size, img_size, 3):
            arrays[:] = [_resize(a, img_size) for a in arrays]
        image = _resize(image, img_size)
    arrays.append(image)


def decode_image(path: Path | str) -> np.ndarray:
    """The image at ``path`` as uint8 H×W×3 RGB; grey is repeated, alpha dropped, 16 bits
    scaled to 8. Read through ``np.fromfile`` so that any path the OS accepts works."""
    return _to_rgb8(_imread(path, cv2.IMREAD_UNCHANGED, "image"), path)


def _imread(path: Path | str, flags: int, what: str) -> np.ndarray:
    """cv2's decoder on the file's bytes; a missing, unreadable or undecodable file is a
    CamlabError naming it (one line: cv2's own messages span several)."""
    try:
        image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flags)
    except (OSError, ValueError, cv2.error) as err:
        raise CamlabError(f"cannot read {what} {path}: {utils.reason(err)}") from None
    if image is None:
        raise CamlabError(f"cannot read {what} {path}: not a decodable image file")
    return image


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
    raw = _imread(path, cv2.IMREAD_GRAYSCALE, "mask")
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
_CACHE_VERSION = 1  # bump when decoding changes, so old cache files are not used


def _cache_key(settings: list, files: list[Path]) -> str:
    """sha1 of the settings and each file's path, size and modification time."""
    digest = hashlib.sha1(json.dumps(settings).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cached(cache_dir: Path | None, key: str, build: Callable[[], ImageSet]) -> ImageSet:
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


def _write_cache(path: Path, payload: dict) -> None:
    try:
        utils.atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as err:
        raise CamlabError(f"cannot write the data cache {path} ({err.strerror}); make its "
                          f"folder writable or disable the cache") from None


# ------------------------------------------------------------------- batches and model input
def batch_indices(indices: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                  epoch: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Split ``indices`` (int64, e.g. one k-fold part) into batches of ``batch_size`` (the last
    may be smaller). When shuffling, epoch ``epoch``'s order is a permutation drawn from a
    generator seeded by ``(seed, epoch)`` alone, so a resumed run (or another process) repeats
    it without saved generator state.

    With ``world`` > 1 processes, process ``rank`` keeps its shard of that order: in training
    (``shuffle``) torch's DistributedSampler's, padded so that every process steps equally
    often (DDP needs that); in evaluation every ``world``-th index, so no image counts twice.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shuffle:
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(indices), generator=generator)
        indices = indices[order.to(indices.device)]
    if world > 1:
        sampler = DistributedSampler(range(len(indices)), num_replicas=world, rank=rank, shuffle=False)
        indices = indices[torch.tensor(list(sampler))] if shuffle else indices[rank::world]
    return list(indices.split(batch_size))


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed for epoch ``epoch`` of a run seeded ``seed`` (all non-negative);
    ``stream`` tells apart the independent draws of one epoch (0: the batch order).

    ``np.random.SeedSequence`` mixes the numbers, so that different triples never share a stream
    by accident (as ``seed + epoch`` would for (1, 2) and (2, 1)).
    """
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def to_model_input(images: torch.Tensor, img_size: int,
                   flip: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 N×3×H×W -> float32 N×3×img_size×img_size, normalised with the ImageNet mean and
    std, on the same device. ``flip`` (bool N) mirrors the chosen images left-right."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 N×3×H×W images, got {images.dtype} {tuple(images.shape)}")
    x = images.float()
    if flip is not None:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    height, width = x.shape[-2:]
    if (height, width) != (img_size, img_size):
        shrinking = height > img_size or width > img_size  # antialiasing only helps when shrinking
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False,
                          antialias=shrinking)
    mean = torch.tensor(utils.IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(utils.IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


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


def encode_png(image: np.ndarray) -> bytes:
    """uint8 H×W (grey) or H×W×3 (RGB) as PNG bytes. The generator writes them straight into
    its temporary folder (renamed whole when done); outputs go through an atomic write."""
    ok, buffer = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise CamlabError(f"cannot encode a {image.dtype} {image.shape} array as PNG")
    return buffer.tobytes()


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
