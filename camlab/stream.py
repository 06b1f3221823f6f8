"""The streaming data path: a split read from disk batch by batch in DataLoader worker processes (``StreamSet``), the choice between it and the decoded in-memory ``ImageSet`` (``--data_in_memory``), and the batches a pass iterates over either.

A :class:`StreamSet` holds only the names, labels and classes of a split; each batch is decoded
and stored-size resized in worker processes exactly as ``camlab.images.decode_each`` stores it
(the same decoder, the same resize), so a batch of either path is the same uint8 tensor. The
batch order, the flips and the objective's transforms are drawn in the main process from the
run's seed as before (``dataloader.batch_indices``), never in the workers, so the two paths draw
the same images in the same order and ``--resume`` stays exact whichever path a run takes.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import torch
from torch.utils.data import DataLoader, Dataset

from camlab.images import (MAX_PIXELS, DecodeOptions, ImageSet, _resize, _sound, decode_image, declared_size,
                           note_once)
from camlab.runs import release_inherited_locks
from camlab.utils import CamlabError

# --data_in_memory: choice -> what it does
IN_MEMORY = {
    "auto": "keep a split in memory when its decoded size fits the share of the RAM below, else stream it",
    "always": "decode every split into memory (the fastest path when it fits)",
    "never": "stream every split from disk in --workers processes (memory flat in the number of images)",
}
RAM_SHARE = 0.5  # auto keeps a split in memory when its decoded size is at most this share of the available RAM
DEVICE_SHARE = 0.5  # a split in memory is copied to the GPU when it takes at most this share of its free memory
PREFETCH = 4  # batches each worker prepares ahead


def decoded_bytes(n_images: int, height: int, width: int) -> int:
    """The decoded size of ``n_images`` stored at ``height``×``width`` (3 uint8 channels)."""
    return n_images * 3 * height * width


def available_ram() -> int:
    """The bytes of RAM available now (``MemAvailable`` in /proc/meminfo; the free pages elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_free(device: torch.device) -> int | None:
    """The free bytes of a CUDA device, None for the CPU (host memory is the split's home)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def streams(mode: str, what: str, candidate: "StreamSet | None") -> bool:
    """Whether a split (``what``, e.g. "the train split of wsol") streams under ``--data_in_memory
    mode``; ``candidate`` is its streamed form (None where the format cannot stream), whose stored
    frame (read from the headers) gives the decoded size before anything is decoded: N × 3 × H × W,
    ``img_size``² for a split of mixed sizes. auto says so in one line when it streams."""
    if mode not in IN_MEMORY:
        raise CamlabError(f"--data_in_memory {mode!r}: choose one of {', '.join(IN_MEMORY)}")
    if mode == "always":
        return False
    if candidate is None:
        if mode == "never":
            raise CamlabError(f"--data_in_memory never: {what} is read as a whole (its format cannot stream); "
                              f"use --data_in_memory auto or always")
        return False
    if mode == "never":
        return True
    (h, w), n = candidate.frame, len(candidate)
    size, budget = decoded_bytes(n, h, w), int(RAM_SHARE * available_ram())
    if size <= budget:
        return False
    note_once(f"{what}: {n:,} images, {gib(size)} decoded at {h}×{w}, over {RAM_SHARE:.0%} of the available RAM "
              f"({gib(budget)}): streamed from disk by {candidate.workers} worker processes (--data_in_memory always "
              f"keeps it in memory)")
    return True


def place(data: "ImageSet | StreamSet", device: torch.device, what: str) -> "ImageSet | StreamSet":
    """``data`` on ``device`` when it takes at most :data:`DEVICE_SHARE` of the device's free
    memory, else left in host memory (batches are copied per step) with a note saying so."""
    if isinstance(data, StreamSet):
        return data
    free = device_free(device)
    size = data.images.nbytes
    if free is None or size <= DEVICE_SHARE * free:
        return data.to(device)
    note_once(f"{what}: {gib(size)} decoded, over {DEVICE_SHARE:.0%} of {device}'s free memory ({gib(free)}): "
              f"kept in host memory, each batch copied to the device")
    return data


# --------------------------------------------------------------------------- the streamed set
@dataclass
class StreamSet:
    """A split read from disk per batch: the ``ImageSet`` interface without ``images``.

    folder, names: the files, ``folder/<name>``; labels, classes, skipped, present: as ``ImageSet``.
    frame: the stored (H, W) of every image: their own size when all share one, else
      ``img_size``×``img_size`` (as ``camlab.images.decode_each`` stores them).
    workers: DataLoader worker processes (0: decoded in the main process).
    """

    folder: Path
    names: list[str]
    labels: torch.Tensor
    classes: list[str]
    frame: tuple[int, int]
    img_size: int = 224
    max_pixels: int = MAX_PIXELS
    workers: int = 0
    skipped: list[str] = field(default_factory=list)
    present: torch.Tensor | None = None
    _loader: DataLoader | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device: torch.device | str) -> StreamSet:
        """Itself: the images stay on disk and each batch goes to the device as it is read."""
        return self

    def take(self, idx: torch.Tensor) -> StreamSet:
        """The images ``idx`` as a set of their own (still streamed)."""
        keep = idx.tolist()
        present = None if self.present is None else self.present[idx]
        return dataclasses.replace(self, names=[self.names[i] for i in keep], labels=self.labels[idx],
                                   present=present, _loader=None)

    def read(self, batches: list[torch.Tensor], pin: bool = False) -> Iterator[torch.Tensor]:
        """The uint8 B×3×H×W images of each batch of indices, in order (decoded in the workers,
        which stay alive between passes)."""
        if self._loader is None or self._loader.pin_memory != pin:
            fixed_mmap_threshold()
            self._loader = DataLoader(
                _Files(self.folder, self.names, self.frame, self.img_size, self.max_pixels),
                batch_sampler=_Batches(), num_workers=self.workers, collate_fn=_collate, pin_memory=pin,
                persistent_workers=self.workers > 0, prefetch_factor=PREFETCH if self.workers else None,
                worker_init_fn=_one_thread, generator=torch.Generator())  # the run's random state untouched
        self._loader.batch_sampler.batches = batches
        # cv2's thread pool stopped while the workers fork (it is restored after): a forked child that
        # reconfigures or uses a pool whose threads it does not have hangs in pthread_join (the suite
        # hung so, with 2 workers forked from a process that had run cv2 in parallel)
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            passes = iter(self._loader)
        finally:
            cv2.setNumThreads(threads)
        for images in passes:
            if isinstance(images, str):
                raise CamlabError(images)
            yield images


class _Batches:
    """The batch sampler: the batches of the pass at hand (set before each pass, in the main
    process, so persistent workers serve every epoch's new order)."""

    batches: list[torch.Tensor] = []

    def __iter__(self):
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Files(Dataset):
    """Image ``i`` decoded and sized as ``decode_each`` stores it, 3×H×W uint8; an image that cannot
    be read is its one-line message instead (raised in the main process, not as a worker's traceback)."""

    def __init__(self, folder: Path, names: list[str], frame: tuple[int, int], img_size: int, max_pixels: int) -> None:
        self.folder, self.names, self.frame, self.img_size, self.max_pixels = folder, names, frame, img_size, max_pixels

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        try:
            image = decode_image(self.folder / self.names[i], self.max_pixels)
        except CamlabError as err:
            return f"{err} (read while streaming)"
        if tuple(image.shape[:2]) != self.frame:
            image = _resize(image, self.img_size)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def _collate(items: list) -> torch.Tensor | str:
    return next((x for x in items if isinstance(x, str)), None) or torch.stack(items)


def _one_thread(_worker: int) -> None:
    """One thread per worker process: the workers are the parallelism."""
    torch.set_num_threads(1)  # cv2 is already serial: read() forks the workers with its pool stopped
    fixed_mmap_threshold(WORKER_MMAP_THRESHOLD)
    release_inherited_locks()  # a killed run's lock is free as soon as it dies


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter: allocations from this size up are mapped
MMAP_THRESHOLD = 1 << 20  # in the main process: 1 MiB
WORKER_MMAP_THRESHOLD = 1 << 18  # in each worker process: 256 KiB


def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> None:
    """glibc's allocator with a fixed mmap threshold (1 MiB in the main process, 256 KiB in the
    workers). Its default threshold rises to the size of each large block freed, so the batches a
    streamed pass makes (tens of MiB each, from images of many sizes) then come from the heap,
    which fragments and keeps growing: measured, a 224-px pass with one worker grew its main
    process by about 6 MiB per batch of 32 and stayed flat at 1 MiB. 1 MiB still left each decoded
    photo (562 KiB at 500×375, and its tensor copy) on the workers' heap, and each worker grew by
    about 8 KiB an image (24 MiB over 2,880 images of a uniform 500×375 split, steadily); at
    256 KiB they are mapped too and the workers stay flat. The main process keeps 1 MiB: at
    256 KiB its scoring (maps of 750 KiB at that frame, made and freed per threshold) took 40%
    longer (600 images: 24.7-26.2 s against 17.7-18.1 s) and it was flat already. A mapped block
    goes back to the OS when freed. No effect off glibc."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def batches(data: ImageSet | StreamSet, batch_list: list[torch.Tensor],
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(indices, uint8 images on device)`` for each batch of ``batch_list``, from either path;
    the indices live where ``data``'s labels do."""
    if isinstance(data, StreamSet):
        for idx, images in zip(batch_list, data.read(batch_list, pin=device.type == "cuda")):
            yield idx, images.to(device, non_blocking=True)
        return
    for idx in batch_list:
        idx = idx.to(data.images.device, non_blocking=True)
        yield idx, data.images[idx].to(device, non_blocking=True)


# ------------------------------------------------------------------------------ making one
def stream_files(folder: Path, names: list[str], labels: list[int], classes: list[str],
                 options: DecodeOptions, workers: int) -> StreamSet:
    """The streamed form of ``camlab.images.decode_files``: the stored frame read from the files'
    headers (stopping at the first size that differs: a mixed split is stored at ``img_size``).
    With ``skip_bad`` every file is checked whole first (PIL's verify, not a decode) and the
    unsound ones left out; a file that still fails to decode stops the pass, named."""
    kept, skipped, sizes = [], [], set()
    for index, name in enumerate(names):
        path = folder / name
        if options.skip_bad and not _sound(path):
            skipped.append(name)
            continue
        kept.append(index)
        if len(sizes) < 2:
            size = declared_size(path)
            sizes.add((size[1], size[0]) if size else tuple(decode_image(path, options.max_pixels).shape[:2]))
        elif not options.skip_bad:  # mixed: the rest need no look
            kept = list(range(len(names)))
            break
    if not kept:
        raise CamlabError(f"no image in {folder} can be decoded: all {len(skipped)} were skipped")
    frame = next(iter(sizes)) if len(sizes) == 1 else (options.img_size, options.img_size)
    return StreamSet(folder, [names[i] for i in kept], torch.tensor([labels[i] for i in kept], dtype=torch.int64),
                     list(classes), frame, options.img_size, options.max_pixels, workers, skipped)


def frame_of(data: ImageSet | StreamSet) -> tuple[int, int]:
    """The stored (H, W) of a split's images, either path."""
    return data.frame if isinstance(data, StreamSet) else tuple(int(x) for x in data.images.shape[-2:])

