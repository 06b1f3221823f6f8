"""A finished run's affinity network (AffinityNet, Ahn and Kwak, CVPR 2018): camlab's backbone with psa's multi-level feature head, trained on the training split from the run's CAMs and dense CRF (image labels only), stored beside the run and reused, and the affinity matrices of its random walk.

Follows jiwoon-ahn/psa ``network/resnet38_aff.py`` (the head: a 1×1 convolution with ELU on each
of the last stages, concatenated, a 1×1 convolution with ELU; kaiming-normal then xavier-uniform
gain 4 initialisation, no biases) and ``train_aff.py`` (SGD with the poly schedule, power 0.9;
the new layers at 10× the backbone's rate; weight decay 5e-4; batch 8; 8 epochs; a random
horizontal flip). camlab's backbone stops after layer2, so the head reads layer1 (average-pooled
to layer2's grid) and layer2, where psa's reads three stages of a ResNet-38 at 1/8.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dataloader
import model
from camlab import affinity
from camlab.crf import CRF_VARIANTS
from camlab.images import ImageSet
from camlab.utils import CHECKPOINT_DIR, CamlabError, atomic_write, safe_subdir
from research.experiments import Experiment, _present, _rgb

AFFINITY_FILE = "affinity.pth"  # checkpoints/<exp_id>/affinity.pth: the run's affinity network
AFFINITY_FORMAT = "camlab-affinity-1"
# "weights" (psa's): the backbone starts from the run's --weights, as psa starts AffinityNet from
# the ImageNet weights its classifier started from (with --weights none: random init); "run"
# (camlab's variant): from the CAM run's trained backbone, the only trained one a run from random
# init has
AFFINITY_INITS = ("weights", "run")


@dataclasses.dataclass(frozen=True)
class AffinitySettings:
    """How a run's affinity network is trained (psa's values unless said): pairs closer than
    ``radius`` on the feature grid, of ``pairs`` form (``camlab.affinity.PAIR_FORMS``); the
    confident labels from the CRF ``crf`` at α ``low_alpha`` and ``high_alpha``; SGD at ``lr``
    (the head at 10×), poly decay, ``weight_decay``, ``batch_size``, ``epochs``; ``init`` (see
    AFFINITY_INITS); ``n_images`` training images (None: all); the CAMs multi-scale (``msf``)."""

    radius: int = affinity.PSA_RADIUS
    pairs: str = "psa"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    init: str = "weights"
    low_alpha: float = affinity.PSA_LOW_ALPHA
    high_alpha: float = affinity.PSA_HIGH_ALPHA
    crf: str = "affinitynet"
    n_images: int | None = None
    msf: bool = True
    seed: int = 0

    def checked(self) -> "AffinitySettings":
        if self.pairs not in affinity.PAIR_FORMS:
            raise CamlabError(f"--aff_pairs {self.pairs}: choose one of {', '.join(affinity.PAIR_FORMS)}")
        if self.init not in AFFINITY_INITS:
            raise CamlabError(f"--aff_init {self.init}: choose one of {', '.join(AFFINITY_INITS)}")
        if self.crf not in CRF_VARIANTS:
            raise CamlabError(f"unknown CRF variant {self.crf!r}; choose one of {', '.join(CRF_VARIANTS)}")
        if self.radius < 2 or self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise CamlabError(f"--aff_radius must be at least 2 and --aff_epochs at least 1, got {self.radius} and "
                              f"{self.epochs}")
        return self


class AffinityNet(nn.Module):
    """The backbone of a run's shape and psa's feature head: ``forward`` gives N×D×h×w features
    on the last stage's grid (1/8 of the input for a layer2 cut), whose pairwise
    ``exp(−mean_c |f_i − f_j|)`` are the affinities."""

    def __init__(self, config: model.ModelConfig, state: dict | None = None) -> None:
        super().__init__()
        self.backbone, _ = model.build_backbone(dataclasses.replace(config, feature_pool="none"), state)
        stages = [name for name in model.STAGES if hasattr(self.backbone, name)][-2:]
        self.stages = stages
        widths = [model._stage_channels(getattr(self.backbone, s)) for s in stages]
        outs = [w // 2 for w in widths]  # psa: 512 -> 64, 1024 -> 128, 4096 -> 256; here 64 -> 32, 128 -> 64
        self.reduce = nn.ModuleList(nn.Conv2d(w, o, 1, bias=False) for w, o in zip(widths, outs))
        self.out = nn.Conv2d(sum(outs), sum(outs), 1, bias=False)
        for conv in self.reduce:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.out.weight, gain=4)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.reduce.parameters(), *self.out.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taken, x = {}, images
        for name, layer in self.backbone.named_children():
            x = layer(x)
            if name in self.stages:
                taken[name] = x
        grid = taken[self.stages[-1]].shape[-2:]
        parts = [F.elu(conv(F.adaptive_avg_pool2d(taken[s], grid))) for conv, s in zip(self.reduce, self.stages)]
        return F.elu(self.out(torch.cat(parts, dim=1)))


def affinity_path(exp_id: str) -> Path:
    return safe_subdir(CHECKPOINT_DIR, exp_id) / AFFINITY_FILE


@functools.lru_cache(maxsize=16)
def feature_grid(config: model.ModelConfig, img_size: int) -> tuple[int, int]:
    """The affinity network's feature grid (h, w) for inputs of ``img_size`` (one forward pass on
    zeros, on the CPU, once per shape)."""
    with torch.inference_mode():
        return tuple(AffinityNet(config).eval()(torch.zeros(1, 3, img_size, img_size)).shape[-2:])


def training_labels(exp: Experiment, data: ImageSet, grid: tuple[int, int], settings: AffinitySettings) -> np.ndarray:
    """The confident label map of each training image on the feature grid (int64 N×h×w:
    ``camlab.affinity.crf_pair_labels`` of the run's class maps of the image's labels)."""
    maps, present, images = exp.class_maps(data, settings.msf), _present(data).cpu().numpy(), _rgb(data)
    return np.stack([affinity.crf_pair_labels(image, m, np.flatnonzero(here), grid, settings.low_alpha,
                                              settings.high_alpha, settings.crf)
                     for image, m, here in zip(images, maps, present)])


def train_affinity(exp: Experiment, settings: AffinitySettings) -> tuple[AffinityNet, dict]:
    """Train ``exp``'s affinity network on its training split (psa's ``train_aff.py``): per
    image its confident labels (:func:`training_labels`), their pairs' labels
    (``camlab.affinity.pair_labels``), the balanced loss (``camlab.affinity.affinity_loss``)
    over each batch. -> (the network in eval mode, its training record)."""
    settings = settings.checked()
    torch.manual_seed(settings.seed)  # the head's initialisation
    if settings.init == "run":
        net = AffinityNet(exp.net.config).to(exp.device)
        net.backbone.load_state_dict(exp.net.backbone.state_dict())
    else:
        net = AffinityNet(exp.net.config, model.resolve_weights(exp.cfg.weights, exp.net.config.backbone)[0]).to(exp.device)
    grid = feature_grid(exp.net.config, exp.cfg.img_size)
    src, dst = affinity.pair_indices(*grid, settings.radius, settings.pairs)
    data = exp.split("train", settings.n_images)
    labels = training_labels(exp, data, grid, settings)
    kinds = [np.stack(k) for k in zip(*(affinity.pair_labels(lab, src, dst) for lab in labels))]
    mirrored = [np.stack(k) for k in zip(*(affinity.pair_labels(lab[:, ::-1], src, dst) for lab in labels))]
    src_t, dst_t = torch.from_numpy(src).to(exp.device), torch.from_numpy(dst).to(exp.device)
    gen = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = max(1, len(data) // settings.batch_size)  # psa drops the last partial batch
    max_step, step = steps_per_epoch * settings.epochs, 0
    head = set(map(id, net.head_parameters()))
    optimizer = torch.optim.SGD([
        {"params": [p for p in net.parameters() if id(p) not in head], "lr": settings.lr},
        {"params": net.head_parameters(), "lr": 10 * settings.lr}], lr=settings.lr, weight_decay=settings.weight_decay)
    base = [g["lr"] for g in optimizer.param_groups]
    record = {"epochs": [], "grid": list(grid), "n_pairs": len(src), "n_images": len(data),
              "pair_counts": {k: float(v.sum()) for k, v in zip(("bg", "fg", "neg"), kinds)}}
    net.train()
    for epoch in range(1, settings.epochs + 1):
        order, sums = torch.randperm(len(data), generator=gen), {"loss": 0.0, "bg": 0.0, "fg": 0.0, "neg": 0.0}
        flips = torch.rand(len(data), generator=gen) < 0.5
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            flip = flips[idx]
            picked = [torch.from_numpy(np.where(flip.numpy()[:, None], m[idx.numpy()], k[idx.numpy()])).to(exp.device)
                      for k, m in zip(kinds, mirrored)]
            inputs = dataloader.to_model_input(data.images[idx.to(data.images.device)], exp.cfg.img_size,
                                               flip.to(data.images.device))
            aff = affinity.feature_affinities(net(inputs), src_t, dst_t)
            loss, terms = affinity.affinity_loss(aff, *picked)
            if not torch.isfinite(loss):
                raise CamlabError(f"{exp.exp_id}: the affinity network diverged (loss {loss.item()}) at epoch {epoch}; "
                                  f"a lower --aff_lr")
            for group, lr in zip(optimizer.param_groups, base):  # psa's PolyOptimizer: (1 - step / max)^0.9
                group["lr"] = lr * (1 - step / max_step) ** 0.9
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            sums["loss"] += loss.item()
            for k, v in terms.items():
                sums[k] += v.item()
        row = {"epoch": epoch, **{k: v / steps_per_epoch for k, v in sums.items()}}
        record["epochs"].append(row)
        print(f"{exp.exp_id} affinity epoch {epoch}/{settings.epochs}: loss {row['loss']:.4f} (bg {row['bg']:.4f}, "
              f"fg {row['fg']:.4f}, neg {row['neg']:.4f})", file=sys.stderr)
    return net.eval(), record


def affinity_net(exp: Experiment, settings: AffinitySettings = AffinitySettings()) -> tuple[AffinityNet, dict]:
    """``exp``'s affinity network: read from ``checkpoints/<exp_id>/affinity.pth`` when it was
    trained with these settings, trained and stored there when there is none; one trained with
    other settings is an error (it is never overwritten)."""
    settings = settings.checked()
    affinity.pair_indices(*feature_grid(exp.net.config, exp.cfg.img_size), settings.radius, settings.pairs)  # fits?
    path, wanted = affinity_path(exp.exp_id), {**dataclasses.asdict(settings), "img_size": exp.cfg.img_size}
    if path.is_file():
        saved = model.safe_load(path, exp.device, f"affinity network {path} cannot be read safely")
        if not isinstance(saved, dict) or saved.get("format") != AFFINITY_FORMAT:
            raise CamlabError(f"{path} was not written by camlab's affinity training; move it away to train again")
        if saved.get("settings") != wanted:
            differ = sorted(k for k in wanted if saved.get("settings", {}).get(k) != wanted[k])
            raise CamlabError(f"{path} holds an affinity network trained with other settings ({', '.join(differ)}); "
                              f"move it away to train one with these")
        net = AffinityNet(exp.net.config).to(exp.device)
        try:
            net.load_state_dict(saved["state"])
        except (KeyError, RuntimeError) as err:
            raise CamlabError(f"{path} is damaged: its weights do not fit the run's model ({err})") from None
        return net.eval(), saved["record"]
    net, record = train_affinity(exp, settings)
    atomic_write(path, lambda f: torch.save({"format": AFFINITY_FORMAT, "state": net.state_dict(), "settings": wanted,
                                             "record": record}, f))
    return net, record


def affinity_matrices(exp: Experiment, net: AffinityNet, data: ImageSet, settings: AffinitySettings,
                      batch_size: int = 32, keep: bool = True) -> list[torch.Tensor]:
    """Each image's dense affinity matrix on the feature grid (``camlab.affinity.affinity_matrix``
    of the network's affinities at the run's ``img_size``), float32 on the CPU; computed once per
    set of images (``keep``: kept for the next call; a chunk of a test pass is not)."""
    key = (tuple(data.names), "affinity", dataclasses.astuple(settings))
    if key in exp._raw:
        return exp._raw[key]
    grid = feature_grid(exp.net.config, exp.cfg.img_size)
    src, dst = (torch.from_numpy(i).to(exp.device) for i in affinity.pair_indices(*grid, settings.radius, settings.pairs))
    mats = []
    with torch.inference_mode():
        for idx in torch.arange(len(data), device=data.images.device).split(batch_size):
            aff = affinity.feature_affinities(net(dataloader.to_model_input(data.images[idx], exp.cfg.img_size)), src, dst)
            mats += [affinity.affinity_matrix(a.float().cpu(), src.cpu(), dst.cpu(), math.prod(grid)) for a in aff]
    if keep:
        exp._raw[key] = mats
    return mats
