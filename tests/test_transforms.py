"""Equivariance transforms: image and map halves agree, known cases by hand, and L_ser is zero
for an exactly equivariant model and positive for one that is not."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train
from camlab.transforms import TRANSFORMS, EquivarianceTransform
from camlab.utils import CamlabError
from model import CAMModel

NAMES = list(TRANSFORMS) + ["rotate+hflip", "scale+rotate", "rot90+translate+vflip"]


def _draw(name: str, n: int = 4, seed: int = 0):
    t = EquivarianceTransform(name)
    return t, t.draw(n, torch.Generator().manual_seed(seed))


def _plane(side: int) -> torch.Tensor:
    """f(u, v) = 0.3 + 0.2 u - 0.5 v sampled at the pixel centres of a side×side grid in the
    normalised coordinates of affine_grid (align_corners=False): 1×1×side×side."""
    c = (torch.arange(side) + 0.5) / side * 2 - 1
    v, u = torch.meshgrid(c, c, indexing="ij")
    return (0.3 + 0.2 * u - 0.5 * v).view(1, 1, side, side)


@pytest.mark.parametrize("name", NAMES)
def test_image_and_map_halves_agree(name: str) -> None:
    """Transforming a 32×32 image then taking its 8×8 map (4×4 block means) equals taking the
    map then transforming it, exactly, wherever both are drawn from inside. With a linear
    image this holds only if images and maps share one coordinate system (bilinear sampling
    reproduces a linear function exactly, and a block mean of one is its value at the block's
    centre), so an off-by-half-pixel or align_corners slip fails here."""
    t, s = _draw(name)
    image, fmap = _plane(32).expand(4, 1, 32, 32), _plane(8).expand(4, 1, 8, 8)
    image_first = F.avg_pool2d(t.apply(image, s), 4)
    map_first = t.apply(fmap, s)
    assert image_first.shape == map_first.shape
    both = t.valid(s, 8) * (F.avg_pool2d(t.valid(s, 32), 4) == 1)
    assert both.sum() > 0
    assert torch.allclose(image_first * both, map_first * both, atol=1e-5)
    assert torch.allclose(fmap, F.avg_pool2d(image, 4), atol=1e-6)  # the map really is the image's


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
    assert torch.all(valid[:, :, 0, 0] == 0)  # any non-zero angle draws a corner from outside
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
    transform. With ``ramp`` it multiplies by a left-to-right ramp, which flips do not commute
    with. ``positive``: non-negative weights and no bias, so that, with non-negative images and
    fc weights, class maps are never negative and ReLU commutes with resampling."""

    def __init__(self, ramp: bool = False, positive: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 128, 1, bias=not positive)
        if positive:
            with torch.no_grad():
                self.conv.weight.abs_()
        self.ramp = ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        if self.ramp:
            f = f * torch.linspace(0.0, 2.0, f.shape[-1])
        return f


def _model(ramp: bool, positive: bool = False) -> CAMModel:
    net = CAMModel(num_classes=3, weights="none")
    net.backbone = _Pixelwise(ramp, positive)
    if positive:
        with torch.no_grad():
            net.fc.weight.abs_()
    return net


@pytest.mark.parametrize("name", ["rotate", "translate", "scale", "scale+rotate", "rotate+hflip"])
def test_class_form_ser_is_zero_under_resampling_transforms(name: str) -> None:
    """Rotation and translation drop corners and bring in padding; the class form is scaled
    by its maximum over the valid positions only, so an equivariant model still scores zero."""
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    objective = train.SegObjective(EquivarianceTransform(name), "class", ser_weight=1.0)
    step = objective(_model(False, positive=True), x, torch.tensor([0, 1, 2, 0]),
                     torch.Generator().manual_seed(0))
    assert step.terms["ser"] < 1e-10


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
