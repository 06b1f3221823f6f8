"""Training, as the lab asks for it: the run settings, the CAM and SEG objectives (the equivariance loss L_ser and its transforms), one ``run_epoch`` for training and evaluation, ``train`` (best epoch on a held-out validation part) and ``train_CV`` (k-fold cross-validation).

Every choice that shapes a run is made from the ``RunConfig`` alone, so a run can be repeated
from the ``args`` saved in its ``metrics.json``. The methods beyond the lab (ACoL, CSE) are
records of ``camlab.methods``; the lab's two are registered here, so ``--mode`` reads one
registry.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import KFold, train_test_split
from tqdm import tqdm

import dataloader
from camlab import figures, formats, methods, stream, synthetic
from camlab.ddp import SINGLE, World, current_world, data_parallel, gather_folds
from camlab.heads import ACOL_DELTA, ACOL_WIDTH
from camlab.images import MAX_PIXELS, ImageSet, note_once
from camlab.meters import EpochMeter, label_metrics, selection_metric
from camlab.runs import (Progress, RunLock, check_writable, cv_summary, cv_table, lock_holder, log_row, prepare_run_dir,
                         read_metrics, write_log)
from camlab.runtime import autocast, random_states, restore_random_states, seed_everything
from camlab.methods import Flag, Method, Objective, Step, classification_loss
from camlab.transforms import TRANSFORMS, EquivarianceTransform, TransformSettings, match_size, parse_transform
from camlab.utils import (CHECKPOINT_DIR, SEED_MAX, CamlabError, Range, atomic_write_text, check_range, check_ranges, reason,
                          heartbeat, resolve_device, safe_subdir)
from model import (SEG_CAM_FORMS, CAMModel, ModelConfig, check_input_size, load_checkpoint, load_teacher,
                   normalize_cam, save_checkpoint, select_class)


# ------------------------------------------------------------------------------ configuration
@dataclass
class RunConfig:
    """One run's settings; ``main.py`` fills it from the command line."""

    mode: str = "CAM"
    exp_id: str = "cam"
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    img_size: int = 224
    weights: str = "imagenet"
    backbone: str = "resnet18"
    cut: str = "layer2"
    dataset: str = "lab"
    data_root: str | None = None
    metadata: str | None = None  # wsol: the metadata folder of one dataset (wsolevaluation/metadata/CUB, ...)
    body_evidence: float | None = None  # the embedded benchmark's dial; None: the generator's default
    download: bool = False
    cv: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    resume: bool = False
    deterministic: bool = False
    skip_bad: bool = False
    max_pixels: int = MAX_PIXELS  # an image declaring more pixels is refused from its header
    data_in_memory: str = "auto"  # camlab.stream.IN_MEMORY: decoded into memory, or streamed from disk
    workers: int = 4  # the streaming path's DataLoader worker processes
    progress: bool = True
    # several labels per image (voc, multi): BCE on the multi-hot labels, OC-CSE in CSE mode
    multi_label: bool = False
    # SEG mode (the equivariance loss)
    transform: str = "scale"
    scale: float = TransformSettings.scale
    rot_deg: float = TransformSettings.rot_deg
    shift: float = TransformSettings.shift
    cam: str = "lab"
    ser_weight: float = 1.0
    ser_mean: str = "all"  # the class form's L_ser: SSENet's mean over every class's map, or the present ones
    # ACOL mode (classifier heads after the first see erased features)
    recipe: str = "pp"
    delta: tuple[float, ...] = (ACOL_DELTA,)
    acol_head: str = "conv"  # model.HEAD_TYPES; the paper's convolutional head
    acol_width: int = ACOL_WIDTH
    acol_grow: int = 0  # cells to grow the erased region by (0: the paper's)
    acol_pool: str = "avg3"  # the references' 3×3 average pool of the features before the heads, or none
    acol_init: str = "xavier"  # the references' xavier-uniform heads with zero biases, or torch's default
    # CSE mode (class-specific erasing judged by a frozen ordinary classifier)
    oc_exp: str | None = None
    erase_weight: float = 0.3
    erase_growth: float = 0.05
    area_weight: float = 0.0
    erase_norm: str = "batch"  # OC-CSE's erasing mask: camlab.methods.ERASE_NORMS
    # the values of registered methods' flags that have no field above (camlab.methods.Flag)
    options: dict = field(default_factory=dict)

    def run_dir(self) -> Path:
        return safe_subdir(CHECKPOINT_DIR, self.exp_id)

    @classmethod
    def from_args(cls, saved: dict) -> "RunConfig":
        """A run's settings from the ``args`` its metrics.json or checkpoint saved: JSON's lists
        become tuples again, and a setting the saved run predates takes its default, or in
        ``PREDATED`` what that run did."""
        known = {k: v for k, v in saved.items() if k in cls.__annotations__}
        mode = known.get("mode", cls.mode)
        known = {**(methods.METHODS[mode].predated if mode in methods.METHODS else {}), **known}
        if "delta" in known:
            known["delta"] = tuple(known["delta"])
        return cls(**known)

    def checked(self) -> "RunConfig":
        """These settings, after the range checks every command line shares (one line naming
        the flag); a bad --recipe or --delta fails here too, before any data is read. The image
        size must give feature maps of 2×2 or more and a batch that fits in memory."""
        check_ranges(self, RANGES)
        method = methods.get(self.mode)
        for flag in (f for f in methods.all_flags() if f.range):  # every method's, as before there were several
            if hasattr(self, flag.name) or flag in method.flags:
                r = flag.range
                check_range(f"--{flag.name}", self.option(flag.name), r.low, r.high, open_low=r.open_low, why=r.why)
        # recorded as the number it is, so that the run keeps its meaning if the default changes
        self.body_evidence = dataloader.settle_body_evidence(self.dataset, self.data_root, self.body_evidence)
        if self.multi_label and not formats.get(self.dataset).multi_label:
            raise CamlabError(f"--multi_label needs a dataset that labels every class in an image "
                              f"({' or '.join(formats.multi_label_formats())}), not --dataset {self.dataset}")
        method.check(self)
        dataloader.check_metadata(self.dataset, self.metadata)  # wsol without --metadata, or --metadata without wsol
        self.data_path()  # an empty --data_root, before any work
        if self.cv == 1:
            raise CamlabError("--cv 1 is not cross-validation: 0 for a single run, or 2 folds or more")
        check_input_size(self.model_config(1), self.img_size, self.batch_size, resolve_device(self.device))
        return self

    def option(self, name: str) -> Any:
        """The value of a method's flag ``name``: its field, else ``options`` (else its default)."""
        if name in {f.name for f in fields(self)}:
            return getattr(self, name)
        default = next((f.default for f in methods.all_flags() if f.name == name), None)
        return self.options.get(name, default)

    def data_path(self) -> Path:
        """The dataset folder: ``--data_root``, else the dataset's default (for ``lab``, the
        embedded benchmark at ``--body_evidence``)."""
        return dataloader.resolve_root(self.dataset, self.data_root, self.body_evidence)

    def model_config(self, num_classes: int) -> ModelConfig:
        """The model this run trains: the method's heads (``Method.model``: ACoL's per
        ``recipe``, of kind ``acol_head``), one linear ``p`` head for the lab's methods."""
        return ModelConfig(num_classes, self.backbone, self.cut, **methods.get(self.mode).model(self))

    @property
    def method(self) -> Method:
        return methods.get(self.mode)


