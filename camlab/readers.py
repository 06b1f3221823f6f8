"""Readers of the benchmark formats beyond the lab's layout: CIFAR-10's pickles, ImageFolder trees, PASCAL VOC 2012 and the embedded multi-object scenes (VOC's layout), each registered as one ``Format``.

* ``cifar10`` - the python pickles ``cifar-10-batches-py/`` (read with a restricted unpickler).
* ``folder`` - an ImageFolder tree ``train/<class>/<image>`` and ``test/<class>/<image>``.
* ``voc`` - PASCAL VOC 2012 (the root is ``VOCdevkit/VOC2012``) with its segmentation masks:
  splits ``train``, ``val`` and, when SegmentationClassAug is there, ``train_aug``. Single-label:
  an image's label is its largest class (by pixels); every present class is kept too.
* ``multi`` - the embedded multi-object scenes (``camlab.synthetic.generate_multi``), written in
  VOC's layout and read by the voc reader: 1-3 classes per image.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import folder as tv_folder

from camlab import synthetic, utils
from camlab.formats import (IGNORE, Format, Listing, Truth, check_names, check_num_classes, register, stack_masks,
                            to_frame)
from camlab.images import DecodeOptions, ImageSet, decode_each, decode_files, decode_image, example_images
from camlab.stream import stream_files
from camlab.utils import CamlabError, read_text

FOLDER_HINT = "it must hold train/<class>/<images> and test/<class>/<images>"
CIFAR_HINT = "it must hold cifar-10-batches-py/; pass --download to fetch it (needs a network)"


# --------------------------------------------------------------------- format: ImageFolder
def _list_folder(root: Path, split: str, num_classes: int | None,
                 metadata: Path | None = None) -> Listing:
    classes = _folder_classes(root / split)
    other = _folder_classes(root / ("test" if split == "train" else "train"))
    if classes != other:
        differ = sorted(set(classes) ^ set(other))
        raise CamlabError(f"{root}: train/ and test/ must hold the same class folders; "
                          f"they differ in {differ}")
    check_num_classes(num_classes, len(classes), root / split)
    try:
        samples = tv_folder.make_dataset(root / split, {c: i for i, c in enumerate(classes)},
                                         extensions=tv_folder.IMG_EXTENSIONS)
    except FileNotFoundError as err:  # a class folder without images
        raise CamlabError(f"{root / split}: {err}") from None
    paths = [Path(p) for p, _ in samples]
    labels = [label for _, label in samples]
    names = [p.relative_to(root / split).as_posix() for p in paths]

    def decode(options: DecodeOptions) -> ImageSet:
        return decode_files(root / split, names, labels, classes, options)
    return Listing(paths, decode, classes=list(classes),
                   stream=lambda options, workers: stream_files(root / split, names, labels, classes, options, workers))


def _folder_classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise CamlabError(f"{split_dir} does not exist ({FOLDER_HINT})")
    try:
        classes, _ = tv_folder.find_classes(split_dir)
    except FileNotFoundError:
        raise CamlabError(f"{split_dir} has no class folders ({FOLDER_HINT})") from None
    return classes


# ------------------------------------------------------------------------ format: CIFAR-10
_CIFAR_DIR = "cifar-10-batches-py"


_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _list_cifar10(root: Path, split: str, num_classes: int | None,
                  metadata: Path | None = None) -> Listing:
    base = root / _CIFAR_DIR
    files = [base / name for name in _CIFAR_BATCHES[split] + ["batches.meta"]]
    for path in files:
        if not path.is_file():
            raise CamlabError(f"CIFAR-10 file {path} is missing ({CIFAR_HINT})")
    label_names = _read_pickle(files[-1]).get(b"label_names")
    if not isinstance(label_names, list) or not label_names:
        raise CamlabError(f"{files[-1]} has no b'label_names' list")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in label_names]
    check_num_classes(num_classes, len(classes), files[-1])
    # skip_bad does not apply: the batches are arrays, not separately decoded image files
    return Listing(files, lambda options: _decode_cifar10(files[:-1], classes), classes=list(classes))


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


def _download_cifar10(root: Path, split: str) -> None:
    """Let torchvision fetch and verify CIFAR-10 into ``root`` (skipped when already there)."""
    from torchvision.datasets import CIFAR10  # only needed here
    try:
        CIFAR10(str(root), train=split == "train", download=True)
    except Exception as err:  # network and archive errors come in many types; all end here
        raise CamlabError(f"cannot download CIFAR-10 into '{root}': {utils.reason(err)}") from None


# ---------------------------------------------------------------------- format: PASCAL VOC
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")  # VOC indices 1..20; label = index - 1


VOC_IGNORE = IGNORE  # VOC's void


VOC_NOTE = "voc: single-label use takes each image's largest class (by pixels)"


_VOC_SETS = Path("ImageSets") / "Segmentation"


_VOC_AUG_LISTS = ("trainaug.txt", "train_aug.txt")


def _voc_aug_list(root: Path) -> Path | None:
    """The augmented set's list when ``root`` holds SegmentationClassAug/ and one, else None."""
    if not (root / "SegmentationClassAug").is_dir():
        return None
    return next((p for p in (root / _VOC_SETS / n for n in _VOC_AUG_LISTS) if p.is_file()), None)


