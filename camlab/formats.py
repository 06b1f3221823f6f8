"""The registry of on-disk dataset formats: one ``Format`` record per format (its splits and their roles, reader, ground truth, label form), and the localisation ground truth it reads.

A format is added by building one :class:`Format` and passing it to :func:`register`; nothing
else in camlab branches on a format's name. ``camlab.readers`` and ``camlab.wsolmeta`` register
the benchmark formats, ``dataloader.py`` the lab's own layout.

Each format names its splits and which of them plays which role (:data:`ROLES`): "train" is what
training reads, "fit" where thresholds and hyperparameters are chosen (never the test split),
"test" what is reported. Where a role names several splits, the first one the dataset holds is
taken (:func:`split_for`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from camlab.images import DecodeOptions, ImageSet
from camlab.utils import CamlabError, add_to_registry

ROLES = ("train", "fit", "test")
IGNORE = 255  # the mask value of pixels that count nowhere (VOC's void, OpenImages' ignore regions)

# CIFAR-10's class names in its label order (its batches.meta), for a lab-layout folder without
# meta.json: the course's cifar-10-cam-seg-data.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Listing:
    """What a reader found before decoding anything.

    files: every file the split's content depends on (their stats form the cache key).
    decode: ``decode(options) -> ImageSet`` does the expensive part (``camlab.images.DecodeOptions``).
    image_dir: the folder the names are relative to, when not ``<root>/<split>``.
    classes: the class names the files declare (known before decoding), when the reader knows them.
    stream: ``stream(options, workers) -> camlab.stream.StreamSet``, the split read per batch from
      disk instead (``--data_in_memory``); None: the format is read as a whole (CIFAR's pickles, VOC).
    """

    files: list[Path]
    decode: Callable[["DecodeOptions"], ImageSet]
    image_dir: Path | None = None
    classes: list[str] | None = None
    stream: Callable[["DecodeOptions", int], object] | None = None


@dataclass
class Truth:
    """A split's localisation ground truth, in the frame of its decoded images (``ImageSet``
    ``images.shape[-2:]``) and in the order of its ``names``.

    boxes: per image, int64 k×4 ``(x0, y0, x1, y1)``, wsolevaluation's convention (inclusive
      pixel corners), rescaled from the original image size as wsolevaluation rescales them.
    masks: uint8 N×H×W, 1 foreground, 0 background, 255 ignore.
    classes: uint8 N×H×W class indices for semantic segmentation (0 background, c + 1 for class
      c, 255 void): the datasets with per-class masks (voc, multi); None for the others.
    """

    boxes: list[np.ndarray] | None = None
    masks: np.ndarray | None = None
    classes: np.ndarray | None = None
    box_faults: int = 0  # boxes outside their image or of zero area in the annotations (wsol)
    first_fault: str = ""

    def check_boxes(self, strict: bool, source: str = "the ground truth") -> None:
        """``--strict_boxes``: refuse boxes outside their image or of zero area, in one line."""
        if strict and self.box_faults:
            raise CamlabError(f"{source}: {self.box_faults} boxes outside their image or of zero area (the first: "
                              f"{self.first_fault}); --strict_boxes refuses them")


# (root, split, num_classes or None, metadata folder or None) -> Listing
Reader = Callable[[Path, str, "int | None", "Path | None"], Listing]
# (root, split, the decoded split or a subset of it, its frame (H, W), metadata) -> Truth or None
TruthReader = Callable[[Path, str, ImageSet, "tuple[int, int]", "Path | None"], "Truth | None"]


@dataclass(frozen=True)
class Format:
    """One on-disk dataset format (a ``--dataset`` choice).

    name: the ``--dataset`` value; about: its one-line description for ``--help``.
    splits: the split names it has; roles: role (:data:`ROLES`) -> the splits that may play it,
      in order of preference (see :func:`split_for`).
    read: lists a split's files (:data:`Reader`); truth: reads its boxes or masks (None: none).
    root_hint: what the data root must hold, for the error when it does not.
    multi_label: its ImageSet knows every class present in an image (``present``), so
      ``--multi_label`` and semantic segmentation apply.
    needs_metadata: it reads ``--metadata`` (and is refused without it; the others refuse it).
    boxes_from_masks: where its test split has masks but no boxes, box measures use the masks'
      boxes (wsolevaluation scores OpenImages by PxAP alone: False there).
    has_split: ``(root, split) -> bool`` for splits that may be absent (voc's train_aug).
    note: printed once per process when a split of it is loaded.
    download: ``(root, split) -> None`` fetches it (``--download``); None: it cannot be fetched.
    example: ``folder -> (root, metadata or None)`` writes a tiny dataset of this format under
      ``folder`` (a few 16-32 px images in every split, with ground truth where the format has
      it): what the tests read every registered format from, and a template for users.
    """

    name: str
    about: str
    splits: tuple[str, ...]
    roles: dict[str, tuple[str, ...]]
    read: Reader
    truth: TruthReader | None = None
    root_hint: str = ""
    multi_label: bool = False
    needs_metadata: bool = False
    boxes_from_masks: bool = True
    has_split: Callable[[Path, str], bool] | None = None
    note: str | None = None
    download: Callable[[Path, str], None] | None = None
    example: Callable[[Path], "tuple[Path, Path | None]"] | None = None

    def __post_init__(self) -> None:
        if set(self.roles) != set(ROLES) or any(s not in self.splits for c in self.roles.values() for s in c):
            raise ValueError(f"format {self.name!r}: roles must map each of {ROLES} to some of its splits")


FORMATS: dict[str, Format] = {}


def register(fmt: Format, first: bool = False) -> Format:
    """Add ``fmt`` to :data:`FORMATS` (its name must be new) and return it; ``first`` lists it
    before the others (the default format, first in ``--help``)."""
    return add_to_registry(FORMATS, fmt.name, fmt, "dataset format", first)


def get(name: str) -> Format:
    """The registered format ``name``, else a one-line CamlabError listing the choices."""
    if name not in FORMATS:
        raise CamlabError(f"unknown dataset {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def check_split(name: str, split: str) -> None:
    splits = get(name).splits
    if split not in splits:
        raise CamlabError(f"unknown split {split!r} for --dataset {name}; choose one of {', '.join(splits)}")


def split_for(name: str, role: str, root: Path | str | None = None) -> str:
    """The split of dataset ``name`` that plays ``role`` (one of :data:`ROLES`). ``root`` is
    needed only where the answer depends on what the dataset holds (voc's training split:
    ``train_aug`` when the augmented set is there, else ``train``)."""
    fmt = get(name)
    if role not in ROLES:
        raise CamlabError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    candidates = fmt.roles[role]
    if len(candidates) == 1:
        return candidates[0]
    if root is None:
        raise ValueError(f"split_for({name!r}, {role!r}) needs the dataset's root: "
                         f"it takes the first of {', '.join(candidates)} that is there")
    present = fmt.has_split or (lambda _root, _split: True)
    return next((s for s in candidates[:-1] if present(Path(root), s)), candidates[-1])


def check_metadata(name: str, metadata: Path | str | None) -> None:
    """``--metadata`` is for the formats that read it, and they need it: one line naming the
    flag otherwise."""
    fmt = get(name)
    if fmt.needs_metadata and metadata is None:
        raise CamlabError(f"--dataset {name} needs --metadata: the metadata folder of one dataset "
                          f"(e.g. wsolevaluation/metadata/CUB)")
    if metadata is not None and not fmt.needs_metadata:
        readers = " or ".join(f"--dataset {f.name}" for f in FORMATS.values() if f.needs_metadata)
        raise CamlabError(f"--metadata only applies to {readers}, not --dataset {name}")
    if metadata is not None and not str(metadata).strip():
        raise CamlabError("--metadata is empty: name the metadata folder of one dataset "
                          "(e.g. wsolevaluation/metadata/CUB)")


def multi_label_formats() -> list[str]:
    """The formats whose ImageSet knows every class present in an image."""
    return [f.name for f in FORMATS.values() if f.multi_label]


def check_num_classes(expected: int | None, found: int, source: Path) -> None:
    if expected is not None and expected != found:
        raise CamlabError(f"{found} classes in {source}, but {expected} were asked for")


def check_names(names: list[str], known: list[str], source: Path) -> None:
    """Ground truth is read for the images of the split it belongs to."""
    missing = sorted(set(names) - set(known))
    if missing:
        raise CamlabError(f"image {missing[0]!r} is not in {source}: ground truth is read for the split "
                          f"the images came from")


def to_frame(mask: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """``mask`` resized to ``frame`` (H, W) by nearest neighbour, as wsolevaluation resizes masks."""
    if mask.shape == frame:
        return mask
    return cv2.resize(mask, (frame[1], frame[0]), interpolation=cv2.INTER_NEAREST)


def stack_masks(masks: list[np.ndarray], frame: tuple[int, int]) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, *frame), np.uint8)
