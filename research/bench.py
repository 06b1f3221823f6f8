"""The throughput benchmark's measurements: the naive (handout), fast (``main.py``'s) and bound (model alone) pipelines of CAM training, SEG training and CAM extraction, timed in interleaved rounds with FLOPs and peak memory.

``bench.py`` is its command line; what each pipeline is and how rounds are timed is told there.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

import dataloader
import model as model_lib
import train
from camlab import utils
from camlab.images import ImageSet
from camlab.methods import Objective
from camlab.runtime import autocast
from camlab.utils import CamlabError, reason
from research.databench import run_data_bench
from research.evalbench import bench_wsol_eval
from research.experiments import dataset_cams

MODEL_TASKS = ("cam_train", "seg_train", "cam_infer")
DEFAULT_TASKS = MODEL_TASKS + ("wsol_eval",)  # wsol_eval: the WSOL evaluator against its reference path (research.evalbench)
TASKS = DEFAULT_TASKS + ("data",)  # data (asked for by name: minutes): the data paths (research.databench)
WSOL_MAPS = {True: 8, False: 32}  # maps per wsol_eval round, --quick or not
PIPELINES = ("naive", "fast", "bound")
TASK_MODE = {"cam_train": "CAM", "seg_train": "SEG", "cam_infer": "CAM"}

# The % column's reference on CPU, when --peak_gflops is not given: what this machine's fp32
# matmul reaches with the benchmark's threads, measured at the start of the run (the best of
# MATMUL_ROUNDS products of two MATMUL_SIZE² matrices). A fixed figure was wrong as soon as the
# machine changed: the reference CPU's theoretical 157 GFLOP/s (2 AVX2/FMA cores at ~2.45 GHz,
# /work/shared/notes/measured-facts.md) gave 104% of peak on an AVX-512 EPYC. On CUDA no
# default is assumed (the pipelines run bfloat16 there).
MATMUL_SIZE = 1024
MATMUL_ROUNDS = 7

INFER_FORM = "class"  # research.experiments.localization_report's default CAM form for evaluation
FLOP_BATCH = 2        # images per FLOP count (FLOPs per image do not depend on it)
RSS_SAMPLE_S = 0.005  # how often the CPU memory sampler reads /proc/self/statm


# ------------------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    """Everything that shapes one benchmark run (saved in the JSON under ``settings``)."""

    device: str = "auto"
    img_size: int = 224
    batch_size: int = 32
    workers: int = 2
    n_train: int = 0          # timed images per round of a training pipeline (0: the default)
    n_infer: int = 0          # timed images per round of an inference pipeline (0: the default)
    warmup_batches: int = 0   # untimed batches before each pipeline (0: the device's default)
    rounds: int = 0           # timed epochs per pipeline, interleaved; the best counts (0: default)
    quick: bool = False
    tasks: tuple[str, ...] = DEFAULT_TASKS
    wsol_maps: int = 0        # maps per round of wsol_eval (0: the default)
    compile: bool = False
    peak_gflops: float | None = None
    peak_source: str = ""     # how peak_gflops was found: given (--peak_gflops) or measured
    data_root: str | None = None
    seed: int = 0
    lr: float = train.RunConfig.lr
    notes: list[str] = field(default_factory=list)


# defaults per device type and --quick: (timed images per round for a training pipeline, for an
# inference pipeline, untimed warm-up batches, rounds). CPU --quick: about 1.5 minutes on the
# project's 2-core machine when it is otherwise idle.
_DEFAULT_COUNTS = {
    "cpu": {True: (32, 64, 1, 3), False: (128, 256, 2, 6)},
    "cuda": {True: (1024, 2048, 3, 3), False: (4096, 8192, 5, 6)},
}


# flag -> Range (--img_size and --batch_size: train.RANGES, then the model's size check). 0 for
# a count means its default.
BENCH_RANGES: dict[str, utils.Range] = {
    "workers": utils.Range(0, 64, "DataLoader processes"),
    "n_train": utils.Range(0, 1_000_000, "0: the default"),
    "n_infer": utils.Range(0, 1_000_000, "0: the default"),
    "warmup_batches": utils.Range(0, 10_000, "0: the default"),
    "rounds": utils.Range(0, 1_000, "0: the default"),
    "wsol_maps": utils.Range(0, 1_000_000, "0: the default"),
}


def resolve_settings(s: BenchSettings, device: torch.device) -> BenchSettings:
    """Fill the device-dependent defaults and check every number; a bad one is a CamlabError."""
    utils.check_ranges(s, BENCH_RANGES)
    if s.peak_gflops is not None:
        utils.check_range("--peak_gflops", s.peak_gflops, 0, 1e9, open_low=True)
    run_config(s, "SEG").checked()  # the image size and batch that the SEG task trains must fit
    unknown = [t for t in s.tasks if t not in TASKS]
    if unknown or not s.tasks:
        raise CamlabError(f"--tasks: choose from {', '.join(TASKS)}, got {list(s.tasks)}")
    defaults = _DEFAULT_COUNTS[device.type if device.type in _DEFAULT_COUNTS else "cpu"][s.quick]
    n_train, n_infer, warm, rounds = defaults
    s = replace(s, n_train=s.n_train or n_train, n_infer=s.n_infer or n_infer, wsol_maps=s.wsol_maps or WSOL_MAPS[s.quick],
                warmup_batches=s.warmup_batches or warm, rounds=s.rounds or rounds,
                notes=list(s.notes))
    # whole batches only: a smaller last batch would time a different shape (and recompile)
    s.n_train = _round_up(s.n_train, s.batch_size)
    s.n_infer = _round_up(s.n_infer, s.batch_size)
    if s.peak_gflops is not None:
        s.peak_source = "given (--peak_gflops)"
    if s.compile and device.type != "cuda":
        s.compile = False
        s.notes.append("--compile applies to CUDA only; skipped on this device")
    return s


def matmul_gflops(size: int = MATMUL_SIZE, rounds: int = MATMUL_ROUNDS) -> float:
    """GFLOP/s of the fastest of ``rounds`` fp32 products of two ``size``×``size`` matrices on
    the CPU (2·size³ FLOP each), after one untimed product: the ceiling a conv of the same
    precision can hope to approach on this machine."""
    a, b = (torch.randn(size, size, generator=torch.Generator().manual_seed(k)) for k in (0, 1))
    best = float("inf")
    for r in range(rounds + 1):
        start = time.perf_counter()
        torch.mm(a, b)  # on the CPU, synchronous
        elapsed = time.perf_counter() - start
        best = min(best, elapsed) if r else best  # the first product warms up, untimed
    return 2 * size ** 3 / best / 1e9


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def run_config(s: BenchSettings, mode: str) -> train.RunConfig:
    """The ``RunConfig`` ``main.py --mode <mode>`` would build for these settings (random init,
    no progress bars); every pipeline of a task reads its model and objective from it."""
    return train.RunConfig(mode=mode, img_size=s.img_size, batch_size=s.batch_size, lr=s.lr,
                           weights="none", dataset="lab", data_root=s.data_root, seed=s.seed,
                           device=s.device, progress=False)


def build_model(cfg: train.RunConfig, classes: list[str], device: torch.device,
                compile_model: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Model and optimizer exactly as :func:`train.fit` builds them (:func:`train.build_training`,
    seeded, so every pipeline starts from the same weights); ``compile_model`` wraps the model
    in ``torch.compile``."""
    net, optimizer, _, _ = train.build_training(cfg, list(classes), device, cfg.seed)
    if compile_model:
        net = torch.compile(net, dynamic=False)
    return net, optimizer


