"""The CAM model of the lab: a ResNet cut after a chosen stage (layer2) with GAP + linear classifier heads, its class activation maps in one place, the CAM forms and safe checkpoints.

The heads (``camlab.heads``) are GAP and a linear layer, or ACoL's convolutional head.

Zhou et al., "Learning Deep Features for Discriminative Localization" (CVPR 2016): with GAP before
the classifier, the score of class c is ``S_c = sum_k w_ck * mean_xy f_k(x, y)``, so the map
``M_c(x, y) = sum_k w_ck f_k(x, y)`` shows where the evidence for c lies (its mean is S_c minus
the bias).

Adding a backbone means one entry in ``BACKBONES``; heads read only ``features`` (N×C×h×w), so a
multi-label head or the ACoL heads attach without another copy of the backbone. Adding a kind of
head means one ``HeadType`` in ``camlab.heads.HEAD_TYPES``: every kind gives class maps, and its scores are their
GAP (plus a bias), so erasing, fusion and the CAM forms read the maps alone.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import socket
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from camlab import skeleton
from camlab.cams import class_form, minmax, normalize_cam, per_class, select_class, target_map
from camlab.extractors import DEFAULT_EXTRACTOR, EXTRACTORS, check_extractor, check_extractor_form, open_torchcam
from camlab.heads import ACOL_DELTA, ACOL_WIDTH, HEAD_KINDS, HEAD_TYPES, HeadType
from camlab.utils import CamlabError, atomic_write, reason

# name -> (constructor, ImageNet weights enum). Every torchvision ResNet shares the stage names.
BACKBONES: dict[str, tuple[Callable[..., nn.Module], torchvision.models.WeightsEnum]] = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V2),
    "resnet152": (torchvision.models.resnet152, torchvision.models.ResNet152_Weights.IMAGENET1K_V2),
}
STEM = ("conv1", "bn1", "relu", "maxpool")
STAGES = ("layer1", "layer2", "layer3", "layer4")
# Seconds a download of ImageNet weights may stall before we give up and train from random init.
DOWNLOAD_TIMEOUT_S = 10.0
RANDOM_INIT = "random init"


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the model (its parameters and its forward pass); saved beside
    every checkpoint.

    ``recipe``: one letter of ``HEAD_KINDS`` per classifier head, the first a ``p`` (plain CAM:
    ``"p"``; the paper's ACoL: ``"pp"``). ``deltas``: the erasing threshold of each head after
    the first; one value applies to all. Stored expanded to ``len(recipe) - 1`` values.
    ``head``: what every head is, a name in ``HEAD_TYPES``; ``head_width``: the hidden channels
    of a ``conv`` head. Configs saved before heads had a type load as ``linear``, what they were.
    ``erase_grow``: ACoL's erased region grown by this many feature cells in every direction (0:
    the paper's, exactly where the map is >= delta), for when a cell's neighbours still hold
    what was erased. ``feature_pool``: what the features go through before the heads, a name in
    ``FEATURE_POOLS`` (``avg3``: ACoL's 3×3 average pooling, stride 1, zero padding counted; ``none``).
    ``head_init``: how the heads start, a name in ``HEAD_INITS`` (``xavier``: xavier-uniform
    weights and zero biases, ACoL's; ``torch``: PyTorch's default). Configs saved before these
    two existed load as ``none`` and ``torch``, what they were.
    """

    num_classes: int = 10
    backbone: str = "resnet18"
    cut: str = "layer2"
    recipe: str = "p"
    deltas: tuple[float, ...] = (ACOL_DELTA,)
    head: str = "linear"
    head_width: int = ACOL_WIDTH
    erase_grow: int = 0
    feature_pool: str = "none"
    head_init: str = "torch"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise CamlabError(f"--backbone {self.backbone!r}: choose from {', '.join(BACKBONES)}")
        if self.cut not in STAGES:
            raise CamlabError(f"--cut {self.cut!r}: choose from {', '.join(STAGES)}")
        if self.num_classes < 1:
            raise CamlabError(f"num_classes must be at least 1, got {self.num_classes}")
        if not self.recipe or self.recipe[0] != "p" or set(self.recipe) - set(HEAD_KINDS):
            raise CamlabError(f"--recipe {self.recipe!r}: one letter per head from "
                              f"{', '.join(HEAD_KINDS)}, starting with p (e.g. p, pp, pn, ppn)")
        if self.head not in HEAD_TYPES:
            raise CamlabError(f"--acol_head {self.head!r}: choose from {', '.join(HEAD_TYPES)}")
        if self.head_width < 1:
            raise CamlabError(f"--acol_width must be at least 1, got {self.head_width}")
        if self.erase_grow < 0:
            raise CamlabError(f"--acol_grow must be at least 0, got {self.erase_grow}")
        if self.feature_pool not in FEATURE_POOLS:
            raise CamlabError(f"--acol_pool {self.feature_pool!r}: choose from {', '.join(FEATURE_POOLS)}")
        if self.head_init not in HEAD_INITS:
            raise CamlabError(f"--acol_init {self.head_init!r}: choose from {', '.join(HEAD_INITS)}")
        object.__setattr__(self, "deltas", _expand_deltas(tuple(self.deltas), len(self.recipe) - 1))

    def to_dict(self) -> dict:
        return asdict(self)


