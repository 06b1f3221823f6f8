"""The lab's data: the handout's folder layout, ``load_split`` for every registered format, ground truth, and the per-batch steps that turn stored images into model input.

A split is decoded once into an ``ImageSet`` (``camlab.images``: all images as one uint8 tensor)
and kept whole in memory, on the training device if it fits; batches are then cut from it by
index. A split too large for memory (``--data_in_memory``) is a ``camlab.stream.StreamSet``
instead, read from disk per batch in worker processes; both give the same batches. Resizing, flipping and normalising happen per batch in :func:`to_model_input`, on the
device, instead of per image in worker processes: the images are small and the GPU (or the
vectorised CPU code) is much faster at it than a Python loop.

The lab's layout (``--dataset lab``, the default): ``train/``, ``test/``, ``train_cls.txt`` and
``test_cls.txt`` (``<file name> <label>`` per line), ``test_seg_source/`` and ``test_seg/`` (0/255
masks), and optionally ``<split>_masks/`` with every image's mask. The default root
``data/synthetic`` is the embedded benchmark, generated on first use
(``camlab.synthetic.generate_synthetic``). The other formats (``--dataset cifar10``, ``folder``,
``wsol``, ``voc``, ``multi``) are registered by ``camlab.readers`` and ``camlab.wsolmeta``: each
is one ``camlab.formats.Format`` record naming its splits, which split plays which role
(:func:`split_for`: what training reads, where thresholds are chosen, what is reported), its
reader and its ground truth.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from camlab import formats, readers, synthetic, utils, wsolmeta  # noqa: F401 - readers and wsolmeta register their formats
from camlab.formats import CIFAR10_CLASSES, FORMATS, Format, Listing, Truth, check_num_classes, stack_masks, to_frame
from camlab.images import (CACHE_VERSION, MAX_PIXELS, DecodeOptions, ImageSet, cache_key, cached, decode_files,
                           note_once, read_mask, warn_skipped)
from camlab.stream import StreamSet, frame_of, stream_files, streams
from camlab.utils import CamlabError, read_text

split_for = formats.split_for
check_metadata = formats.check_metadata


# ------------------------------------------------------------------------- loading a split
def default_root(dataset: str, body_evidence: float | None = None) -> Path:
    """Where ``dataset`` is looked for when no root is given (relative to the working dir); for
    the embedded benchmarks (``lab``, ``multi``), the one at that body-evidence setting
    (``synthetic.default_root``)."""
    formats.get(dataset)
    if dataset in synthetic.EMBEDDED:
        return synthetic.default_root(body_evidence, dataset)
    return utils.DATA_DIR / dataset


def resolve_root(dataset: str, data_root: str | Path | None, body_evidence: float | None = None) -> Path:
    """``--data_root`` when given, else the dataset's default root. An empty one is a mistake
    (an unset shell variable, say), not a request for the default."""
    if data_root is not None and not str(data_root).strip():
        raise CamlabError("--data_root is empty: name a dataset folder, or leave the flag out for the default")
    return Path(data_root) if data_root is not None else default_root(dataset, body_evidence)


def load_split(dataset: str, root: Path | str, split: str, *, img_size: int = 224,
               num_classes: int | None = None, download: bool = False,
               cache_dir: Path | None = utils.DATA_DIR / "cache",
               progress: bool = True, skip_bad: bool = False,
               metadata: Path | str | None = None, max_pixels: int = MAX_PIXELS,
               in_memory: str = "always", workers: int = 0) -> ImageSet | StreamSet:
    """Read split ``split`` of ``dataset`` (a registered format, ``camlab.formats.FORMATS``)
    stored at ``root``: one of the format's splits (``train`` or ``test`` for lab, cifar10 and
    folder; ``train``, ``val`` or ``test`` for wsol; ``train``, ``val`` or ``train_aug`` for voc).
    ``metadata`` is wsol's metadata folder (``<metadata>/<split>/image_ids.txt`` ...), required
    for wsol and refused for the others.

    Images are stored at their own size when all images of the split share one, else each is
    resized to ``img_size``×``img_size`` when decoded. ``num_classes``, when given, must agree
    with the classes the data declares (for ``lab`` without ``meta.json`` it declares them).
    The decoded split is cached in ``cache_dir`` (``None``: no cache), keyed by the files' names,
    sizes and modification times, so an edited dataset is decoded again.

    An image file that cannot be decoded is a CamlabError naming it, unless ``skip_bad``: then
    every such file is left out (with its label), listed in ``ImageSet.skipped`` and in one
    warning on stderr, and only a split with no decodable image at all is an error. Errors in
    the annotation files (a bad line, a listed file that does not exist) stay errors either way:
    they are mistakes in the dataset's description, not damaged files. (For voc, a mask that
    cannot be read or holds no object class counts as a damaged file: ``skip_bad`` leaves its
    image out.)

    ``in_memory`` (``--data_in_memory``, ``camlab.stream.IN_MEMORY``): ``never``, or ``auto`` for a
    split whose decoded size is over a share of the available RAM, gives a ``camlab.stream.StreamSet``
    instead, read from disk per batch in ``workers`` processes (not cached: nothing is decoded ahead).
    """
    fmt = formats.get(dataset)
    formats.check_split(dataset, split)
    check_metadata(dataset, metadata)
    root = Path(root)
    if download:
        if fmt.download is None:
            fetchable = ", ".join(f.name for f in FORMATS.values() if f.download is not None)
            raise CamlabError(f"--download only applies to --dataset {fetchable}, not {dataset!r}")
        fmt.download(root, split)
    _ensure_root(fmt, root, progress)
    listing = fmt.read(root, split, num_classes, None if metadata is None else Path(metadata))
    # img_size is in the key because it decides how a split of mixed sizes is stored, and
    # skip_bad because it decides whether a damaged file is left out or is an error
    store_rule = f"native size if uniform, else {img_size}x{img_size}"
    settings = [CACHE_VERSION, dataset, str(root.resolve()), split, num_classes, store_rule,
                f"skip_bad={skip_bad}"]
    if metadata is not None:  # appended, so that the other datasets' keys stay what they were
        settings.append(f"metadata={Path(metadata).resolve()}")
    options = DecodeOptions(img_size, progress, skip_bad, max_pixels)
    what = f"the {split} split of {dataset}"
    candidate = listing.stream(options, workers) if listing.stream and in_memory != "always" else None
    if streams(in_memory, what, candidate):
        data = candidate
    else:
        data = cached(cache_dir, cache_key(settings, listing.files), lambda: listing.decode(options))
    warn_skipped(data.skipped, listing.image_dir or root / split)
    if fmt.note:
        note_once(fmt.note)
    return data


def settle_body_evidence(dataset: str, data_root: str | None, body_evidence: float | None) -> float | None:
    """The embedded benchmark's dial as a run records it: the given value (checked to lie in
    [0, 1]), the generator's default when the default root is used, None for other data; refused
    for a dataset that is not embedded."""
    if body_evidence is None and dataset in synthetic.EMBEDDED and data_root is None:
        return synthetic.BODY_EVIDENCE
    if body_evidence is not None:
        synthetic.check_body_evidence(body_evidence)
        if dataset not in synthetic.EMBEDDED:
            raise CamlabError(f"--body_evidence sets an embedded benchmark (--dataset {' or '.join(synthetic.EMBEDDED)}), "
                              f"not --dataset {dataset}")
    return body_evidence


def benchmark_record(dataset: str, root: Path, body_evidence: float | None = None) -> dict:
    """``{"benchmark": {version, body_evidence, seed, size}}`` of the embedded benchmark at
    ``root`` (empty for other data), refused in one line when ``root`` was generated at another
    body-evidence setting than ``body_evidence``."""
    meta = synthetic.read_meta(root, dataset) if dataset in synthetic.EMBEDDED else None
    if meta is None:
        return {}
    if body_evidence is not None and meta.get("body_evidence") != body_evidence:
        raise CamlabError(f"--body_evidence {body_evidence:g}, but {root} was generated at "
                          f"{meta.get('body_evidence')}; leave out --data_root to use (or generate) "
                          f"{synthetic.default_root(body_evidence, dataset)}")
    return {"benchmark": {k: meta.get(k) for k in ("version", "body_evidence", "seed", "size")}}


def check_classes(dataset: str, root: Path, num_classes: int, who: str, metadata: Path | str | None = None) -> None:
    """Refuse, in one line, a model of ``num_classes`` classes on data that declares another
    number (read from the annotation files alone, nothing decoded); data that cannot be listed
    is left to the reader's own errors."""
    fmt = formats.get(dataset)
    try:
        listing = fmt.read(Path(root), formats.split_for(dataset, "test", root), None,
                           None if metadata is None else Path(metadata))
    except CamlabError:
        return
    if listing.classes is not None and len(listing.classes) != num_classes:
        raise CamlabError(f"{who} {num_classes} classes, but {root} declares {len(listing.classes)}; "
                          f"score it on the data it was trained on (--data_root)")