def build_objective(cfg: train.RunConfig, classes: list[str]) -> Objective:
    """The objective :func:`train.fit` trains with."""
    return train.build_objective(cfg, list(classes))


def epoch_kwargs(cfg: train.RunConfig, classes: list[str]) -> dict:
    """The keyword arguments :func:`train.fit` passes to every ``run_epoch`` call, so that
    ``fast`` is the code main.py runs."""
    return dict(objective=build_objective(cfg, classes), **train.epoch_options(cfg))


def main_cudnn_benchmark(cfg: train.RunConfig) -> bool:
    """``torch.backends.cudnn.benchmark`` as main.py sets it for a run (train._start): on,
    unless deterministic kernels are asked for."""
    return not cfg.deterministic


def train_numerics(cfg: train.RunConfig, device: torch.device
                   ) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.memory_format]:
    """What ``run_epoch`` does to a training epoch beyond ``to_model_input`` (its autocast, and
    channels-last batches on a GPU), so that ``bound`` runs the same numerics as ``fast`` and
    the two differ only in the data path: (a maker of the context, the batches' layout)."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return lambda: autocast(device, cfg.precision), layout


# ------------------------------------------------------------------------- measurement
class _RssPeak:
    """Peak resident set size (MB) of this process while the block runs, sampled every
    ``RSS_SAMPLE_S`` from ``/proc/self/statm``. DataLoader worker processes are not included
    (they share most pages with the parent, so adding them would overcount)."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/self/statm")
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if self.available else 0

    def _read(self) -> None:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        self.peak_mb = max(self.peak_mb, pages * self._page / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self._read()

    def __enter__(self) -> "_RssPeak":
        if self.available:
            self._read()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._read()


def _keep_max(out: dict, key: str, value: float) -> None:
    out[key] = max(out.get(key, value), value)


@contextlib.contextmanager
def _memory(device: torch.device, out: dict):
    """Raises ``out``'s peak-memory fields to what this window used (a pipeline runs in several
    windows: built and warmed up, then once per round). The field names say what is measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        _keep_max(out, "peak_cuda_alloc_mb", peak / 2**20)             # all live tensors
        _keep_max(out, "cuda_alloc_above_start_mb", (peak - start) / 2**20)  # this window's own
        return
    sampler = _RssPeak()
    with sampler:
        yield
    if sampler.available:
        _keep_max(out, "peak_rss_mb", sampler.peak_mb)
    else:  # ru_maxrss: KiB on Linux, the process's peak so far (monotone over the whole run)
        _keep_max(out, "process_max_rss_so_far_mb",
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Pipeline:
    """One pipeline of one task, built: ``warmup()`` runs the untimed batches, ``timed(r)`` one
    timed epoch of ``images`` images (round ``r`` from 0: the epoch's shuffle depends on it)."""

    warmup: Callable[[], None]
    timed: Callable[[int], None]
    images: int
    cudnn_benchmark: bool = False  # the global flag while this pipeline runs (CUDA only)


# ------------------------------------------------------------------------------- the data
@dataclass
class BenchData:
    """What every pipeline reads: the split on the device (``fast`` and ``bound``) and the
    PNG files behind it (``naive``)."""

    root: Path
    train: ImageSet   # on the device
    test: ImageSet    # on the device

    def paths(self, split: str) -> list[Path]:
        data = self.train if split == "train" else self.test
        return [self.root / split / name for name in data.names]


def load_bench_data(s: BenchSettings, device: torch.device) -> BenchData:
    """The lab-layout dataset at ``--data_root`` (default: the embedded synthetic one,
    generated when missing), read by ``train.load_data`` as a run reads it, on the device."""
    return BenchData(dataloader.resolve_root("lab", s.data_root), *train.load_data(run_config(s, "CAM"), device))


def cycled(n: int, available: int) -> torch.Tensor:
    """Indices 0..n-1 wrapped around a split of ``available`` images (a small split is reused)."""
    return torch.arange(n) % available


# --------------------------------------------------------------------- naive: the handout
class NaiveImages(Dataset):
    """The handout's dataset: each item opens its PNG with PIL and runs the torchvision
    transforms on it. ``small`` (SEG) also returns the image at half size (the I_S of the
    handout's I_L / I_S pair). ``flip``: mirror half of the images first, as ``fast`` does, so
    both pipelines do the same augmentation work."""

    def __init__(self, paths: list[Path], labels: list[int], img_size: int,
                 small: bool = False, flip: bool = False) -> None:
        self.paths, self.labels, self.flip = paths, labels, flip
        norm = [T.ToTensor(), T.Normalize(utils.IMAGENET_MEAN, utils.IMAGENET_STD)]
        self.large = T.Compose([T.Resize((img_size, img_size))] + norm)
        half = max(1, img_size // 2)
        self.small = T.Compose([T.Resize((half, half))] + norm) if small else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as im:
            image = im.convert("RGB")
        if self.flip and torch.rand(1).item() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if self.small is None:
            return self.large(image), self.labels[i]
        return self.large(image), self.small(image), self.labels[i]


def _naive_loader(s: BenchSettings, data: BenchData, split: str, idx: torch.Tensor,
                  training: bool, small: bool = False) -> DataLoader:
    """The handout's DataLoader over the images ``idx``. Its workers persist from one round to
    the next: a round is a short stand-in for a 2,000-image epoch, over which the workers'
    start-up (paid in the warm-up here) would be spread thin."""
    source = data.train if split == "train" else data.test
    paths, labels = data.paths(split), source.labels.tolist()
    chosen = idx.tolist()
    dataset = NaiveImages([paths[i] for i in chosen], [labels[i] for i in chosen], s.img_size,
                          small=small, flip=training)
    return DataLoader(dataset, batch_size=s.batch_size, shuffle=training, num_workers=s.workers,
                      persistent_workers=s.workers > 0,
                      generator=torch.Generator().manual_seed(s.seed))


def _batches(loader: DataLoader, limit: int | None = None):
    """The loader's batches of one epoch, or only its first ``limit`` (the warm-up)."""
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def _naive_seg_loss(net: torch.nn.Module, large: torch.Tensor, small: torch.Tensor,
                    labels: torch.Tensor, ser_weight: float) -> torch.Tensor:
    """The handout's SEG loss computed its own way (not through train.SegObjective): both
    images through the model, CE on each, and the MSE between the small branch's lab CAM and
    the large branch's lab CAM downscaled bilinearly. Same model work as SegObjective with the
    default ``scale`` transform (a 224 and a 112 pass); only I_S comes from PIL here."""
    scores_l, feat_l, gap_l = net(large)
    scores_s, feat_s, gap_s = net(small)
    cam_l = model_lib.CAMModel.lab_cam(feat_l, gap_l).unsqueeze(1)
    cam_s = model_lib.CAMModel.lab_cam(feat_s, gap_s).unsqueeze(1)
    target = F.interpolate(cam_l, size=cam_s.shape[-2:], mode="bilinear", align_corners=False)
    ce = (F.cross_entropy(scores_l, labels) + F.cross_entropy(scores_s, labels)) / 2
    return ce + ser_weight * F.mse_loss(cam_s, target)


def naive_train(s: BenchSettings, data: BenchData, device: torch.device, mode: str) -> Pipeline:
    cfg = run_config(s, mode)
    net, optimizer = build_model(cfg, data.train.classes, device)
    seg = mode == "SEG"
    idx = cycled(s.n_train, len(data.train))
    loader = _naive_loader(s, data, "train", idx, training=True, small=seg)

    def epoch(limit: int | None = None) -> None:
        net.train()
        running = 0.0
        for batch in _batches(loader, limit):
            labels = batch[-1].to(device)
            large = batch[0].to(device)
            if seg:
                loss = _naive_seg_loss(net, large, batch[1].to(device), labels, cfg.ser_weight)
            else:
                scores, _, _ = net(large)
                loss = F.cross_entropy(scores, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()  # the typical student loop: a host sync every step

    return Pipeline(lambda: epoch(s.warmup_batches), lambda r: epoch(), len(idx))


def naive_infer(s: BenchSettings, data: BenchData, device: torch.device) -> Pipeline:
    cfg = run_config(s, "CAM")
    net, _ = build_model(cfg, data.test.classes, device)
    net.eval()
    out_size = tuple(data.test.images.shape[-2:])
    idx = cycled(s.n_infer, len(data.test))
    loader = _naive_loader(s, data, "test", idx, training=False)

    def run(limit: int | None = None) -> None:
        maps = []
        with torch.no_grad():
            for images, _ in _batches(loader, limit):
                _, cams = model_lib.localization_maps(net, images.to(device), out_size, INFER_FORM)
                maps.append(cams.cpu())  # a host copy per batch

    return Pipeline(lambda: run(s.warmup_batches), lambda r: run(), len(idx))


# ------------------------------------------------------------------- fast: the project
def fast_train(s: BenchSettings, data: BenchData, device: torch.device, mode: str,
               compile_model: bool = False) -> Pipeline:
    """:func:`train.run_epoch` exactly as :func:`train.fit` calls it, on the split already on
    the device (as ``train.load_data`` leaves it)."""
    cfg = run_config(s, mode)
    net, optimizer = build_model(cfg, data.train.classes, device, compile_model)
    common = epoch_kwargs(cfg, data.train.classes)
    idx = cycled(s.n_train, len(data.train))
    warm_idx = cycled(s.warmup_batches * s.batch_size, len(data.train))

    def epoch(indices: torch.Tensor, number: int) -> None:
        train.run_epoch(net, data.train, indices, optimizer=optimizer, seed=cfg.seed,
                        epoch=number, **common)

    return Pipeline(lambda: epoch(warm_idx, 0), lambda r: epoch(idx, r + 1), len(idx),
                    main_cudnn_benchmark(cfg))


def fast_infer(s: BenchSettings, data: BenchData, device: torch.device,
               compile_model: bool = False) -> Pipeline:
    """:func:`research.experiments.dataset_cams`, the CAM extraction evaluation runs (at this benchmark's
    batch size; evaluation's own default is 64)."""
    cfg = run_config(s, "CAM")
    net, _ = build_model(cfg, data.test.classes, device, compile_model)
    net.eval()
    timed = data.test.take(cycled(s.n_infer, len(data.test)))
    warm = data.test.take(cycled(s.warmup_batches * s.batch_size, len(data.test)))

    def run(part: ImageSet) -> None:
        dataset_cams(net, part, cfg.img_size, INFER_FORM, batch_size=cfg.batch_size)

    return Pipeline(lambda: run(warm), lambda r: run(timed), len(timed), main_cudnn_benchmark(cfg))


# ------------------------------------------------------------------- bound: model alone
_BOUND_POOL = 4  # distinct pre-made batches, cycled (keeps memory flat for long CUDA runs)


def _premade(s: BenchSettings, data: ImageSet, n_batches: int = _BOUND_POOL,
             layout: torch.memory_format = torch.contiguous_format
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` batches of float model input at the final resolution, on the device,
    made once before timing."""
    idx = cycled(n_batches * s.batch_size, len(data)).to(data.images.device)
    return [(dataloader.to_model_input(data.images[b], s.img_size).contiguous(memory_format=layout),
             data.labels[b]) for b in idx.split(s.batch_size)]


def bound_train(s: BenchSettings, data: BenchData, device: torch.device, mode: str,
                compile_model: bool = False) -> Pipeline:
    cfg = run_config(s, mode)
    net, optimizer = build_model(cfg, data.train.classes, device, compile_model)
    objective = build_objective(cfg, data.train.classes)
    numerics, layout = train_numerics(cfg, device)
    n = s.n_train // s.batch_size
    batches = _premade(s, data.train, min(_BOUND_POOL, n), layout)
    generator = torch.Generator().manual_seed(cfg.seed)

    def steps(n_batches: int) -> None:
        net.train()
        with numerics():
            for i in range(n_batches):
                images, labels = batches[i % len(batches)]
                step = objective(net, images, labels, generator)
                optimizer.zero_grad(set_to_none=True)
                step.loss.backward()
                optimizer.step()

    return Pipeline(lambda: steps(s.warmup_batches), lambda r: steps(n), n * s.batch_size,
                    main_cudnn_benchmark(cfg))


def bound_infer(s: BenchSettings, data: BenchData, device: torch.device,
                compile_model: bool = False) -> Pipeline:
    cfg = run_config(s, "CAM")
    net, _ = build_model(cfg, data.test.classes, device, compile_model)
    net.eval()
    out_size = tuple(data.test.images.shape[-2:])
    n = s.n_infer // s.batch_size
    batches = _premade(s, data.test, min(_BOUND_POOL, n))

    def run(n_batches: int) -> None:
        for i in range(n_batches):
            model_lib.localization_maps(net, batches[i % len(batches)][0], out_size, INFER_FORM)

    return Pipeline(lambda: run(s.warmup_batches), lambda r: run(n), n * s.batch_size,
                    main_cudnn_benchmark(cfg))


# ----------------------------------------------------------------------------- FLOPs
def count_flops_per_image(s: BenchSettings, data: BenchData, device: torch.device, task: str) -> float:
    """FLOPs per image of one step of ``task`` (``torch.utils.flop_counter``): forward and
    backward of a batch for training (the optimizer's update is not a counted op), the forward
    and CAM of a batch for inference; divided by the batch's size. The counted ops' FLOPs are
    linear in the batch size, so a batch of ``FLOP_BATCH`` gives the same figure sooner."""
    mode = TASK_MODE[task]
    cfg = run_config(s, mode)
    split = data.test if task == "cam_infer" else data.train
    net, _ = build_model(cfg, split.classes, device)
    images, labels = _premade(replace(s, batch_size=min(s.batch_size, FLOP_BATCH)), split, 1)[0]
    counter = FlopCounterMode(display=False)
    if task == "cam_infer":
        net.eval()
        with counter:
            model_lib.localization_maps(net, images, tuple(split.images.shape[-2:]), INFER_FORM)
    else:  # counted in fp32: FLOPs do not depend on the precision they run in
        net.train()
        objective = build_objective(cfg, split.classes)
        with counter:
            objective(net, images, labels, torch.Generator().manual_seed(cfg.seed)).loss.backward()
    return counter.get_total_flops() / images.shape[0]


# --------------------------------------------------------------------------------- a run
def _pipelines(task: str, compile_model: bool) -> dict[str, Callable]:
    if task == "cam_infer":
        made = {"naive": naive_infer, "fast": fast_infer, "bound": bound_infer}
    else:
        mode = TASK_MODE[task]
        made = {"naive": lambda s, d, dev: naive_train(s, d, dev, mode),
                "fast": lambda s, d, dev, c=False: fast_train(s, d, dev, mode, c),
                "bound": lambda s, d, dev, c=False: bound_train(s, d, dev, mode, c)}
    if compile_model:
        made["fast_compiled"] = lambda s, d, dev, f=made["fast"]: f(s, d, dev, True)
        made["bound_compiled"] = lambda s, d, dev, f=made["bound"]: f(s, d, dev, True)
    return made


def _ratio(a: dict, b: dict) -> float | None:
    if "img_per_s" not in a or "img_per_s" not in b:
        return None
    return a["img_per_s"] / b["img_per_s"]


def _build_and_warm(name: str, task: str, make: Callable[[], Pipeline], device: torch.device,
                    entry: dict) -> Pipeline:
    with _memory(device, entry):
        pipe = make()
        torch.backends.cudnn.benchmark = entry["cudnn_benchmark"] = pipe.cudnn_benchmark
        t0 = time.perf_counter()
        pipe.warmup()
        _sync(device)
        entry["warmup_s"] = time.perf_counter() - t0
    print(f"[{task}] {name}: built and warmed up in {entry['warmup_s']:.1f} s", flush=True)
    return pipe


def _timed_round(pipe: Pipeline, r: int, device: torch.device, entry: dict) -> float:
    torch.backends.cudnn.benchmark = pipe.cudnn_benchmark
    with _memory(device, entry):
        _sync(device)
        t0 = time.perf_counter()
        pipe.timed(r)
        _sync(device)
        return time.perf_counter() - t0


def bench_task(s: BenchSettings, data: BenchData, device: torch.device, task: str) -> dict:
    """The JSON entry of one task: its pipelines, their ratios and FLOPs per image.

    Every pipeline is built and warmed up first; then ``s.rounds`` rounds each time one epoch
    of every pipeline, the order rotating from round to round, so that a burst of other work on
    a shared machine hits all of them alike. A pipeline's ``img_per_s`` is its best round (the
    least disturbed); ``img_per_s_rounds`` lists them all."""
    flops = count_flops_per_image(s, data, device, task)
    entries: dict[str, dict] = {}
    pipes: dict[str, Pipeline] = {}
    for name, make in _pipelines(task, s.compile).items():
        entries[name] = {}
        try:
            pipes[name] = _build_and_warm(name, task, lambda: make(s, data, device), device,
                                          entries[name])
        except Exception as err:
            if not name.endswith("_compiled"):
                raise
            # torch.compile is tried, not required: report why it did not run
            entries[name] = {"error": reason(err)}
            print(f"[{task}] {name}: failed ({entries[name]['error']})", flush=True)
    names, seconds = list(pipes), {name: [] for name in pipes}
    for r in range(s.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(_timed_round(pipes[name], r, device, entries[name]))
            print(f"[{task}] round {r + 1}/{s.rounds} {name}: {pipes[name].images} images in "
                  f"{seconds[name][-1]:.2f} s = {pipes[name].images / seconds[name][-1]:.1f} img/s",
                  flush=True)
    result: dict = {}
    for name, entry in entries.items():
        if name in pipes:
            images, best = pipes[name].images, min(seconds[name])
            entry = {"img_per_s": images / best, "images": images, "seconds": best,
                     "img_per_s_rounds": [images / x for x in seconds[name]],
                     "gflops_per_s": flops * images / best / 1e9, **entry}
            if s.peak_gflops:
                entry["pct_of_peak"] = 100 * entry["gflops_per_s"] / s.peak_gflops
        result[name] = entry
    result["fast_over_naive"] = _ratio(result["fast"], result["naive"])
    result["fast_over_bound"] = _ratio(result["fast"], result["bound"])
    if s.compile:
        result["fast_compiled_over_naive"] = _ratio(result["fast_compiled"], result["naive"])
        result["fast_compiled_over_bound_compiled"] = _ratio(result["fast_compiled"],
                                                             result["bound_compiled"])
    result["gflop_per_image"] = flops / 1e9
    if task == "cam_train":
        best = max(result[k]["img_per_s"] for k in ("fast", "fast_compiled")
                   if "img_per_s" in result.get(k, {}))
        result["fast_epoch_50k_s"] = 50_000 / best  # a full 50,000-image epoch at this speed
    return result


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and whether it has AVX-512 (the first processor of ``cpuinfo``),
    else the platform's machine name: ``platform.processor()`` is empty on Linux."""
    try:
        first = cpuinfo.read_text(errors="replace").split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name") or platform.machine()
    return name + (", AVX-512" if "avx512f" in fields.get("flags", "").split() else "")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"


def run_bench(s: BenchSettings, data: BenchData | None = None) -> dict:
    """Every chosen task on one device; the result is what ``--out`` receives."""
    device = utils.resolve_device(s.device)
    s = resolve_settings(s, device)
    if s.peak_gflops is None and device.type == "cpu":  # measured here, once: not in the checks
        s.peak_gflops = matmul_gflops()
        s.peak_source = (f"measured: fp32 matmul of two {MATMUL_SIZE}×{MATMUL_SIZE} matrices, best of "
                         f"{MATMUL_ROUNDS}, {torch.get_num_threads()} threads")
    models = [t for t in s.tasks if t in MODEL_TASKS]
    if data is None and models:
        data = load_bench_data(s, device)
    settings = asdict(s)
    if models:
        settings.update(n_train_split=len(data.train), n_test_split=len(data.test),
                        stored_size=list(data.train.images.shape[-2:]))
    settings.update(device=str(device), tasks=list(s.tasks), threads=torch.get_num_threads(),
                    precision=getattr(run_config(s, "CAM"), "precision", "fp32"),
                    load_avg_1m_start=_load_average(), infer_form=INFER_FORM,
                    memory="over a pipeline's build, warm-up and rounds, while all pipelines of "
                           "the task are alive: cuda: torch.cuda.max_memory_allocated (all live "
                           "tensors) and its rise above the window's start (the pipeline's own "
                           "working memory); cpu: peak RSS of the main process (sampled every "
                           f"{RSS_SAMPLE_S * 1000:.0f} ms; DataLoader workers not included)")
    result = {"device": _device_name(device), "torch": torch.__version__, "settings": settings}
    cudnn_flag = torch.backends.cudnn.benchmark  # each pipeline sets its own; restored after
    if "wsol_eval" in s.tasks:
        print(f"[wsol_eval] {s.wsol_maps} maps at {s.img_size} px, steps 0.01 and 0.001, best of {s.rounds}", flush=True)
        result["wsol_eval"] = bench_wsol_eval(s.wsol_maps, s.img_size, (0.01, 0.001), s.seed, s.rounds)
    if "data" in s.tasks:
        result["data"] = run_data_bench(s.img_size, s.batch_size, s.quick)
    for task in models:
        print(f"[{task}] counting FLOPs; {', '.join(_pipelines(task, s.compile))}: "
              f"{s.rounds} rounds of {s.n_infer if task == 'cam_infer' else s.n_train} images",
              flush=True)
        result[task] = bench_task(s, data, device, task)
    torch.backends.cudnn.benchmark = cudnn_flag
    settings["load_avg_1m_end"] = _load_average()  # includes this run's own work
    before = settings["load_avg_1m_start"]
    if device.type == "cpu" and before is not None and before > 1.0:
        settings["notes"].append(f"load average {before:.1f} on {os.cpu_count()} cores before the "
                                 f"run: other work shared the CPU, so the rates are low and noisy "
                                 f"(the ratios, from interleaved rounds, less so)")
    return result


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): how busy the machine was."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