# ModelConfig.feature_pool -> the module the features go through before the heads. ACoL's
# references (xiaomengyc/ACoL vgg_v1.py, wsolevaluation wsol/vgg.py) smooth them with a 3×3
# average pool, stride 1, padding 1, the zero padding counted (PyTorch's default).
FEATURE_POOLS: dict[str, Callable[[], nn.Module]] = {
    "none": nn.Identity, "avg3": lambda: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)}
HEAD_INITS = ("torch", "xavier")  # ModelConfig.head_init


def _expand_deltas(deltas: tuple[float, ...], heads_after_first: int) -> tuple[float, ...]:
    """One erasing threshold per head after the first; a single value applies to all."""
    if len(deltas) == 1:
        deltas = deltas * heads_after_first
    if len(deltas) != heads_after_first:
        raise CamlabError(f"--delta: give one value, or one per head after the first "
                          f"({heads_after_first} for this --recipe), got {len(deltas)}")
    for delta in deltas:
        if not 0 <= delta <= 1:
            raise CamlabError(f"--delta {delta}: an erasing threshold on min-max normalised maps lies in [0, 1]")
    return tuple(float(d) for d in deltas)


# ----------------------------------------------------------------------------------- weights
@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A download that cannot reach its host must fail in seconds, not hang."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


_UNAVAILABLE: set[tuple[str, str]] = set()  # (backbone, hub cache) this process could not get weights for


def _imagenet_state_dict(backbone: str) -> dict | None:
    """torchvision's ImageNet weights from the torch hub cache, else a download; None if neither.
    One attempt per process and backbone: a run of 5 folds does not try (and warn) 5 times."""
    attempt = (backbone, torch.hub.get_dir())
    if attempt in _UNAVAILABLE:
        return None
    weights = BACKBONES[backbone][1]
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return weights.get_state_dict(progress=False, weights_only=True)
    except Exception as err:  # URLError, timeouts, a corrupt cache file: all mean "not available"
        _UNAVAILABLE.add(attempt)
        print(f"warning: ImageNet weights for {backbone} could not be loaded ({reason(err, 160)}); "
              f"training from random init instead", file=sys.stderr)
        return None