def _ensure_root(fmt: Format, root: Path, progress: bool) -> None:
    """Generate an embedded dataset on first use (``data/synthetic`` or ``data/synthetic_be<x>``,
    ``data/synthetic_multi[_be<x>]``, at its body-evidence setting); any other missing root is an
    error, and so is an embedded dataset that an older generator wrote (its images would not
    match what the code redraws)."""
    dataset = fmt.name
    embedded = dataset in synthetic.EMBEDDED
    if root.is_symlink() and not root.exists():
        raise CamlabError(f"data root '{root}' is a symbolic link that leads nowhere (a loop, or to a missing folder)")
    if root.exists():
        meta = synthetic.read_meta(root, dataset) if embedded else None
        if meta is not None and meta.get("version") != synthetic.SYNTHETIC_VERSION:
            raise CamlabError(f"{root} holds version {meta.get('version')} of the embedded benchmark, and this "
                              f"camlab draws version {synthetic.SYNTHETIC_VERSION}; delete {root} (it is generated, "
                              f"python main.py makes it again) or pass another --data_root")
        expected = _default_dials(root, dataset) if meta is not None else []
        if expected and meta.get("body_evidence") != expected[0]:
            raise CamlabError(f"{root} holds the embedded benchmark at body evidence {meta.get('body_evidence')}, but "
                              f"that folder is where camlab keeps setting {expected[0]:g}; rename it to "
                              f"{synthetic.default_root(meta.get('body_evidence'), dataset) if _is_dial(meta.get('body_evidence')) else 'another name'} "
                              f"(or delete it: it is generated again)")
        return
    dial = next((d for d in _default_dials(root, dataset) if embedded), None)
    if dial is not None:
        synthetic.generate(dataset, root, progress=progress, body_evidence=dial)
        return
    raise CamlabError(f"data root '{root}' does not exist ({fmt.root_hint})")


