"""The reader of clovaai/wsolevaluation's metadata format (CUB, ILSVRC, OpenImages), registered as the ``wsol`` format: images named by ``<metadata>/<split>/image_ids.txt``, labels, sizes and boxes or instance masks beside them.

Every line of every metadata file is checked, and a bad one is a one-line error naming the file
and the line. Boxes are rescaled to the decoded frame as wsolevaluation's ``resize_bbox`` does;
OpenImages masks are resized by nearest neighbour, the union of the instance masks is the
foreground, and ignore = (ignore mask) minus foreground, coded 255. Splits: ``train`` trains,
``val`` (train-fullsup) chooses thresholds, ``test`` is only reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from camlab.formats import IGNORE, Format, Listing, Truth, check_names, check_num_classes, register, stack_masks, to_frame
from camlab.images import DecodeOptions, ImageSet, decode_files, example_images, imread, note_once
from camlab.stream import stream_files
from camlab.utils import CamlabError, read_text


# ------------------------------------------------------------------- format: wsolevaluation
WSOL_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")


_BOX_FORM = "<image id>,x0,y0,x1,y1"


_MASK_FORM = "<image id>,<mask path>,<ignore path>"


_ONE = {"boxes": "box", "masks": "mask"}


@dataclass
class _WsolSplit:
    """One split's metadata, checked line by line.

    ids: image_ids.txt's order; labels: one per id; classes: ``"0"`` ... from train's labels.
    sizes: id -> original (width, height), from image_sizes.txt (may be empty).
    kind: ``"boxes"``, ``"masks"`` or None when localization.txt is empty.
    boxes: id -> [(x0, y0, x1, y1), ...] in the original frame (kind ``"boxes"``).
    masks, ignore: id -> the instance mask paths, and the ignore mask path (kind ``"masks"``),
      relative to the image root.
    files: the metadata files read.
    """

    ids: list[str]
    labels: list[int]
    classes: list[str]
    sizes: dict[str, tuple[int, int]]
    kind: str | None
    boxes: dict[str, list[tuple[int, int, int, int]]]
    masks: dict[str, list[str]]
    ignore: dict[str, str]
    files: list[Path]
    box_faults: int = 0  # boxes outside their image or of zero area (scored as given, as wsolevaluation does)
    first_fault: str = ""


def _list_wsol(root: Path, split: str, num_classes: int | None,
               metadata: Path | None = None) -> Listing:
    assert metadata is not None  # load_split checked it
    info = _wsol_split(root, metadata, split, check_files=True)
    check_num_classes(num_classes, len(info.classes), metadata / "train" / "class_labels.txt")

    def decode(options: DecodeOptions) -> ImageSet:
        return decode_files(root, info.ids, info.labels, info.classes, options)
    return Listing(info.files + [root / i for i in info.ids], decode, image_dir=root, classes=list(info.classes),
                   stream=lambda options, workers: stream_files(root, info.ids, info.labels, info.classes, options, workers))


def _csv_lines(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, comma-separated fields)`` of every non-blank line of ``path``."""
    text = read_text(path, "wsol metadata file")
    return [(no, line.strip().split(",")) for no, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _expect_fields(fields: list[str], n: int, where: str, form: str) -> None:
    if len(fields) != n:
        raise CamlabError(f"{where}: {len(fields)} comma-separated field{'s' if len(fields) != 1 else ''}, "
                          f"expected {n} ({form})")


def _field_int(text: str, where: str, what: str, low: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CamlabError(f"{where}: {what} {text!r} is not an integer") from None
    if value < low:
        raise CamlabError(f"{where}: {what} {value} is below {low}")
    return value


def _known_id(image_id: str, ids: dict[str, int], where: str, ids_path: Path) -> None:
    if image_id not in ids:
        raise CamlabError(f"{where}: image {image_id!r} is not in {ids_path}")


def _wsol_labels(path: Path) -> list[tuple[int, str, int]]:
    """``(line number, image id, label)`` of each line of a class_labels.txt."""
    out = []
    for no, fields in _csv_lines(path):
        where = f"{path}, line {no}"
        _expect_fields(fields, 2, where, "<image id>,<label>")
        out.append((no, fields[0], _field_int(fields[1], where, "label")))
    return out


def _wsol_split(root: Path, metadata: Path, split: str, check_files: bool) -> _WsolSplit:
    """Read and check ``metadata/<split>/``'s four files; with ``check_files`` every listed image
    (and instance or ignore mask) must exist under ``root``."""
    if not metadata.is_dir():
        raise CamlabError(f"wsol metadata folder {metadata} does not exist (--metadata names the metadata "
                          f"folder of one dataset, e.g. wsolevaluation/metadata/CUB)")
    paths = {name: metadata / split / name for name in WSOL_FILES}
    ids_path, labels_path = paths["image_ids.txt"], paths["class_labels.txt"]
    first: dict[str, int] = {}  # id -> its line in image_ids.txt
    for no, fields in _csv_lines(ids_path):
        where = f"{ids_path}, line {no}"
        _expect_fields(fields, 1, where, "<image id>")
        image_id = fields[0]
        if image_id in first:
            raise CamlabError(f"{where}: image {image_id!r} repeats line {first[image_id]}")
        if check_files and not (root / image_id).is_file():
            raise CamlabError(f"{where}: image {root / image_id} is missing")
        first[image_id] = no
    if not first:
        raise CamlabError(f"{ids_path} lists no images")

    # the classes: "0" ... up to the largest label of the training split, for every split
    train_labels_path = metadata / "train" / "class_labels.txt"
    train_labels = _wsol_labels(train_labels_path)
    if not train_labels:
        raise CamlabError(f"{train_labels_path} lists no labels: the classes are read from it")
    classes = [str(i) for i in range(1 + max(label for _, _, label in train_labels))]
    labels: dict[str, tuple[int, int]] = {}  # id -> (label, line)
    for no, image_id, label in train_labels if split == "train" else _wsol_labels(labels_path):
        where = f"{labels_path}, line {no}"
        _known_id(image_id, first, where, ids_path)
        if image_id in labels:
            raise CamlabError(f"{where}: a second label for image {image_id!r} (the first is on line "
                              f"{labels[image_id][1]})")
        if label >= len(classes):
            raise CamlabError(f"{where}: label {label} is out of range [0, {len(classes)}) "
                              f"(the classes of {train_labels_path})")
        labels[image_id] = (label, no)
    for image_id, no in first.items():
        if image_id not in labels:
            raise CamlabError(f"{ids_path}, line {no}: image {image_id!r} has no label in {labels_path}")

    sizes_path = paths["image_sizes.txt"]
    sizes: dict[str, tuple[int, int]] = {}
    size_line: dict[str, int] = {}
    for no, fields in _csv_lines(sizes_path):
        where = f"{sizes_path}, line {no}"
        _expect_fields(fields, 3, where, "<image id>,<width>,<height>")
        _known_id(fields[0], first, where, ids_path)
        if fields[0] in sizes:
            raise CamlabError(f"{where}: a second size for image {fields[0]!r} (the first is on line "
                              f"{size_line[fields[0]]})")
        sizes[fields[0]] = (_field_int(fields[1], where, "width", 1), _field_int(fields[2], where, "height", 1))
        size_line[fields[0]] = no

    kind, boxes, masks, ignore, faults = _wsol_localization(root, paths["localization.txt"], first, ids_path,
                                                            sizes, sizes_path, check_files)
    ids = list(first)
    if faults:
        note_once(f"{paths['localization.txt']}: {len(faults)} box{'es' if len(faults) > 1 else ''} outside "
                  f"{'their images' if len(faults) > 1 else 'its image'} or of zero area (the first: {faults[0]}); "
                  f"scored as given, as wsolevaluation does (--strict_boxes refuses them)", "warning")
    return _WsolSplit(ids, [labels[i][0] for i in ids], classes, sizes, kind, boxes, masks, ignore,
                      list(paths.values()) + ([] if split == "train" else [train_labels_path]), len(faults),
                      faults[0] if faults else "")


def _wsol_localization(root: Path, path: Path, first: dict[str, int], ids_path: Path,
                       sizes: dict[str, tuple[int, int]], sizes_path: Path, check_files: bool):
    """``(kind, boxes, masks, ignore)`` from localization.txt (see :class:`_WsolSplit`). Boxes
    are ``id,x0,y0,x1,y1`` lines (several per image: several boxes), masks ``id,mask,ignore``
    lines (one per instance; only an image's first line names its ignore mask). A file that
    mixes them is refused; every image of the split needs a box or a mask, and a box its size."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    masks: dict[str, list[str]] = {}
    ignore: dict[str, str] = {}
    faults: list[str] = []
    kind, kind_line = None, 0
    for no, fields in _csv_lines(path):
        where = f"{path}, line {no}"
        if len(fields) == 3 and not _is_int(fields[1]):
            line_kind = "masks"
        elif len(fields) == 5:
            line_kind = "boxes"
        elif len(fields) == 3:
            raise CamlabError(f"{where}: 3 comma-separated fields with a number second: a box needs 5 "
                              f"({_BOX_FORM}), a mask line names files ({_MASK_FORM})")
        else:
            raise CamlabError(f"{where}: {len(fields)} comma-separated fields, expected 5 for a box "
                              f"({_BOX_FORM}) or 3 for a mask ({_MASK_FORM})")
        if kind is None:
            kind, kind_line = line_kind, no
        elif line_kind != kind:
            raise CamlabError(f"{where}: a {_ONE[line_kind]} line, but line {kind_line} holds a {_ONE[kind]}: "
                              f"one localization.txt holds boxes or masks, not both")
        image_id = fields[0]
        _known_id(image_id, first, where, ids_path)
        if kind == "boxes":
            x0, y0, x1, y1 = (_field_int(t, where, name) for t, name in zip(fields[1:], ("x0", "y0", "x1", "y1")))
            if x1 < x0 or y1 < y0:
                raise CamlabError(f"{where}: box ({x0}, {y0}, {x1}, {y1}) has x1 < x0 or y1 < y0 "
                                  f"(expected {_BOX_FORM})")
            if image_id not in sizes:
                raise CamlabError(f"{where}: image {image_id!r} has no size in {sizes_path}")
            (w, h), box = sizes[image_id], (x0, y0, x1, y1)
            if x1 > w or y1 > h:
                faults.append(f"line {no}, box {box} outside the {w}×{h} image")
            elif x1 == x0 or y1 == y0:
                faults.append(f"line {no}, box {box} of zero area")
            boxes.setdefault(image_id, []).append(box)
            continue
        mask_path, ignore_path = fields[1], fields[2]
        if not mask_path:
            raise CamlabError(f"{where}: no mask path (expected {_MASK_FORM})")
        if image_id in masks and ignore_path:
            raise CamlabError(f"{where}: a second ignore mask for image {image_id!r} (only an image's first "
                              f"line names it; later lines end with an empty field)")
        if image_id not in masks and not ignore_path:
            raise CamlabError(f"{where}: the first mask line of image {image_id!r} names no ignore mask "
                              f"(expected {_MASK_FORM})")
        for what, rel in (("mask", mask_path), ("ignore mask", ignore_path)):
            if rel and check_files and not (root / rel).is_file():
                raise CamlabError(f"{where}: {what} {root / rel} is missing")
        masks.setdefault(image_id, []).append(mask_path)
        if ignore_path:
            ignore[image_id] = ignore_path
    if kind is not None:
        found = boxes if kind == "boxes" else masks
        for image_id, no in first.items():
            if image_id not in found:
                raise CamlabError(f"{path}: no {_ONE[kind]} for image {image_id!r} ({ids_path}, line {no})")
    return kind, boxes, masks, ignore, faults


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _wsol_truth(root: Path, split: str, data: ImageSet, frame: tuple[int, int],
                metadata: Path | None) -> Truth | None:
    assert metadata is not None  # ground_truth checked it
    info = _wsol_split(root, metadata, split, check_files=False)
    if info.kind is None:
        return None
    check_names(data.names, info.ids, metadata / split / "image_ids.txt")
    found = [image_truth(info, root, name, frame) for name in data.names]
    if info.kind == "boxes":
        return Truth(boxes=found, box_faults=info.box_faults, first_fault=info.first_fault)
    return Truth(masks=stack_masks(found, frame))


def read_split(root: Path | str, metadata: Path | str, split: str, check_files: bool = False) -> "_WsolSplit":
    """One split's metadata, every line checked (a bad one is a one-line error naming the file and
    line); ``check_files``: every listed image and mask must exist under ``root``."""
    return _wsol_split(Path(root), Path(metadata), split, check_files)


def image_truth(info: "_WsolSplit", root: Path, name: str, frame: tuple[int, int]) -> np.ndarray:
    """The ground truth of image ``name`` in a frame of ``frame`` (H, W), as wsolevaluation reads
    it: its boxes (int64 K×4, ``resize_bbox``: each coordinate times the frame over the original
    size, then ``int``), or its mask (uint8 H×W: the union of the instance masks resized by nearest
    neighbour, 1; ignore, 255; background, 0)."""
    height, width = frame
    if info.kind == "boxes":
        w, h = info.sizes[name]
        return np.array([[int(x0 * width / w), int(y0 * height / h), int(x1 * width / w), int(y1 * height / h)]
                         for x0, y0, x1, y1 in info.boxes[name]], np.int64).reshape(-1, 4)
    foreground = np.zeros(frame, bool)
    for rel in info.masks[name]:  # evaluation.get_mask: nearest resize, > 0.5, union
        foreground |= to_frame(imread(root / rel, cv2.IMREAD_GRAYSCALE, "mask"), frame) > 0
    ignore = to_frame(imread(root / info.ignore[name], cv2.IMREAD_GRAYSCALE, "ignore mask"), frame) > 0
    out = foreground.astype(np.uint8)
    out[ignore & ~foreground] = IGNORE
    return out


def _example_wsol(top: Path) -> tuple[Path, Path]:
    """A CUB-like tree: 16×16 images named by their class folder, a box around each square (val
    and test; train's localization.txt is empty, as the real benchmark's), every metadata file."""
    root, meta = top / "wsol" / "images", top / "wsol" / "metadata"
    images, labels = example_images(12)
    splits = {"train": range(6), "val": range(6, 9), "test": range(9, 12)}
    for split, ids in splits.items():
        names = [f"{labels[i]:03d}.c/{i:02d}.png" for i in ids]
        for i, name in zip(ids, names):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), images[i][:, :, ::-1])
        boxes = [] if split == "train" else [f"{n},{_box_of(images[i])}" for i, n in zip(ids, names)]
        files = {"image_ids.txt": names, "class_labels.txt": [f"{n},{labels[i]}" for i, n in zip(ids, names)],
                 "image_sizes.txt": [] if split == "train" else [f"{n},16,16" for n in names],
                 "localization.txt": boxes}
        for file, lines in files.items():
            (meta / split).mkdir(parents=True, exist_ok=True)
            (meta / split / file).write_text("".join(f"{line}\n" for line in lines))
    return root, meta


def _box_of(image: np.ndarray) -> str:
    ys, xs = np.nonzero((image != 128).any(axis=2))
    return f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"


WSOL = register(Format(
    "wsol", "wsolevaluation's metadata format (CUB, ILSVRC, OpenImages; needs --metadata)", ("train", "val", "test"),
    {"train": ("train",), "fit": ("val",), "test": ("test",)}, _list_wsol, _wsol_truth,
    root_hint="it must hold the images that --metadata's <split>/image_ids.txt names (e.g. wsolevaluation's dataset/CUB)",
    needs_metadata=True, boxes_from_masks=False, example=_example_wsol))