def _file_state_dict(path: Path) -> dict:
    """A torchvision-format state dict saved with ``torch.save``, read without unpickling code."""
    if not path.is_file():
        raise CamlabError(f"--weights {path}: no such file (use 'imagenet', 'none' or a .pth path)")
    state = safe_load(path, "cpu", f"--weights {path}: not a loadable state dict")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a whole training checkpoint of ours: take its weights
    if not isinstance(state, dict):
        raise CamlabError(f"--weights {path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("backbone."): v for k, v in state.items()}


def resolve_weights(spec: str, backbone: str) -> tuple[dict | None, str]:
    """``(state_dict or None, description of the weights actually used)`` for ``--weights``."""
    if spec == "none":
        return None, RANDOM_INIT
    if spec == "imagenet":
        state = _imagenet_state_dict(backbone)
        return state, ("imagenet" if state is not None else RANDOM_INIT)
    return _file_state_dict(Path(spec)), str(spec)


# ---------------------------------------------------------------------------------- backbone
def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage: those of the last BatchNorm of its last block."""
    norms = [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


def build_backbone(config: ModelConfig, state_dict: dict | None = None,
                   source: str = "") -> tuple[nn.Sequential, int]:
    """The torchvision network up to and including ``config.cut``, and its output channels.

    ``state_dict`` is in torchvision's format (keys like ``layer1.0.conv1.weight``); every key
    of the kept layers must be there, keys of the dropped layers (``fc``, later stages) are ignored.
    """
    full = BACKBONES[config.backbone][0](weights=None)
    keep = STEM + STAGES[: STAGES.index(config.cut) + 1]
    backbone = nn.Sequential(OrderedDict((name, getattr(full, name)) for name in keep))
    if state_dict is not None:
        _load_kept(backbone, state_dict, source)
    return backbone, _stage_channels(backbone[-1])


class InputShape(NamedTuple):
    """What an ``img_size``×``img_size`` input becomes in a backbone cut at a stage:
    ``feature_side`` (h = w of the feature maps) and ``activation_bytes`` (float32 bytes of every
    layer's output for one image, what a training step keeps for its backward pass; the heads'
    layers count too, which matters for ``conv`` heads: a linear head reads the GAP, a few bytes)."""

    feature_side: int
    activation_bytes: int


def input_shape(config: ModelConfig, img_size: int) -> InputShape:
    """Measured by one forward pass on the ``meta`` device, which computes shapes and allocates
    nothing, so any backbone and any size (even absurd ones) costs milliseconds."""
    backbone = _meta_backbone(config.backbone, config.cut)
    with torch.device("meta"):
        total = 0

        def count(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            nonlocal total
            total += output.numel() * output.element_size()

        kind = HEAD_TYPES[config.head]
        head = kind.build(_stage_channels(backbone[-1]), config.num_classes, config.head_width)
        leaves = [m for net in (backbone, head) for m in net.modules() if not list(m.children())]
        handles = [m.register_forward_hook(count) for m in leaves]
        try:
            features = backbone(torch.empty(1, 3, img_size, img_size))
            before_heads = total
            kind.maps(head, features)  # a linear head's maps call no module: nothing counted
            total = before_heads + (total - before_heads) * len(config.recipe)
        finally:
            for handle in handles:
                handle.remove()
    return InputShape(features.shape[-1], total)


@functools.lru_cache(maxsize=None)
def _meta_backbone(backbone: str, cut: str) -> nn.Sequential:
    """The backbone with no storage behind its weights, in eval mode (batch statistics of one
    image would refuse 1×1 maps); built once per process, as building is the slow part."""
    with torch.device("meta"):
        return build_backbone(ModelConfig(backbone=backbone, cut=cut))[0].eval()


# Training keeps each layer's output for the backward pass, plus gradients and workspace: the
# peak RSS of a training step grew by 1.15× the forward outputs (ResNet-18 through layer2, batch
# 32, 112 and 224 px, this project's CPU); 2 leaves room for the data and the allocator.
TRAINING_MEMORY_FACTOR = 2
MIN_FEATURE_SIDE = 2  # a 1×1 feature map has no spatial extent to localise anything in


def memory_limit(device: torch.device) -> int:
    """Bytes one process may use for a batch: the GPU's memory, or the machine's RAM. The GPU's
    is read from its properties, which open no CUDA context (mem_get_info would open one on the
    current device: under torchrun, GPU 0 for every process, before each takes its own)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", "0"))
        return torch.cuda.get_device_properties(index).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_input_size(config: ModelConfig, img_size: int, batch_size: int, device: torch.device,
                     flag: str = "--img_size") -> InputShape:
    """Refuse an ``img_size`` whose feature maps at ``config.cut`` are smaller than 2×2, or a
    batch whose activations cannot fit in ``device``'s memory: one line naming the flags."""
    shape = input_shape(config, img_size)
    if shape.feature_side < MIN_FEATURE_SIDE:
        smallest = next(s for s in range(img_size + 1, 10_000)
                        if input_shape(config, s).feature_side >= MIN_FEATURE_SIDE)
        raise CamlabError(f"{flag} {img_size} gives {shape.feature_side}×{shape.feature_side} feature maps "
                          f"after {config.cut}; at least {smallest} gives {MIN_FEATURE_SIDE}×{MIN_FEATURE_SIDE}")
    need, have = batch_size * shape.activation_bytes * TRAINING_MEMORY_FACTOR, memory_limit(device)
    if need > have:
        raise CamlabError(f"{flag} {img_size} with --batch_size {batch_size} needs about {_gib(need)} "
                          f"for one batch's activations on {device.type}, which has {_gib(have)}; "
                          f"lower --img_size or --batch_size")
    return shape


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _load_kept(backbone: nn.Sequential, state_dict: dict, source: str) -> None:
    wanted = backbone.state_dict()
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise CamlabError(f"--weights {source}: {len(missing)} backbone tensors missing "
                          f"(first: {missing[0]}); is it a torchvision ResNet state dict?")
    bad = [k for k in wanted if tuple(state_dict[k].shape) != tuple(wanted[k].shape)]
    if bad:
        raise CamlabError(f"--weights {source}: shape of {bad[0]} is {tuple(state_dict[bad[0]].shape)}, "
                          f"the model needs {tuple(wanted[bad[0]].shape)} (another backbone?)")
    backbone.load_state_dict({k: state_dict[k] for k in wanted})


# ------------------------------------------------------------------------------------- model
class HeadOutput(NamedTuple):
    """One classifier head's output: its letter (``HEAD_KINDS``), scores N×K, and its class
    maps N×K×h×w, computed on the features that head saw (erased for ACoL heads after the first)."""

    kind: str
    scores: torch.Tensor
    cams: torch.Tensor


class CAMModel(nn.Module):
    """Backbone -> classifier heads, the lab's CAM network and ACoL's.

    ``forward(images)`` takes float images N×3×H×W and returns ``(scores, features, gap)`` of the
    first head: scores N×num_classes, features N×C×h×w (ResNet-18 through layer2: C=128,
    h=w=H/8, so 28×28 at 224 and 14×14 at 112), gap N×C (the weighting coefficients of the
    handout). Every head is of the kind ``head`` (``HEAD_TYPES``). A ``linear`` head is GAP + a
    linear layer, which is the 1×1 convolution + GAP of ACoL and OC-CSE in the other order: both
    are linear, so its class maps are ``M_c = sum_k w_ck f_k`` (plus the bias, which no
    normalisation sees). A ``conv`` head is the ACoL paper's, ``head_width`` hidden channels.
    """

    def __init__(self, num_classes: int = 10, weights: str = "none", backbone: str = "resnet18",
                 cut: str = "layer2", recipe: str = "p", deltas: tuple[float, ...] = (ACOL_DELTA,),
                 head: str = "linear", head_width: int = ACOL_WIDTH, erase_grow: int = 0,
                 feature_pool: str = "none", head_init: str = "torch") -> None:
        super().__init__()
        self.config = ModelConfig(num_classes, backbone, cut, recipe, tuple(deltas), head, head_width, erase_grow,
                                  feature_pool, head_init)
        state, self.weights_used = resolve_weights(weights, backbone)
        self.backbone, self.feature_dim = build_backbone(self.config, state, weights)
        self.pool = FEATURE_POOLS[feature_pool]()
        self.heads = nn.ModuleList(self.head_type.build(self.feature_dim, num_classes, head_width)
                                   for _ in recipe)
        if head_init == "xavier":
            for layer in self.heads.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, config: ModelConfig | dict, weights: str = "none") -> "CAMModel":
        """A model of that shape: untrained (weights come from a checkpoint afterwards), or with
        ``weights`` for its backbone."""
        config = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        return cls(config.num_classes, weights, config.backbone, config.cut, config.recipe, config.deltas,
                   config.head, config.head_width, config.erase_grow, config.feature_pool, config.head_init)

    @property
    def head_type(self) -> HeadType:
        return HEAD_TYPES[self.config.head]

    @property
    def fc(self) -> nn.Module:
        """The first head: the lab's classifier, and the one whose scores give the prediction."""
        return self.heads[0]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Float N×3×H×W -> feature maps N×C×h×w of the last kept stage (through ACoL's feature
        pool where the config asks for one)."""
        return self.pool(self.backbone(images))

    @property
    def feature_layer(self) -> str:
        """The name of the module whose output the heads read (what extractors hook)."""
        return "pool" if self.config.feature_pool != "none" else "backbone"

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features N×C×h×w -> (first head's scores N×num_classes, gap N×C)."""
        return self.head_type.scores(self.fc, features), features.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.forward_features(images)
        scores, gap = self.forward_head(features)
        return scores, features, gap

    def class_cams(self, features: torch.Tensor, head: int = 0) -> torch.Tensor:
        """The class maps of head ``head`` on ``features`` (N×C×h×w): N×num_classes×h×w. For a
        linear head the paper's ``M_c = sum_k w_ck f_k``, without the bias (constant over
        positions, it would only shift every map); for a conv head its last layer's output."""
        return self.head_type.maps(self.heads[head], features)

    def run_heads(self, features: torch.Tensor, classes: torch.Tensor) -> list[HeadOutput]:
        """Every head in recipe order (ACoL). Head i > 1 sees ``features`` zeroed wherever an
        earlier ``p`` head's min-max normalised map of ``classes`` (int64 N: the labels in
        training, the predictions at test time; or multi-hot N×K: the max over the present
        classes' maps, :func:`target_map`) is at least ``deltas[i - 2]``, that region grown by
        ``erase_grow`` cells (a max-pool of the mask); the erasing mask is a threshold, so no
        gradient flows through it."""
        outputs: list[HeadOutput] = []
        found = None  # N×1×h×w, the max of earlier p heads' normalised target maps
        for i, (kind, head) in enumerate(zip(self.config.recipe, self.heads)):
            seen = features if i == 0 else features * ~self.erased(found, self.config.deltas[i - 1])
            cams = self.class_cams(seen, i)
            scores = cams.mean(dim=(2, 3)) + self.head_type.bias(head)
            outputs.append(HeadOutput(kind, scores, cams))
            if kind == "p":
                target = target_map(cams.detach(), classes).unsqueeze(1)
                found = target if found is None else torch.maximum(found, target)
        return outputs

    def erased(self, found: torch.Tensor, delta: float) -> torch.Tensor:
        """bool N×1×h×w: where ``found`` (normalised maps) is >= ``delta``, grown by ``erase_grow``."""
        erase = found >= delta
        grow = self.config.erase_grow
        if grow:
            erase = F.max_pool2d(erase.float(), 2 * grow + 1, stride=1, padding=grow) > 0
        return erase

    def localization_cam(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The map a method is evaluated on, N×h×w: the first head's class map of ``classes``;
        with several ``p`` heads (ACoL), the element-wise max of their min-max normalised maps."""
        if self.config.recipe.count("p") == 1:
            return select_class(self.class_cams(features), classes)
        maps = [minmax(select_class(out.cams, classes)) for out in self.run_heads(features, classes)
                if out.kind == "p"]
        return torch.stack(maps).amax(dim=0)

    def every_class_cam(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Every class's map, N×K×h×w, what semantic segmentation reads (one per present class):
        the first head's class maps; with several ``p`` heads (ACoL), the element-wise max of
        their per-class min-max normalised maps, the later heads seeing the features erased by
        the maps of ``present`` (multi-hot N×K, or int64 N for one class per image)."""
        if self.config.recipe.count("p") == 1:
            return self.class_cams(features)
        maps = [per_class(minmax, out.cams) for out in self.run_heads(features, present) if out.kind == "p"]
        return torch.stack(maps).amax(dim=0)

    @staticmethod
    def lab_cam(features: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """The handout's map: softmax over the weighting coefficients, then the weighted sum of
        the feature maps, ``sum_k softmax(gap)_k f_k``. Class-agnostic: N×h×w."""
        return torch.einsum("nk,nkhw->nhw", gap.softmax(dim=1), features)


# -------------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "camlab-checkpoint-1"


def save_checkpoint(path: Path, model: CAMModel, **meta) -> None:
    """Atomically write model weights, model config and plain metadata (numbers, strings,
    lists, dicts, tensors), so that ``torch.load(weights_only=True)`` reads it back."""
    payload = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
               "model_config": model.config.to_dict(), **meta}
    atomic_write(path, lambda f: torch.save(payload, f))


# How torch.save's files begin: a zip archive (since torch 1.6) or a pickle (the legacy format).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_KNOWN_KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"BM", "a BMP image"), (b"%PDF", "a PDF"), (b"\x1f\x8b", "a gzip file"))


def _file_kind(head: bytes) -> str:
    """What a file that is not a PyTorch checkpoint looks like, from its first bytes."""
    if not head:
        return "an empty file"
    for magic, kind in _KNOWN_KINDS:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "a file of another format"


def safe_load(path: Path, device: torch.device | str, failure: str):
    """``torch.load(weights_only=True)``: tensors and plain values only, so a file that would run
    code while unpickling is refused before any of it runs. Any failure is ``failure`` plus why:
    not a PyTorch checkpoint at all (text, an image: told from the first bytes), an incomplete
    one, or a pickle that would run code."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise CamlabError(f"{failure} ({reason(err)})") from None
    if not head.startswith(_TORCH_MAGIC):
        raise CamlabError(f"{failure}: it is not a PyTorch checkpoint ({_file_kind(head)}, "
                          f"not a file torch.save wrote)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if head.startswith(b"PK") or "weights_only" in str(err) or "global" in str(err).lower():
            raise CamlabError(f"{failure} (it holds Python objects that would run code when loaded; "
                              f"refused, nothing was run)") from None
        raise CamlabError(f"{failure}: it is not a complete PyTorch checkpoint "
                          f"(truncated or damaged: {reason(err, 80)})") from None
    except (RuntimeError, EOFError) as err:  # torch's zip reader, or a pickle cut short
        raise CamlabError(f"{failure}: it is not a complete PyTorch checkpoint "
                          f"(truncated or damaged: {reason(err, 80)})") from None
    except Exception as err:  # unreadable in some other way: all one message
        raise CamlabError(f"{failure} ({reason(err)})") from None


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[CAMModel, dict]:
    """``(model with the saved weights, the checkpoint dict)``; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CamlabError(f"checkpoint {path} does not exist")
    ckpt = safe_load(path, device, f"checkpoint {path} cannot be read safely")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CamlabError(f"checkpoint {path} was not written by camlab (no '{CHECKPOINT_FORMAT}' tag)")
    try:
        model = CAMModel.from_config(ckpt["model_config"]).to(device)
        model.load_state_dict(_upgrade_keys(ckpt["model"]))
    except (KeyError, TypeError, RuntimeError) as err:
        raise CamlabError(f"checkpoint {path} is damaged: its weights do not fit its model "
                          f"settings ({reason(err)})") from None
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CamlabError(f"checkpoint {path} holds NaN or infinite weights ({bad}): the run diverged before it was "
                          f"saved, so it cannot be scored, visualised or resumed; retrain it (a lower --lr)")
    return model, ckpt


def load_teacher(path: Path, classes: list[str], multi_label: bool, named: str,
                 device: torch.device | str = "cpu") -> CAMModel:
    """The best checkpoint at ``path`` as a frozen judge (CSE's ordinary classifier), refused in
    one line (``named``: how the flag named it) unless it was trained on ``classes`` and with the
    same label form (``multi_label``), since it must score images the way the run's loss reads them."""
    teacher, ckpt = load_checkpoint(path, device)
    if list(ckpt.get("classes", [])) != list(classes):
        raise CamlabError(f"{named}: it was trained on other classes "
                          f"({len(ckpt.get('classes', []))}) than this dataset's ({len(classes)})")
    was_multi = bool(ckpt.get("args", {}).get("multi_label", False))
    if was_multi != multi_label:
        raise CamlabError(f"{named}: it was trained {'with' if was_multi else 'without'} "
                          f"--multi_label and this run is {'with' if multi_label else 'without'}; "
                          f"the ordinary classifier must score images the way this run's loss reads them")
    return teacher


def export_skeleton(run_dir: Path, out: Path, overwrite: bool = False) -> Path:
    """Write ``run_dir``'s best weights as the course skeleton saves a run (``camlab.skeleton``):
    ``out`` (``checkpoints/{exp_id}_checkpoint.pth``) with ``model_state_dict`` under its names, the
    last epoch's ``optimizer_state_dict`` (from ``last.pth``, where its resume() looks for one) and
    ``epoch``; loadable with ``torch.load(weights_only=True)``. An existing ``out`` is kept unless
    ``overwrite``."""
    net, ckpt = load_checkpoint(run_dir / "best.pth")
    skeleton.check_exportable(net.config.to_dict())
    if out.exists() and not overwrite:
        raise CamlabError(f"{out} exists already; pass --overwrite to replace it")
    last = run_dir / "last.pth"
    optimizer = (safe_load(last, "cpu", f"checkpoint {last} cannot be read safely").get("optimizer")
                 if last.is_file() else None)
    payload = skeleton.checkpoint_payload(net.state_dict(), optimizer, ckpt.get("epoch"))
    atomic_write(out, lambda f: torch.save(payload, f))
    return out


def _upgrade_keys(state: dict) -> dict:
    """Checkpoints from before the ACoL heads named the one classifier ``fc``."""
    return {("heads.0." + k[3:] if k.startswith("fc.") else k): v for k, v in state.items()}


# ---------------------------------------------------------------------------------- CAM forms
def _lab_form(model: CAMModel, features: torch.Tensor, gap: torch.Tensor,
              classes: torch.Tensor) -> torch.Tensor:
    return model.lab_cam(features, gap)


def _lab_fc_form(model: CAMModel, features: torch.Tensor, gap: torch.Tensor,
                 classes: torch.Tensor) -> torch.Tensor:
    """The other ``returnCAM`` of students' copies of the course skeleton: the softmax taken over
    the predicted (or given) class's classifier weights ``w_c`` (C of them) instead of the pooled
    coefficients, ``sum_k softmax(w_c)_k f_k``. Needs a linear head."""
    if not isinstance(model.fc, nn.Linear):
        raise CamlabError("--cam lab_fc weights the feature maps by a linear classifier's weights; "
                          f"this run's head is {model.config.head!r}")
    return model.lab_cam(features, model.fc.weight[classes])  # the class's weights as the coefficients


def _class_form(model: CAMModel, features: torch.Tensor, gap: torch.Tensor,
                classes: torch.Tensor) -> torch.Tensor:
    return normalize_cam(model.localization_cam(features, classes))


def _raw_form(model: CAMModel, features: torch.Tensor, gap: torch.Tensor,
              classes: torch.Tensor) -> torch.Tensor:
    return model.localization_cam(features, classes)


# name -> (model, features N×C×h×w, gap N×C, classes int64 N) -> one map per image, N×h×w.
# "lab": the handout's class-agnostic softmax-weighted sum; "class": the map of the given class,
# ReLU, divided by its max (SSENet's form; the paper's CAM up to that scaling; ACoL's fused map);
# "raw": that map before the ReLU and scaling, what wsolevaluation min-max normalises; "lab_fc":
# the skeleton variant whose softmax is over the class's classifier weights (docs/lab.md).
CAM_FORMS: dict[str, Callable[..., torch.Tensor]] = {"lab": _lab_form, "class": _class_form, "raw": _raw_form,
                                                     "lab_fc": _lab_fc_form}
SEG_CAM_FORMS = ("lab", "class")  # the forms SEG's equivariance loss compares (main.py --cam)


def localization_maps(model: CAMModel, inputs: torch.Tensor, out_size: tuple[int, int],
                      form: str = "class", classes: torch.Tensor | None = None,
                      extractor: str = "cam") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores N×K, maps N×H×W)`` for evaluation: each image's CAM (of ``classes``, else of
    its top prediction) upsampled bilinearly to ``out_size`` and min-max normalised to [0, 1].
    Another ``extractor`` (``EXTRACTORS``) gives the ``class`` form from its own map (ReLU,
    then the same resizing and scaling). Call it with the model in eval mode (BatchNorm's
    running statistics), outside ``torch.inference_mode`` for a gradient-based extractor."""
    if check_extractor(extractor) == DEFAULT_EXTRACTOR:
        with torch.inference_mode():
            scores, cams = feature_maps(model, inputs, form, classes)
    else:
        check_extractor_form(extractor, form)
        scores, cams = extractor_maps(model, inputs, classes, extractor)
        return scores, class_form(cams, out_size)
    with torch.inference_mode():
        cams = F.interpolate(cams.unsqueeze(1), size=out_size, mode="bilinear", align_corners=False)[:, 0]
        return scores, minmax(cams)


def feature_maps(model: CAMModel, inputs: torch.Tensor, form: str = "class",
                 classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores N×K, maps N×h×w)``: each image's CAM in ``form`` (of ``classes``, else of its
    top prediction) at the feature maps' resolution, neither resized nor normalised."""
    scores, features, gap = model(inputs)
    classes = scores.argmax(dim=1) if classes is None else classes
    return scores, CAM_FORMS[form](model, features, gap, classes)