def _is_dial(value) -> bool:
    return isinstance(value, (int, float)) and 0 <= value <= 1


def _default_dials(root: Path, dataset: str = "lab") -> list[float]:
    """[the body-evidence setting] when ``root`` is where ``synthetic.default_root`` keeps one
    of embedded ``dataset``."""
    if dataset not in synthetic.EMBEDDED:
        return []
    name, base = root.name, synthetic.default_root(None, dataset)
    if root.resolve().parent != base.resolve().parent:
        return []
    if name == base.name:
        return [synthetic.BODY_EVIDENCE]
    prefix = f"{base.name}_be"
    try:
        dial = float(name[len(prefix):]) if name.startswith(prefix) else None
    except ValueError:
        return []
    return [dial] if dial is not None and 0 <= dial <= 1 and synthetic.default_root(dial, dataset).name == name else []


# ------------------------------------------------------------------------ format: lab layout
def _list_lab(root: Path, split: str, num_classes: int | None,
              metadata: Path | None = None) -> Listing:
    meta_path = root / "meta.json"
    classes = _lab_classes(meta_path, num_classes)
    ann_path = root / f"{split}_cls.txt"
    entries = _parse_annotations(ann_path, root / split, len(classes))
    labels = [label for _, label in entries]
    names = [name for name, _ in entries]
    files = [ann_path] + ([meta_path] if meta_path.exists() else []) + [root / split / n for n in names]

    def decode(options: DecodeOptions) -> ImageSet:
        return decode_files(root / split, names, labels, classes, options)
    return Listing(files, decode, classes=list(classes),
                   stream=lambda options, workers: stream_files(root / split, names, labels, classes, options, workers))


def annotations(root: Path, split: str, num_classes: int) -> list[tuple[str, int]]:
    """``(file name, label)`` of each line of ``root/<split>_cls.txt`` (the lab layout); [] when
    there is no such file."""
    path = Path(root) / f"{split}_cls.txt"
    return _parse_annotations(path, Path(root) / split, num_classes) if path.is_file() else []


