"""Geometric transforms for the equivariance loss of SEG mode, in one registry.

SSENet (Wang et al., 2019) asks that the CAM of a transformed image equal the transformed CAM of
the image: ``cam(A x) = A cam(x)``. Every transform here is an affine map of the square image
plane, written as a 2×3 matrix per image in the normalised coordinates of ``F.affine_grid``
(``align_corners=False``: -1 and +1 are the outer edges of the border pixels). Those coordinates
are the same for a 224×224 image and its 28×28 feature map, so one matrix moves images and maps
alike, and a composition such as ``rotate+hflip`` is a product of matrices. The transformed
image or map is drawn with ``F.grid_sample``; positions whose value would come from outside the
original are reported by ``valid`` and left out of the loss.

``scale`` also changes the output size (the handout's I_S is the image at half size); for a
factor of 1/2 sampling at the centres of the smaller grid is exactly bilinear downscaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from camlab.utils import CamlabError


@dataclass(frozen=True)
class TransformSettings:
    """The flags that shape the transforms (``--scale``, ``--rot_deg``, ``--shift``)."""

    scale: float = 0.5
    rot_deg: float = 30.0
    shift: float = 0.125  # largest translation, as a fraction of the image side


@dataclass
class Sampled:
    """One batch's draw: ``theta`` float N×2×3 (output -> input coordinates) and the factor by
    which the output side differs from the input side."""

    theta: torch.Tensor
    size_factor: float = 1.0

    def out_size(self, side: int) -> int:
        return max(1, round(side * self.size_factor))


def _affine(linear: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """N×2×2 linear parts (and N×2 offsets) -> N×2×3 matrices."""
    if offset is None:
        offset = torch.zeros(linear.shape[0], 2, dtype=linear.dtype)
    return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _identity(n: int) -> torch.Tensor:
    return torch.eye(2).expand(n, 2, 2).clone()


# Each draw function: (n, settings, generator) -> Sampled. The matrices map output to input.
def _draw_scale(n: int, s: TransformSettings, g: torch.Generator) -> Sampled:
    return Sampled(_affine(_identity(n)), size_factor=s.scale)


def _draw_rotate(n: int, s: TransformSettings, g: torch.Generator) -> Sampled:
    angles = (torch.rand(n, generator=g) * 2 - 1) * math.radians(s.rot_deg)
    return Sampled(_affine(_rotation(angles)))


def _draw_rot90(n: int, s: TransformSettings, g: torch.Generator) -> Sampled:
    quarters = torch.randint(1, 4, (n,), generator=g).float()
    rot = _rotation(quarters * (math.pi / 2)).round()  # exact 0/±1 entries: a pure permutation
    return Sampled(_affine(rot))


def _draw_hflip(n: int, s: TransformSettings, g: torch.Generator) -> Sampled:
    return Sampled(_affine(torch.diag(torch.tensor([-1.0, 1.0])).expand(n, 2, 2).clone()))


def _draw_vflip(n: int, s: TransformSettings, g: torch.Generator) -> Sampled:
    return Sampled(_affine(torch.diag(torch.tensor([1.0, -1.0])).expand(n, 2, 2).clone()))


def _draw_translate(n: int, s: TransformSettings, g: torch.Generator) -> Sampled:
    offsets = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * s.shift)  # side = 2 normalised units
    return Sampled(_affine(_identity(n), offsets))


TRANSFORMS: dict[str, Callable[[int, TransformSettings, torch.Generator], Sampled]] = {
    "scale": _draw_scale, "rotate": _draw_rotate, "rot90": _draw_rot90,
    "hflip": _draw_hflip, "vflip": _draw_vflip, "translate": _draw_translate,
}


def _compose(first: Sampled, then: Sampled) -> Sampled:
    """The draw for "apply ``first``, then ``then``": output coordinates go through ``then``'s
    matrix into ``first``'s output, and through ``first``'s into the original."""
    def square(t: torch.Tensor) -> torch.Tensor:
        row = torch.tensor([0.0, 0.0, 1.0]).expand(t.shape[0], 1, 3)
        return torch.cat([t, row], dim=1)
    theta = (square(first.theta) @ square(then.theta))[:, :2]
    return Sampled(theta, first.size_factor * then.size_factor)


class EquivarianceTransform:
    """A transform named like ``rotate`` or ``scale+rotate+hflip`` (applied left to right).

    ``draw(n, generator)`` samples one batch's parameters; ``apply(x, sampled)`` transforms a
    batch of images or maps (float N×C×H×W) with them; ``valid(sampled, side)`` is the float
    N×1×s×s mask, for an input of side ``side`` (s is the output side), of the positions drawn
    entirely from inside the input.
    """

    def __init__(self, name: str, settings: TransformSettings | None = None) -> None:
        self.parts = parse_transform(name)
        self.name = name
        self.settings = settings or TransformSettings()

    def draw(self, n: int, generator: torch.Generator | None = None) -> Sampled:
        draws = [TRANSFORMS[p](n, self.settings, generator) for p in self.parts]
        sampled = draws[0]
        for nxt in draws[1:]:
            sampled = _compose(sampled, nxt)
        return sampled

    @staticmethod
    def apply(x: torch.Tensor, sampled: Sampled, mode: str = "bilinear") -> torch.Tensor:
        side = sampled.out_size(x.shape[-1])
        theta = sampled.theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], side, side], align_corners=False)
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    @classmethod
    def valid(cls, sampled: Sampled, side: int, device: torch.device | str = "cpu") -> torch.Tensor:
        ones = torch.ones(sampled.theta.shape[0], 1, side, side, device=device)
        # bilinear weights of in-image neighbours sum to 1 only where no neighbour is outside
        return (cls.apply(ones, sampled) > 1 - 1e-4).float()


def parse_transform(name: str) -> list[str]:
    """``"scale+rotate"`` -> ``["scale", "rotate"]``; unknown parts are a one-line user error."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in TRANSFORMS]
    if not name or unknown:
        raise CamlabError(f"--transform {name!r}: unknown {', '.join(map(repr, unknown)) or 'name'}; "
                          f"choose from {', '.join(TRANSFORMS)}, or join several with '+'")
    return parts


def match_size(cam_t: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
    """The target and its validity mask resized to the transformed branch's map when rounding
    made them differ (odd sizes under ``scale``)."""
    if target.shape[-2:] == cam_t.shape[-2:]:
        return cam_t, target, valid
    size = cam_t.shape[-2:]
    target = F.interpolate(target, size=size, mode="bilinear", align_corners=False)
    valid = (F.interpolate(valid, size=size, mode="bilinear", align_corners=False) > 0.999).float()
    return cam_t, target, valid