# The bounds of every numeric setting shared by all methods (flag -> Range). NaN and infinities never pass.
RANGES: dict[str, Range] = {
    "epochs": Range(1, 10_000),
    "batch_size": Range(1, 1 << 20),
    "img_size": Range(1, 1 << 20),
    "seed": Range(0, SEED_MAX, "numpy's seed range"),
    "cv": Range(0, 1_000, "0: a single run"),
    "lr": Range(0, 1, "Adam's learning rate", open_low=True),
    "val_fraction": Range(0, 0.9, "the share of training images held out", open_low=True),
    "max_pixels": Range(1, 1 << 40, "pixels an image may declare"),
    "workers": Range(0, 256, "DataLoader worker processes"),
}  # the methods' own flags bring their ranges (camlab.methods.Flag.range)


# Settings that change where or how verbosely a run goes, not what it computes: the rest must
# agree for --resume to continue a run and for a comparison to reuse one.
NOT_SHAPING = ("exp_id", "device", "precision", "overwrite", "resume", "deterministic", "progress", "download",
               "max_pixels", "data_in_memory", "workers")  # either data path draws the same batches


def shaping(cfg: RunConfig) -> dict:
    """The settings that decide a run's results, as metrics.json stores them (lists, not tuples);
    an unset --body_evidence on the embedded benchmark counts as the generator's default."""
    found = {k: json.loads(json.dumps(v)) for k, v in asdict(cfg).items() if k not in NOT_SHAPING}
    if found["body_evidence"] is None and cfg.dataset in synthetic.EMBEDDED and cfg.data_root is None:
        found["body_evidence"] = synthetic.BODY_EVIDENCE
    return found


def differing(cfg: RunConfig, saved_args: dict) -> list[str]:
    """The shaping settings in which ``cfg`` and a saved run's ``args`` differ (a setting the
    saved run predates counts as its default)."""
    saved = shaping(RunConfig.from_args(saved_args))
    return [k for k, v in shaping(cfg).items() if saved[k] != v]