def _lab_classes(meta_path: Path, num_classes: int | None) -> list[str]:
    """Class names from ``meta.json`` when there is one; else CIFAR-10's for ten classes (the
    course's ``cifar-10-cam-seg-data`` has no meta.json and labels 0-9 in CIFAR-10's order), and
    ``"0"``, ``"1"``, ... for another count."""
    if not meta_path.exists():
        n = 10 if num_classes is None else num_classes
        return list(CIFAR10_CLASSES) if n == len(CIFAR10_CLASSES) else [str(i) for i in range(n)]
    try:
        classes = json.loads(meta_path.read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CamlabError(f"{meta_path} has no readable 'classes' list ({err})") from None
    if not isinstance(classes, list) or not classes:
        raise CamlabError(f"{meta_path}: 'classes' must be a non-empty list of names")
    check_num_classes(num_classes, len(classes), meta_path)
    return [str(c) for c in classes]


def _parse_annotations(ann_path: Path, image_dir: Path, num_classes: int) -> list[tuple[str, int]]:
    """``(file name, label)`` for each non-empty line of ``ann_path``; every listed image must
    exist in ``image_dir``. Errors name the file and the line.

    Lines are counted as editors count them: at ``\\n``, ``\\r\\n`` and ``\\r`` only (not at the
    form feeds or Unicode separators where ``str.splitlines`` also breaks), so the number in an
    error is the one the user sees. A UTF-8 byte order mark (Windows editors write one) is dropped
    rather than read as part of the first file name.
    """
    text = read_text(ann_path, "annotation file")
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
    """``<file name> <label>``, split at the last run of spaces: a file name may hold spaces."""
    fields = line.strip().rsplit(None, 1)
    if len(fields) == 1:
        raise CamlabError(f"{where}: missing label after {fields[0]!r}")
    name, text = fields
    try:
        label = int(text)
    except ValueError:
        raise CamlabError(f"{where}: label {text!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise CamlabError(f"{where}: label {label} is out of range [0, {num_classes})")
    return name, label


def _lab_truth(root: Path, split: str, data: ImageSet, frame: tuple[int, int],
               metadata: Path | None) -> Truth | None:
    folder = root / f"{split}_masks"
    if not folder.is_dir():
        return None
    masks = [to_frame(read_mask(folder / f"{Path(name).stem}.png").astype(np.uint8), frame) for name in data.names]
    return Truth(masks=stack_masks(masks, frame))


def _example_lab(top: Path) -> tuple[Path, None]:
    """The embedded benchmark at 32 px, 12 training and 6 test images, in the lab's layout."""
    synthetic.generate_synthetic(top / "lab", n_train=12, n_test=6, size=32, progress=False)
    return top / "lab", None


LAB = formats.register(Format(
    "lab", "the handout's folder layout (the embedded synthetic set by default)", synthetic.SPLITS,
    {"train": ("train",), "fit": ("train",), "test": ("test",)}, _list_lab, _lab_truth,
    root_hint="it must hold train/, test/, train_cls.txt and test_cls.txt; leave --data_root out to use the "
              "generated synthetic dataset", example=_example_lab), first=True)


# ---------------------------------------------------------------------------- ground truth
def ground_truth(dataset: str, root: Path | str, split: str, data: ImageSet,
                 metadata: Path | str | None = None) -> Truth | None:
    """The localisation ground truth of ``data`` (split ``split`` of ``dataset`` at ``root``, or
    any subset of it, ``data.take(...)``), or None where the split has none.

    lab: masks from ``<root>/<split>_masks/<stem>.png`` (None without that folder). wsol: boxes
    (CUB, ILSVRC) or foreground/background/ignore masks (OpenImages) from localization.txt (None
    when it is empty, as train's is). voc: the mask of each image's label, 255 where VOC says
    void. cifar10, folder: None. Masks are read anew on every call; box sizes come from
    image_sizes.txt, not from the images.
    """
    fmt = formats.get(dataset)
    formats.check_split(dataset, split)
    check_metadata(dataset, metadata)
    height, width = frame_of(data)
    return None if fmt.truth is None else fmt.truth(Path(root), split, data, (height, width),
                                                    None if metadata is None else Path(metadata))


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