def _voc_entries(root: Path, split: str, check_files: bool = True) -> tuple[Path, list[tuple[str, Path]]]:
    """The split's list file and ``(image name relative to root, mask path)`` per listed image.
    A line is an image id (``2007_000032``), or DeepLab's ``/JPEGImages/<id>.jpg
    /SegmentationClassAug/<id>.png`` (paths relative to the root)."""
    if split == "train_aug":
        list_path = _voc_aug_list(root)
        if list_path is None:
            raise CamlabError(f"{root} holds no augmented VOC set: split train_aug needs SegmentationClassAug/ "
                              f"and {_VOC_SETS / _VOC_AUG_LISTS[0]} (or {_VOC_AUG_LISTS[1]})")
        mask_dir = "SegmentationClassAug"
    else:
        list_path, mask_dir = root / _VOC_SETS / f"{split}.txt", "SegmentationClass"
    entries: list[tuple[str, Path]] = []
    first: dict[str, int] = {}
    for no, line in enumerate(read_text(list_path, "VOC split list").split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_path}, line {no}"
        if len(fields) == 1:
            name, mask = f"JPEGImages/{fields[0]}.jpg", f"{mask_dir}/{fields[0]}.png"
        elif len(fields) == 2:
            name, mask = (f.lstrip("/") for f in fields)
        else:
            raise CamlabError(f"{where}: {len(fields)} fields, expected an image id, or "
                              f"'/JPEGImages/<id>.jpg /{mask_dir}/<id>.png'")
        if name in first:
            raise CamlabError(f"{where}: image {name!r} repeats line {first[name]}")
        for what, rel in (("image", name), ("mask", mask)):
            if check_files and not (root / rel).is_file():
                raise CamlabError(f"{where}: {what} {root / rel} is missing")
        first[name] = no
        entries.append((name, root / mask))
    if not entries:
        raise CamlabError(f"VOC split list {list_path} lists no images")
    return list_path, entries


def voc_classes(root: Path | str) -> list[str]:
    """The classes of a VOC-layout root: VOC's twenty, or those the meta.json of camlab's
    multi-object set names (``synthetic.generate_multi`` writes VOC's layout)."""
    meta = synthetic.read_meta(root, "multi")
    return list(VOC_CLASSES) if meta is None else list(meta["classes"])


def _list_voc(root: Path, split: str, num_classes: int | None,
              metadata: Path | None = None) -> Listing:
    list_path, entries = _voc_entries(root, split)
    classes = voc_classes(root)
    check_num_classes(num_classes, len(classes), list_path)
    files = [list_path] + [p for name, mask in entries for p in (root / name, mask)]
    if (root / "meta.json").exists():
        files.append(root / "meta.json")
    return Listing(files, lambda options: _decode_voc(root, entries, classes, options), image_dir=root,
                   classes=list(classes))


def _decode_voc(root: Path, entries: list[tuple[str, Path]], classes: list[str], options: DecodeOptions) -> ImageSet:
    """The images with their labels (the class with the most pixels; ties go to the lower VOC
    index) and every present class. An undecodable image or mask, a mask of another size than
    its image, or one without an object class is an error naming it (skipped with skip_bad)."""
    counts: dict[int, np.ndarray] = {}

    def load(index: int) -> np.ndarray:
        name, mask_path = entries[index]
        image = decode_image(root / name, options.max_pixels)
        mask = read_index_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise CamlabError(f"mask {mask_path} is {mask.shape[1]}×{mask.shape[0]}, but its image "
                              f"{root / name} is {image.shape[1]}×{image.shape[0]}")
        counts[index] = _voc_class_pixels(mask, mask_path, len(classes))
        return image
    names = [name for name, _ in entries]
    images, kept, skipped = decode_each(root, names, load, options)
    pixels = np.stack([counts[i] for i in kept]) if kept else np.zeros((0, len(classes)), np.int64)
    return ImageSet(images, torch.from_numpy(pixels.argmax(axis=1).astype(np.int64)), [names[i] for i in kept],
                    list(classes), skipped, present=torch.from_numpy(pixels > 0))