def cam_objective(model: CAMModel, images: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator | None = None, epoch: int = 1) -> Step:
    """Task 1 of the handout: cross-entropy between the scores and the labels (BCE for
    multi-hot labels)."""
    scores, _, _ = model(images)
    loss = classification_loss(scores, labels)
    return Step(loss, scores, {"ce": loss.detach()})


class SegObjective:
    """Task 2 (SSENet): both branches through the same model, the original image and its
    transformed copy ``A x``, with ``L = (CE(x) + CE(Ax)) / 2 + ser_weight * L_ser`` where
    ``L_ser = mean over valid positions of (cam(Ax) - A cam(x))^2``.

    For ``scale`` this is the handout's I_L / I_S pair, the large branch's map downscaled by
    bilinear interpolation. The handout downscales the features before the (linear) lab CAM;
    transforming the one-channel CAM instead gives the same map for a fraction of the work.
    The ``class`` form is ReLU'd, transformed, and only then divided by its maximum over the
    valid positions, so that an exactly equivariant model scores zero under every transform
    (corners that a rotation drops would otherwise change the maximum). The ``lab`` form keeps
    the handout's definition: each branch weights its own GAP, which sees the padding that
    rotation and translation bring in, so for those two it is not exactly zero.

    ``ser_mean`` (the ``class`` form only): ``all``, SSENet's (YudeWang/SSENet-pytorch,
    ``train_cls_ser.py``): every class's map is normalised as ``ReLU(ReLU(x) - 1e-5) / (max + 1e-5)``,
    absent classes are zero, and the squared error is averaged over every class's map, absent ones
    counted, so ``L_ser`` is the mean over N × K × positions; ``present``, camlab's earlier form:
    the mean over the label's map (or the present classes' maps) alone, K times larger for one
    label per image. Under a transform that drops positions (rotation, translation) the mean runs
    over the valid positions of every map in both.
    """

    def __init__(self, transform: EquivarianceTransform, cam_form: str = "lab",
                 ser_weight: float = 1.0, ser_mean: str = "all") -> None:
        if ser_mean not in SER_MEANS:
            raise CamlabError(f"--ser_mean {ser_mean!r}: choose from {', '.join(SER_MEANS)}")
        self.transform, self.cam_form, self.ser_weight, self.ser_mean = transform, cam_form, ser_weight, ser_mean

    def __call__(self, model: CAMModel, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None, epoch: int = 1) -> Step:
        sampled = self.transform.draw(images.shape[0], generator)
        scores, features, gap = model(images)
        scores_t, features_t, gap_t = model(self.transform.apply(images, sampled))
        cam_t = self._raw_map(model, features_t, gap_t, labels)
        target = self.transform.apply(self._raw_map(model, features, gap, labels), sampled)
        valid = self.transform.valid(sampled, features.shape[-1], images.device)
        cam_t, target, valid = match_size(cam_t, target, valid)
        if self.cam_form == "class":
            each = valid.expand_as(cam_t).flatten(0, 1)  # one map per image and class
            shift = SSENET_SHIFT if self.ser_mean == "all" else 0.0
            cam_t = normalize_cam(cam_t.flatten(0, 1), valid=each, shift=shift).view_as(cam_t)
            target = normalize_cam(target.flatten(0, 1), valid=each, shift=shift).view_as(target)
            if labels.ndim == 2:  # every present class's map counts
                present = valid * labels.to(valid.dtype).view(*labels.shape, 1, 1)
                cam_t, target = cam_t * present, target * present
                valid = valid if self.ser_mean == "all" else present
        ser = ser_loss(cam_t, target, valid)
        if self.cam_form == "class" and self.ser_mean == "all" and labels.ndim == 1:
            ser = ser / model.config.num_classes  # the K - 1 absent maps: zero error, counted
        ce = (classification_loss(scores, labels) + classification_loss(scores_t, labels)) / 2
        loss = ce + self.ser_weight * ser
        return Step(loss, scores, {"ce": ce.detach(), "ser": ser.detach()})

    def _raw_map(self, model: CAMModel, features: torch.Tensor, gap: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        """N×1×h×w: the lab form, or the labelled class's map (not yet scaled); for multi-hot
        labels the class form is every class's map, N×K×h×w (the loss counts the present ones).
        SSENet's form (``ser_mean`` all) transforms the raw map and takes the ReLU after, as its
        reference branch interpolates the raw map; camlab's earlier form takes it before."""
        if self.cam_form == "lab":
            return model.lab_cam(features, gap).unsqueeze(1)
        maps = model.class_cams(features) if labels.ndim == 2 else select_class(model.class_cams(features), labels)[:, None]
        return maps if self.ser_mean == "all" else F.relu(maps)


SER_MEANS = ("all", "present")  # --ser_mean: SSENet's mean over every class's map, or the present ones
SSENET_SHIFT = 1e-5  # SSENet's normalisation subtracts this after the ReLU: ReLU(ReLU(x) - 1e-5) / (max + 1e-5)


def ser_loss(cam_t: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid positions: maps N×M×s×s, ``valid`` 0/1 N×M×s×s (or
    N×1×s×s for every map)."""
    valid = valid.expand_as(cam_t)
    return ((cam_t - target) ** 2 * valid).sum() / valid.sum().clamp_min(1.0)


def _seg_objective(cfg: "RunConfig", classes: list[str], teacher: None) -> Objective:
    settings = TransformSettings(scale=cfg.scale, rot_deg=cfg.rot_deg, shift=cfg.shift)
    return SegObjective(EquivarianceTransform(cfg.transform, settings), cfg.cam, cfg.ser_weight, cfg.ser_mean)


def _seg_check(cfg: "RunConfig") -> None:
    """The scale transform's small branch must still give feature maps of 2×2 or more."""
    if "scale" in parse_transform(cfg.transform):
        small = round(cfg.img_size * cfg.scale)
        check_input_size(cfg.model_config(1), max(small, 1), cfg.batch_size, resolve_device(cfg.device),
                         flag=f"--img_size {cfg.img_size} × --scale {cfg.scale:g} =")


def _transform_name(name: str) -> str:
    """``--transform``'s type: a name of ``camlab.transforms.TRANSFORMS`` or several joined by '+'."""
    parse_transform(name)
    return name


# The lab's methods: task 1 (CAM) and task 2 (SEG, the equivariance loss); they lead --mode.
SEG = methods.register(Method(
    "SEG", "plus the equivariance loss (task 2)", _seg_objective,
    lambda cfg: f"SEG {cfg.transform}" + (" (L_ser over the present maps)" if cfg.cam == "class" and cfg.ser_mean == "present"
                                          else ""),
    group="SEG mode (equivariance loss)",
    flags=(
        Flag("transform", f"one of {', '.join(TRANSFORMS)}, or several joined with '+' (applied left to right, "
             f"e.g. rotate+hflip)", _transform_name),
        Flag("scale", "factor of the scale transform", float,
             range=Range(0, 4, "the scale transform's resize factor", open_low=True)),
        Flag("rot_deg", "rotate draws an angle per image in [-rot_deg, rot_deg]", float,
             range=Range(0, 180, "rotate draws an angle in [-rot_deg, rot_deg]")),
        Flag("shift", "translate draws a shift per image up to this fraction of the side", float,
             range=Range(0, 0.5, "a fraction of the side; beyond half no image is left to compare")),
        Flag("cam", "lab: softmax-weighted sum of feature maps; class: fc weights of the label, ReLU, divided by "
             "its max (SSENet)", choices=SEG_CAM_FORMS),
        Flag("ser_weight", "weight of the equivariance loss L_ser", float, range=Range(0, 1_000, "a loss weight")),
        Flag("ser_mean", "class form: all, SSENet's mean over every class's map (absent ones zero, counted); present: "
             "over the label's (or present classes') maps alone, K times larger with one label", choices=SER_MEANS)),
    check=_seg_check, predated={"ser_mean": "present"},
    presets={"handout": dict(transform="scale", scale=0.5, cam="lab"),
             "ssenet": dict(transform="scale", scale=0.3, cam="class", ser_mean="all")}), first=True)
CAM = methods.register(Method("CAM", "classification (task 1)", lambda cfg, classes, teacher: cam_objective,
                              lambda cfg: "CAM"), first=True)


def teacher_model(cfg: "RunConfig", classes: list[str]) -> CAMModel | None:
    """The frozen model a method judges with (``Method.teacher``: CSE's ordinary classifier, the
    best checkpoint of the CAM run ``--oc_exp``), trained on the same classes and label form; None
    for a method without one."""
    flag = cfg.method.teacher
    if flag is None:
        return None
    return load_teacher(teacher_checkpoint(cfg), classes, cfg.multi_label, f"--{flag} {cfg.option(flag)}",
                        resolve_device(cfg.device))


def teacher_checkpoint(cfg: "RunConfig") -> Path:
    """The path of the method's teacher (CSE's ordinary classifier), checked to exist."""
    flag = cfg.method.teacher
    exp_id = cfg.option(flag)
    if not exp_id:
        raise CamlabError(f"--mode {cfg.mode} needs --{flag} <exp_id>, a finished CAM run "
                          f"(e.g. python main.py --mode CAM --exp_id oc, then --{flag} oc)")
    path = safe_subdir(CHECKPOINT_DIR, exp_id, f"--{flag}") / "best.pth"
    if not path.is_file():
        raise CamlabError(f"--{flag} {exp_id}: {path} does not exist; train it first with "
                          f"python main.py --mode CAM --exp_id {exp_id}")
    return path


def build_objective(cfg: "RunConfig", classes: list[str]) -> Objective:
    """The objective of the run's method, with its teacher loaded where it has one."""
    return cfg.method.objective(cfg, list(classes), teacher_model(cfg, classes))


def run_epoch(model: CAMModel, data: ImageSet, indices: torch.Tensor, *,
              objective: Objective, img_size: int, batch_size: int,
              optimizer: torch.optim.Optimizer | None = None, seed: int = 0, epoch: int = 0,
              desc: str = "", progress: bool = True, world: World = SINGLE,
              precision: str = "auto", multi_label: bool = False) -> dict[str, float]:
    """One pass over ``data[indices]``: trains when an optimizer is given, else evaluates.

    Training shuffles and mirrors half of the images; evaluation runs in
    ``torch.inference_mode``. Every random draw (order, flips, the objective's transforms)
    comes from (seed, epoch), so a resumed run repeats it. With several processes each takes
    its shard and the means cover them all. On a GPU the batches are channels-last and, with
    ``precision`` auto or bf16, run under bfloat16 autocast; nothing waits on the GPU per step.
    Returns the epoch means of the loss, its terms and ``acc`` (with ``multi_label``, the
    labels are every present class, multi-hot, and ``f1`` and ``map`` come too: EpochMeter).
    """
    training = optimizer is not None
    model.train(training)
    meter = EpochMeter()
    device = next(model.parameters()).device
    # flips and transforms: stream 1 for the main process, its own stream for every other one
    generator = torch.Generator().manual_seed(dataloader.epoch_seed(seed, epoch, stream=1 + world.rank))
    batches = dataloader.batch_indices(indices, batch_size, training, seed, epoch, world.rank, world.size)
    with torch.inference_mode(not training), autocast(device, precision):
        shown = progress and world.main
        read = stream.batches(data, batches, device)  # from memory, or from disk in worker processes
        lines = heartbeat(read, [len(b) for b in batches], desc) if shown else read
        for idx, stored in tqdm(lines, desc=desc, leave=False, total=len(batches), disable=None if shown else True):
            flip = (torch.rand(len(idx), generator=generator) < 0.5).to(device) if training else None
            images = dataloader.to_model_input(stored, img_size, flip)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            labels = data.present[idx].float().to(device) if multi_label else data.labels[idx].to(device)
            step = objective(model, images, labels, generator, epoch)
            if training:
                optimizer.zero_grad(set_to_none=True)
                step.loss.backward()
                optimizer.step()
            meter.update(step, labels)
    return meter.compute(world)


def _resume_from(path: Path, cfg: RunConfig, model: CAMModel, optimizer: torch.optim.Optimizer,
                 scheduler) -> Progress:
    """Load ``last.pth`` into the model, optimiser and scheduler, restore the random states,
    and return the progress it records. Another run's settings are refused."""
    saved, ckpt = load_checkpoint(path, next(model.parameters()).device)
    saved_args = ckpt.get("args", {})
    differ = differing(cfg, saved_args)
    if differ:
        given = shaping(cfg)
        detail = "; ".join(f"--{k} {saved_args.get(k)} there, {given[k]} now" for k in differ)
        raise CamlabError(f"--resume: {path} was written with other settings ({detail}); rerun with "
                          f"the saved ones or choose another --exp_id")
    try:
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_random_states(ckpt["random"])
        return Progress(**ckpt["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CamlabError(f"--resume: {path} lacks a complete training state ({reason(err)})") from None


def build_training(cfg: RunConfig, classes: list[str], device: torch.device, seed: int
                   ) -> tuple[CAMModel, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, Objective]:
    """The model (seeded, channels-last on a GPU), Adam (fused on a GPU), the cosine schedule
    and the mode's objective, as every run starts; ``bench.py`` builds its ``fast`` path here too."""
    seed_everything(seed)
    shape = cfg.model_config(len(classes))
    model = CAMModel.from_config(shape, cfg.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    return model, optimizer, scheduler, build_objective(cfg, classes)


def epoch_options(cfg: RunConfig, world: World = SINGLE) -> dict:
    """The keyword arguments every ``run_epoch`` of a run shares."""
    return dict(img_size=cfg.img_size, batch_size=cfg.batch_size, progress=cfg.progress,
                world=world, precision=cfg.precision, multi_label=cfg.multi_label)


def _save_epoch(run_dir: Path, cfg: RunConfig, model: CAMModel, optimizer: torch.optim.Optimizer,
                scheduler, state: Progress, improved: bool, classes: list[str]) -> None:
    """The epoch's files, each written atomically: best.pth (when improved), then last.pth, then
    log.csv and curves.png, so that a kill at any moment leaves a state --resume repeats exactly."""
    meta = dict(epoch=state.epoch, args=asdict(cfg), weights_used=model.weights_used, classes=classes,
                best_val_acc=state.best_acc)
    if improved:
        save_checkpoint(run_dir / "best.pth", model, **meta)
    save_checkpoint(run_dir / "last.pth", model, optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), random=random_states(), progress=asdict(state), **meta)
    write_log(run_dir / "log.csv", state.rows)
    figures.plot_curves(state.rows, run_dir / "curves.png",
                          title=" ".join(dict.fromkeys([cfg.exp_id, run_dir.name])))  # "cv5 fold2"


def fit(cfg: RunConfig, train_set: ImageSet, train_idx: torch.Tensor,
        val_idx: torch.Tensor, run_dir: Path, device: torch.device, seed: int,
        desc: str = "", world: World = SINGLE) -> tuple[CAMModel, dict]:
    """Train for ``cfg.epochs``, keep ``best.pth`` (best validation accuracy) and ``last.pth``
    (everything ``--resume`` needs), write ``log.csv`` and ``curves.png`` every epoch. With
    ``cfg.resume`` and a ``last.pth`` in ``run_dir``, go on from there. With several processes
    (``world``) they train one model with DDP, each on its shard; only the main one writes.
    Returns the best model and a summary."""
    if len(val_idx) < world.size:
        raise CamlabError(f"{len(val_idx)} validation images cannot be shared by {world.size} processes")
    model, optimizer, scheduler, objective = build_training(cfg, list(train_set.classes), device, seed)
    train_objective = data_parallel(objective, model, world)
    common = epoch_options(cfg, world)
    state = Progress()
    if cfg.resume and (run_dir / "last.pth").is_file():
        state = _resume_from(run_dir / "last.pth", cfg, model, optimizer, scheduler)
        if world.main:
            print(f"{desc}resuming {run_dir} after epoch {state.epoch}", flush=True)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_m = run_epoch(model, train_set, train_idx, objective=train_objective, optimizer=optimizer,
                            seed=seed, epoch=epoch, desc=f"{desc}epoch {epoch}/{cfg.epochs}", **common)
        scheduler.step()
        val_m = run_epoch(model, train_set, val_idx, objective=objective, epoch=epoch,
                          desc=f"{desc}validate", **common)
        if not math.isfinite(train_m["loss"]):
            raise CamlabError(f"training loss became {train_m['loss']} in epoch {epoch}; "
                              f"try a lower --lr (the last good checkpoints are kept in {run_dir})")
        state.epoch = epoch
        state.rows.append(log_row(epoch, train_m, val_m, lr))
        state.seconds.append(round(time.perf_counter() - t0, 2))
        chosen = val_m[selection_metric(cfg.multi_label)]
        improved = chosen > state.best_acc
        if improved:
            state.best_acc, state.best_epoch = chosen, epoch
        if world.main:
            _save_epoch(run_dir, cfg, model, optimizer, scheduler, state, improved, list(train_set.classes))
            print(f"{desc}epoch {epoch}/{cfg.epochs}: train loss {train_m['loss']:.4f} "
                  f"acc {train_m['acc']:.3f} | val loss {val_m['loss']:.4f} acc {val_m['acc']:.3f} "
                  f"| {state.seconds[-1]:.0f}s", flush=True)
    world.barrier()  # best.pth is written before any process reads it
    best, _ = load_checkpoint(run_dir / "best.pth", device)
    return best, {"best_epoch": state.best_epoch, "best_val_acc": state.best_acc,
                  "weights_used": model.weights_used, "log": state.rows, "epoch_seconds": state.seconds}


def evaluate(model: CAMModel, data: ImageSet, cfg: RunConfig, desc: str = "test",
             world: World = SINGLE) -> dict:
    """Cross-entropy and accuracy of ``model`` on every image of ``data`` (shared among the
    processes of ``world``). Accuracy reads the original images' scores in every mode, so SEG's
    transformed branch is not computed here."""
    if len(data) < world.size:
        raise CamlabError(f"{len(data)} test images cannot be shared by {world.size} processes")
    return run_epoch(model, data, torch.arange(len(data)), objective=cam_objective, desc=desc,
                     **epoch_options(cfg, world))


def load_data(cfg: RunConfig, device: torch.device) -> tuple[ImageSet, ImageSet]:
    """The splits in the dataset's "train" and "test" roles (``dataloader.split_for``: e.g. voc
    trains on train_aug when it is there and reports on val), on ``device``."""
    root = cfg.data_path()
    kw = dict(img_size=cfg.img_size, download=cfg.download, progress=cfg.progress, skip_bad=cfg.skip_bad,
              metadata=cfg.metadata, max_pixels=cfg.max_pixels, in_memory=cfg.data_in_memory, workers=cfg.workers)
    train_set = dataloader.load_split(cfg.dataset, root, dataloader.split_for(cfg.dataset, "train", root), **kw)
    test_set = dataloader.load_split(cfg.dataset, root, dataloader.split_for(cfg.dataset, "test", root), **kw)
    dataloader.benchmark_record(cfg.dataset, root, cfg.body_evidence)  # the setting the data was made at
    if cfg.multi_label and train_set.present is None:
        raise CamlabError(f"--multi_label: {root} gives no per-image class lists")
    return tuple(stream.place(s, device, f"the {r} split") for s, r in ((train_set, "train"), (test_set, "test")))


def benchmark_meta(cfg: RunConfig) -> dict:
    """What a run's metrics record of the embedded benchmark it ran on; empty for other data."""
    return dataloader.benchmark_record(cfg.dataset, cfg.data_path(), cfg.body_evidence)


def _validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified train/validation indices, so the best epoch is chosen without the test split."""
    if not 0 < fraction < 1:
        raise CamlabError(f"--val_fraction must lie strictly between 0 and 1, got {fraction}")
    idx = np.arange(len(labels))
    y = labels.cpu().numpy()
    n_val = math.ceil(fraction * len(y))
    if len(y) < 2 or n_val >= len(y):
        raise CamlabError(f"{len(y)} training images cannot spare a --val_fraction {fraction} "
                          f"validation part; add images or lower --val_fraction")
    classes = np.unique(y)
    # stratify only where every class can be on both sides
    stratify = y if n_val >= len(classes) and np.bincount(y)[classes].min() >= 2 else None
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va))


def _finish(run_dir: Path, cfg: RunConfig, result: dict, extra: dict) -> dict:
    metrics = {"test_acc": result["test_acc"], "best_epoch": result["best_epoch"],
               "best_val_acc": result["best_val_acc"], "weights": result["weights_used"],
               "epoch_seconds": result["epoch_seconds"], **extra, "args": asdict(cfg)}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _start(cfg: RunConfig) -> tuple[Path, torch.device, World]:
    """The run folder, device and processes; cuDNN picks its fastest kernels for the fixed
    input size, unless deterministic kernels are asked for (exact repeats on a GPU)."""
    # warn_only: the bilinear-upsampling and grid-sample backwards SEG and CSE need have no
    # deterministic CUDA kernel; torch warns once about them instead of stopping the run
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    world = current_world()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    return cfg.run_dir(), device, world


def _prepare(cfg: RunConfig, run_dir: Path, device: torch.device,
             world: World) -> tuple[ImageSet, ImageSet]:
    """The data and the run folder, the main process first: it alone may generate the
    embedded dataset, fill the decode cache and make (or refuse) the folder."""
    if world.main:
        data = load_data(cfg, device)
        prepare_run_dir(run_dir, cfg.overwrite, cfg.resume)
        check_writable(run_dir)  # a read-only or full disk fails here, not after the first epoch
    world.barrier()
    return data if world.main else load_data(cfg, device)


def _finished(run_dir: Path, cfg: RunConfig) -> dict | None:
    """With --resume, the metrics of a part (a fold) that already finished with these settings."""
    path = run_dir / "metrics.json"
    if not cfg.resume or not path.is_file():
        return None
    metrics = read_metrics(path)
    return None if differing(cfg, metrics["args"]) else metrics


def _writing(cfg: RunConfig) -> contextlib.AbstractContextManager:
    """The run folder locked for as long as this process writes it (the main process only)."""
    return RunLock(cfg.run_dir()) if current_world().main else contextlib.nullcontext()


def train(cfg: RunConfig) -> dict:
    """The lab's ``train()``: fit on the training split minus a validation part, pick the best
    epoch on that part, then report the best checkpoint's test accuracy in ``metrics.json``.
    The run folder is locked while it is written (a second process on it is refused)."""
    with _writing(cfg):
        return _train(cfg)


def _train(cfg: RunConfig) -> dict:
    t0 = time.perf_counter()
    run_dir, device, world = _start(cfg)
    train_set, test_set = _prepare(cfg, run_dir, device, world)
    train_idx, val_idx = _validation_split(train_set.labels, cfg.val_fraction, cfg.seed)
    model, result = fit(cfg, train_set, train_idx, val_idx, run_dir, device, cfg.seed, world=world)
    test = evaluate(model, test_set, cfg, world=world)
    result["test_acc"] = test["acc"]
    extra = {**label_metrics(test, cfg.multi_label), "device": str(device), "processes": world.size, "n_train": len(train_idx),
             "n_val": len(val_idx), "n_test": len(test_set), "seconds": round(time.perf_counter() - t0, 1),
             **benchmark_meta(cfg)}
    if not world.main:
        return {"test_acc": result["test_acc"]}
    metrics = _finish(run_dir, cfg, result, extra)
    scores = (f"test mAP {metrics['test_map']:.4f}, F1 {metrics['test_f1']:.4f}, exact match "
              if cfg.multi_label else "test accuracy ")
    print(f"{scores}{metrics['test_acc']:.4f} (best epoch {metrics['best_epoch']}, "
          f"val {metrics['best_val_acc']:.4f}); saved in {run_dir}/")
    return metrics


@dataclass
class FinishedRun:
    """A finished run as every reader loads it: its best model (eval mode), its settings, the
    checkpoint's other entries (``classes``, ``epoch``, ...) and its data root."""

    exp_id: str
    net: CAMModel
    cfg: RunConfig
    ckpt: dict
    root: Path


def load_run(exp_id: str, device: torch.device | str = "cpu", data_root: str | None = None) -> FinishedRun:
    """``checkpoints/<exp_id>/best.pth`` with its settings (``RunConfig.from_args``); the data
    root its settings name, or ``data_root`` instead."""
    net, ckpt = load_checkpoint(safe_subdir(CHECKPOINT_DIR, exp_id) / "best.pth", device)
    cfg = RunConfig.from_args(ckpt.get("args", {}))
    root = dataloader.resolve_root(cfg.dataset, data_root, cfg.body_evidence) if data_root else cfg.data_path()
    if not root.exists() and not (cfg.dataset in synthetic.EMBEDDED and data_root is None and cfg.data_root is None):
        raise CamlabError(f"{exp_id}'s data root {root} no longer exists (moved or deleted?); pass --data_root")
    dataloader.check_classes(cfg.dataset, root, net.config.num_classes, f"{exp_id} was trained on", cfg.metadata)
    if (holder := lock_holder(cfg.run_dir())) is not None:
        note_once(f"{cfg.run_dir()} is being written by process {holder}; reading its last complete best.pth")
    return FinishedRun(exp_id, net.eval(), cfg, ckpt, root)


def kfold_splits(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's shuffled KFold over ``range(n)``: k disjoint validation parts covering all."""
    if k < 2 or k > n:
        raise CamlabError(f"--cv {k}: needs 2 <= folds <= number of training images ({n})")
    return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n)))


def train_CV(cfg: RunConfig) -> dict:  # noqa: N802 - the handout's name
    """k-fold cross-validation over the training split: per fold the best epoch is chosen on
    that fold's validation part; the best model of each fold is then scored on the test split.
    Writes ``cv.json`` (``folds``, ``mean``, ``std``) and ``cv.md`` beside the fold folders."""
    with _writing(cfg):
        return _train_cv(cfg)


def _train_cv(cfg: RunConfig) -> dict:
    run_dir, device, world = _start(cfg)
    train_set, test_set = _prepare(cfg, run_dir, device, world)
    folds = []
    for k, (tr, va) in enumerate(kfold_splits(len(train_set), cfg.cv, cfg.seed), start=1):
        if (k - 1) % world.size != world.rank:
            continue  # with several processes, each trains its own folds alone
        fold_dir = run_dir / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        metrics = _finished(fold_dir, cfg)
        if metrics is not None:
            print(f"fold {k}/{cfg.cv}: finished before, test accuracy {metrics['test_acc']:.4f}")
        else:
            model, result = fit(cfg, train_set, torch.from_numpy(tr), torch.from_numpy(va),
                                fold_dir, device, cfg.seed + k, desc=f"fold {k}/{cfg.cv} ")
            test = evaluate(model, test_set, cfg)
            result["test_acc"] = test["acc"]
            metrics = _finish(fold_dir, cfg, result, {**label_metrics(test, cfg.multi_label), "fold": k, "n_train": len(tr), "n_val": len(va),
                                                       **benchmark_meta(cfg)})
        folds.append({"fold": k, "val_acc": metrics["best_val_acc"], "test_acc": metrics["test_acc"],
                      "best_epoch": metrics["best_epoch"]})
    folds = gather_folds(folds, world)
    if not world.main:
        return {}
    summary = cv_summary(folds)
    atomic_write_text(run_dir / "cv.json", json.dumps({**summary, "args": asdict(cfg)}, indent=2) + "\n")
    table = cv_table(summary)
    atomic_write_text(run_dir / "cv.md", table)
    print(table, end="")
    return summary