class _Scores(nn.Module):
    """``net`` returning its scores alone: torchcam's Score-CAM family runs the model again on
    masked inputs and reads its output as the logits."""

    def __init__(self, net: CAMModel) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0]


@contextlib.contextmanager
def open_extractor(net: CAMModel, name: str = DEFAULT_EXTRACTOR, img_size: int = 224, score_batch: int = 64,
                   seed: int = 0) -> Iterator[Callable[[torch.Tensor, torch.Tensor | None],
                                                      tuple[torch.Tensor, torch.Tensor]]]:
    """``maps(inputs, classes) -> (scores N×K, raw maps N×h×w)`` of extractor ``name``
    (``EXTRACTORS``) on ``net`` (in eval mode), hooked on the last kept stage, for ``classes``
    (int64 N; None: the top prediction). ``cam`` is :func:`feature_maps`' raw form; the others
    are torchcam's (``camlab.extractors.open_torchcam``, ``score_batch`` and ``seed`` as there)."""
    check_extractor(name)
    if EXTRACTORS[name] is None:
        def own(inputs: torch.Tensor, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode():
                return feature_maps(net, inputs, "raw", classes)
        yield own
        return
    with open_torchcam(_Scores(net), f"net.{net.feature_layer}", name, img_size, score_batch, seed) as theirs:
        yield theirs


def extractor_maps(net: CAMModel, inputs: torch.Tensor, classes: torch.Tensor | None = None,
                   extractor: str = DEFAULT_EXTRACTOR) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores N×K, raw maps N×h×w)`` of ``extractor`` for one batch (:func:`open_extractor`);
    for ``cam``, :func:`feature_maps`' raw form."""
    with open_extractor(net, extractor, inputs.shape[-1]) as maps_of:
        return maps_of(inputs, classes)