def _voc_class_pixels(mask: np.ndarray, path: Path, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """int64 K: the pixels of each object class in a VOC-layout mask (0 background, 1..K, 255 void)."""
    values = np.bincount(mask.ravel(), minlength=256)
    odd = np.flatnonzero(values[num_classes + 1:VOC_IGNORE])
    if odd.size:
        raise CamlabError(f"mask {path} holds the value {odd[0] + num_classes + 1} (VOC masks hold 0 "
                          f"background, 1..{num_classes} classes and {VOC_IGNORE} void)")
    pixels = values[1:num_classes + 1].astype(np.int64)
    if not pixels.any():
        raise CamlabError(f"mask {path} holds no object class (only background and void), so its image has no label")
    return pixels


def read_index_mask(path: Path | str) -> np.ndarray:
    """A class-index mask (VOC's palette 'P' PNGs, or grey 'L' ones such as SegmentationClassAug)
    as uint8 H×W indices; cv2 would return a palette PNG's colours, so PIL reads it."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise CamlabError(f"mask {path} is a mode {image.mode} image, not class indices "
                                  f"(a palette 'P' or grey 'L' PNG)")
            return np.array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise CamlabError(f"cannot read mask {path}: {utils.reason(err)}") from None


def _voc_truth(root: Path, split: str, data: ImageSet, frame: tuple[int, int],
               metadata: Path | None) -> Truth | None:
    list_path, entries = _voc_entries(root, split, check_files=False)
    mask_of = dict(entries)
    check_names(data.names, list(mask_of), list_path)
    masks, indices = [], []
    for name, label in zip(data.names, data.labels.tolist()):
        index = to_frame(read_index_mask(mask_of[name]), frame)
        out = (index == label + 1).astype(np.uint8)
        out[index == VOC_IGNORE] = VOC_IGNORE
        masks.append(out)
        indices.append(index)
    return Truth(masks=stack_masks(masks, frame), classes=stack_masks(indices, frame))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _example_cifar10(top: Path) -> tuple[Path, None]:
    """The five training batches and the test batch, three images each, as CIFAR-10's pickles."""
    root = top / "cifar10"
    images, labels = example_images(18, 32)
    flat = np.stack([im.transpose(2, 0, 1).reshape(-1) for im in images])
    for k, name in enumerate(_CIFAR_BATCHES["train"] + _CIFAR_BATCHES["test"]):
        batch = {b"data": flat[3 * k:3 * k + 3], b"labels": labels[3 * k:3 * k + 3]}
        _write(root / _CIFAR_DIR / name, pickle.dumps(batch, protocol=4))
    _write(root / _CIFAR_DIR / "batches.meta", pickle.dumps({b"label_names": [b"red", b"green", b"blue"]}, protocol=4))
    return root, None


def _example_folder(top: Path) -> tuple[Path, None]:
    root = top / "folder"
    images, labels = example_images(12)
    for i, (image, label) in enumerate(zip(images, labels)):
        _write(root / ("train" if i < 9 else "test") / ("red", "green", "blue")[label] / f"{i:02d}.png",
               utils.encode_png(image))
    return root, None


def _example_voc(top: Path) -> tuple[Path, None]:
    """VOC's layout: JPEG images, palette masks (each square its class, 255 on its border)."""
    root = top / "VOCdevkit" / "VOC2012"
    images, labels = example_images(9)
    for i, (image, label) in enumerate(zip(images, labels)):
        index = np.where((image != 128).any(axis=2), [1, 8, 15][label], 0).astype(np.uint8)
        index[0] = VOC_IGNORE
        mask = Image.fromarray(index, mode="P")
        mask.putpalette([0, 0, 0] * 256)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(root / "SegmentationClass" / f"2007_{i:06d}.png")
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"2007_{i:06d}.jpg", quality=95)
    for split, ids in (("train", range(6)), ("val", range(6, 9))):
        _write(root / _VOC_SETS / f"{split}.txt", "".join(f"2007_{i:06d}\n" for i in ids).encode())
    return root, None


def _example_multi(top: Path) -> tuple[Path, None]:
    root = top / "multi"
    synthetic.generate_multi(root, n_train=9, n_val=6, size=32, progress=False)
    return root, None


# ------------------------------------------------------------------------------- the records
TWO_SPLITS = {"train": ("train",), "fit": ("train",), "test": ("test",)}

CIFAR10 = register(Format(
    "cifar10", "the python-pickle CIFAR-10", ("train", "test"), TWO_SPLITS, _list_cifar10,
    root_hint=CIFAR_HINT, download=_download_cifar10, example=_example_cifar10))
FOLDER = register(Format("folder", "an ImageFolder tree", ("train", "test"), TWO_SPLITS, _list_folder,
                         root_hint=FOLDER_HINT, example=_example_folder))
VOC = register(Format(
    "voc", "PASCAL VOC 2012 with its segmentation masks (single-label: each image's largest class)",
    ("train", "val", "train_aug"), {"train": ("train_aug", "train"), "fit": ("train",), "test": ("val",)},
    _list_voc, _voc_truth,
    root_hint="it must be VOCdevkit/VOC2012, holding JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/",
    multi_label=True, has_split=lambda root, split: split != "train_aug" or _voc_aug_list(root) is not None,
    note=VOC_NOTE, example=_example_voc))
MULTI = register(Format(  # the embedded multi-object set, written in VOC's layout
    "multi", "the embedded multi-object scenes, 1-3 classes per image, in VOC's layout", synthetic.MULTI_SPLITS,
    {"train": ("train",), "fit": ("train",), "test": ("val",)}, _list_voc, _voc_truth,
    root_hint="it must hold the multi-object set in VOC's layout; leave --data_root out to use the generated one",
    multi_label=True, example=_example_multi))
