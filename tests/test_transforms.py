"""Equivariance transforms: image and map halves agree, known cases by hand, and L_ser is zero
for an exactly equivariant model and positive for one that is not."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train
from model import CAMModel
from transforms import TRANSFORMS, EquivarianceTransform, parse_transform
from utils import CamlabError

NAMES = list(TRANSFORMS) + ["rotate+hflip", "scale+rotate", "rot90+translate+vflip"]


def _draw(name: str, n: int = 4, seed: int = 0):
    t = EquivarianceTransform(name)
    return t, t.draw(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_image_and_map_halves_agree(name: str) -> None:
    """Transforming the image then taking a pixel-aligned map (here the channel mean, a linear
    per-pixel map) equals taking the map then transforming it."""
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t, s = _draw(name)
    image_first = t.apply(x, s).mean(dim=1, keepdim=True)
    map_first = t.apply(x.mean(dim=1, keepdim=True), s)
    assert image_first.shape == map_first.shape
    assert torch.allclose(image_first, map_first, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_maps_follow_images_across_resolutions(name: str) -> None:
    """A 4×4 block-average of the image is a map at 1/4 resolution; for transforms that move
    whole blocks (flips, quarter turns) both orders agree exactly, for the rest closely inside
    the valid region, because image and map share normalised coordinates."""
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    x = F.interpolate(F.avg_pool2d(x, 8), scale_factor=8, mode="nearest")  # piecewise constant
    t, s = _draw(name)
    down_then_t = t.apply(F.avg_pool2d(x, 4), s)
    t_then_down = F.avg_pool2d(t.apply(x, s), 4)
    if set(parse_transform(name)) <= {"hflip", "vflip", "rot90"}:
        assert torch.allclose(down_then_t, t_then_down, atol=1e-6)
    else:
        valid = t.valid(s, 8)  # the side of the map before the transform
        err = ((down_then_t - t_then_down).abs() * valid).sum() / valid.sum()
        assert err < 0.05


def test_known_cases_by_hand() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    t, s = _draw("hflip", n=1)
    assert torch.equal(t.apply(x, s), x.flip(-1))
    t, s = _draw("vflip", n=1)
    assert torch.equal(t.apply(x, s), x.flip(-2))
    t, s = _draw("hflip+vflip", n=1)
    assert torch.equal(t.apply(x, s), torch.rot90(x, 2, dims=(2, 3)))
    t, s = _draw("hflip+hflip", n=1)
    assert torch.equal(t.apply(x, s), x)
    t, s = _draw("scale", n=1)  # the handout's I_S: bilinear, factor 0.5
    assert torch.allclose(t.apply(x, s), F.interpolate(x, scale_factor=0.5, mode="bilinear"))
    assert t.apply(x, s).shape == (1, 1, 2, 2)


def test_rot90_is_a_quarter_turn_permutation() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(6, 1, 4, 4)
    t, s = _draw("rot90", n=6)
    out = t.apply(x, s)
    turns = [torch.rot90(x[0], k, dims=(1, 2)) for k in (1, 2, 3)]
    for img in out:
        assert any(torch.equal(img, r) for r in turns)
    assert torch.equal(t.valid(s, 4), torch.ones(6, 1, 4, 4))


def test_valid_marks_positions_from_outside() -> None:
    t, s = _draw("translate", n=8)
    valid = t.valid(s, 16)
    assert 0 < valid.mean() < 1
    t, s = _draw("rotate", n=8)
    valid = t.valid(s, 16)
    assert torch.all(valid[:, :, 8, 8] == 1)  # the centre always comes from inside
    assert torch.all(valid[:, :, 0, 0] == 0) or valid.mean() < 1  # corners leave the image
    t, s = _draw("hflip")
    assert torch.equal(t.valid(s, 16), torch.ones(4, 1, 16, 16))


def test_draws_are_reproducible_and_random_per_image() -> None:
    _, a = _draw("rotate", n=5, seed=3)
    _, b = _draw("rotate", n=5, seed=3)
    _, c = _draw("rotate", n=5, seed=4)
    assert torch.equal(a.theta, b.theta) and not torch.equal(a.theta, c.theta)
    assert len({round(float(v), 6) for v in a.theta[:, 0, 1]}) == 5


@pytest.mark.parametrize("name", ["sheer", "rotate+", "", "rotate+zoom"])
def test_unknown_names_list_the_valid_ones(name: str) -> None:
    with pytest.raises(CamlabError, match="choose from scale, rotate, rot90, hflip, vflip, translate"):
        EquivarianceTransform(name)


# ----------------------------------------------------------------------------------- L_ser
class _Pixelwise(nn.Module):
    """A backbone that maps each pixel alone (a 1×1 convolution): equivariant to every
    transform. With ``ramp`` it multiplies by a left-to-right ramp, which flips do not commute with."""

    def __init__(self, ramp: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 128, 1)
        self.ramp = ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        if self.ramp:
            f = f * torch.linspace(0.0, 2.0, f.shape[-1])
        return f


def _model(ramp: bool) -> CAMModel:
    net = CAMModel(num_classes=3, weights="none")
    net.backbone = _Pixelwise(ramp)
    return net


@pytest.mark.parametrize("name,form", [("hflip", "lab"), ("hflip", "class"), ("vflip", "class"),
                                       ("rot90", "lab"), ("scale", "lab"), ("rot90+hflip", "class")])
def test_ser_is_zero_for_an_equivariant_model(name: str, form: str) -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    objective = train.SegObjective(EquivarianceTransform(name), form, ser_weight=1.0)
    step = objective(_model(False), x, labels, torch.Generator().manual_seed(0))
    assert step.terms["ser"] < 1e-10
    assert step.loss.item() == pytest.approx(step.terms["ce"].item(), abs=1e-8)


@pytest.mark.parametrize("name,form", [("hflip", "lab"), ("hflip", "class"), ("scale+hflip", "lab")])
def test_ser_is_positive_for_a_model_that_is_not(name: str, form: str) -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    objective = train.SegObjective(EquivarianceTransform(name), form, ser_weight=2.0)
    step = objective(_model(True), x, labels, torch.Generator().manual_seed(0))
    assert step.terms["ser"] > 1e-3
    assert step.loss.item() == pytest.approx((step.terms["ce"] + 2.0 * step.terms["ser"]).item(), rel=1e-5)


def test_seg_branches_at_224_have_the_handouts_shapes() -> None:
    net = CAMModel(weights="none").eval()
    t, s = _draw("scale", n=1)
    with torch.inference_mode():
        x = torch.randn(1, 3, 224, 224)
        _, f_large, _ = net(x)
        _, f_small, _ = net(t.apply(x, s))
    assert f_large.shape == (1, 128, 28, 28) and f_small.shape == (1, 128, 14, 14)
    assert t.apply(f_large, s).shape == f_small.shape


def test_ser_masks_invalid_positions() -> None:
    cam = torch.ones(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 5.0], [1.0, 3.0]]]])
    valid = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    assert train.ser_loss(cam, target, valid).item() == pytest.approx(4.0 / 3)
