"""Each method as its reference code computes it, held by hand on tiny tensors: SSENet's L_ser
(YudeWang/SSENet-pytorch train_cls_ser.py), ACoL's pooled heads, initialisation and fused map
(xiaomengyc/ACoL vgg_v1.py, wsolevaluation wsol/vgg.py), OC-CSE's erasing mask and multi-scale
inference (KAIST-vilab/OC-CSE models/model_cse.py), the dense CRF's (1 - max)^α background
(jiwoon-ahn/psa infer_cls.py), and MaxBoxAcc and PxAP at wsolevaluation's two CAM threshold
steps. The extractors' parity tests are in test_extractors.py. Values come from the references'
formulas written out here, not from their code."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main
import train
from camlab import crf
from camlab.boxes import max_box_acc
from camlab.cams import MSF_SCALES
from camlab.images import ImageSet
from camlab.methods import erasing_mask
from camlab.metrics import pxap
from camlab.transforms import EquivarianceTransform, TransformSettings
from model import CAMModel
from research.experiments import class_maps


def _net(classes: int = 4, seed: int = 0, **config) -> CAMModel:
    torch.manual_seed(seed)
    return CAMModel(classes, "none", **config).eval()


def _ssenet_norm(x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """SSENet's normalisation of N×K×h×w maps: label · ReLU(ReLU(x) - 1e-5) / (max ReLU(x) + 1e-5)."""
    r = x.relu()
    peak = r.flatten(2).amax(2)[..., None, None]
    return label[..., None, None] * (r - 1e-5).relu() / (peak + 1e-5)


@pytest.mark.parametrize("multi", [False, True])
def test_ssenet_l_ser_by_hand(multi: bool) -> None:
    """L_ser = mean over every image, class and position of (N(cam(x_small)) - N(down(cam(x))))^2,
    down: bilinear at 1/2 (camlab's scale transform samples the smaller grid's centres, which is
    that exactly), absent classes zero and counted: SSENet's loss."""
    net = _net()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 1]]).float() if multi else torch.tensor([1, 3])
    objective = train.SegObjective(EquivarianceTransform("scale", TransformSettings(scale=0.5)), "class", 1.0, "all")
    step = objective(net, images, labels, torch.Generator().manual_seed(0), 1)
    with torch.no_grad():
        onehot = labels if multi else F.one_hot(labels, 4).float()
        big = net.class_cams(net.forward_features(images))
        small = net.class_cams(net.forward_features(F.interpolate(images, scale_factor=0.5, mode="bilinear",
                                                                  align_corners=False)))
        down = F.interpolate(big, scale_factor=0.5, mode="bilinear", align_corners=False)
        expected = ((_ssenet_norm(small, onehot) - _ssenet_norm(down, onehot)) ** 2).mean()
    assert step.terms["ser"].item() == pytest.approx(expected.item(), rel=1e-4)
    # camlab's earlier mean over the label's (present classes') maps alone: K (or K / present) times larger
    earlier = train.SegObjective(EquivarianceTransform("scale"), "class", 1.0, "present")(
        net, images, labels, torch.Generator().manual_seed(0), 1).terms["ser"]
    present = onehot.sum().item()
    assert earlier.item() == pytest.approx(expected.item() * onehot.numel() / present, rel=0.05)


def test_the_ssenet_preset_sets_its_scale_and_form(tiny_lab, tmp_path, monkeypatch) -> None:
    args = main.build_parser().parse_args(["--mode", "SEG", "--preset", "ssenet", "--ser_weight", "2"])
    args = main.apply_preset(args, ["--mode", "SEG", "--preset", "ssenet", "--ser_weight", "2"])
    assert (args.transform, args.scale, args.cam, args.ser_mean, args.ser_weight) == ("scale", 0.3, "class", "all", 2)
    given = ["--mode", "SEG", "--preset", "ssenet", "--scale", "0.4"]
    assert main.apply_preset(main.build_parser().parse_args(given), given).scale == 0.4  # explicit flags win
    monkeypatch.chdir(tmp_path)
    assert main.main(["--preset", "ssenet", "--data_root", str(tiny_lab)]) == 2  # a SEG preset, --mode CAM


def test_acol_pools_the_features_and_fuses_its_heads_by_hand() -> None:
    """The references' ACoL: a 3×3 average pool (stride 1, padding 1, the padding counted) before
    both heads; head B sees the pooled features zeroed where head A's min-max normalised map of the
    label is >= δ; the evaluated map is the element-wise max of both heads' normalised maps."""
    net = _net(3, recipe="pp", deltas=(0.6,), head="conv", head_width=8, feature_pool="avg3", head_init="xavier")
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([2, 0])
    with torch.no_grad():
        raw = net.backbone(images)
        pooled = F.avg_pool2d(raw, 3, stride=1, padding=1, count_include_pad=True)
        assert torch.allclose(net.forward_features(images), pooled)
        a = net.heads[0](pooled)
        norm = lambda m: (m - m.amin((1, 2), keepdim=True)) / (m.amax((1, 2), keepdim=True) - m.amin((1, 2), keepdim=True))  # noqa: E731
        target = norm(a[torch.arange(2), labels])
        b = net.heads[1](pooled * (target < 0.6)[:, None])
        fused = torch.maximum(norm(a[torch.arange(2), labels]), norm(b[torch.arange(2), labels]))
        assert torch.allclose(net.localization_cam(net.forward_features(images), labels), fused, atol=1e-5)
    for layer in net.heads.modules():  # xavier-uniform weights (bound sqrt(6 / (fan_in + fan_out))), zero biases
        if isinstance(layer, torch.nn.Conv2d):
            fan_in, fan_out = layer.weight[0].numel(), layer.weight.shape[0] * layer.weight[0, 0].numel()
            assert layer.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) and not layer.bias.any()
    assert net.feature_layer == "pool" and _net().feature_layer == "backbone"
    assert train.RunConfig(mode="ACOL").model_config(3).feature_pool == "avg3"


def test_oc_cse_mask_variants_by_hand() -> None:
    raw = torch.tensor([[[-1.0, 2.0], [0.5, 1.0]], [[0.2, -0.3], [0.4, 0.1]]])  # 2 images, 2×2 maps
    up = F.interpolate(raw[:, None], size=(4, 4), mode="bilinear", align_corners=False).relu()
    assert torch.allclose(erasing_mask(raw, (4, 4), "batch"), up / (up.max() + 1e-5))  # one max over the batch
    assert torch.allclose(erasing_mask(raw, (4, 4), "image"), up / (up.flatten(1).amax(1).view(2, 1, 1, 1) + 1e-5))
    feature = raw.relu() / (raw.relu().flatten(1).amax(1).view(2, 1, 1) + 1e-5)
    assert torch.allclose(erasing_mask(raw, (4, 4), "feature"),
                          F.interpolate(feature[:, None], size=(4, 4), mode="bilinear", align_corners=False))
    # under the batch's max the second image's mask peaks far below 1
    assert erasing_mask(raw, (4, 4), "batch")[1].max() < 0.25


def test_multi_scale_inference_with_flips_by_hand() -> None:
    """OC-CSE's infer_msf: the image at each scale and mirrored, each map upsampled (bilinear) to
    the image and ReLU'd, mirrored back, summed over the 8 inputs, divided by its max + 1e-5."""
    net = _net(3)
    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    data = ImageSet(images, torch.tensor([0, 2]), ["a", "b"], ["x", "y", "z"],
                    present=torch.tensor([[True, False, True], [False, False, True]]))
    exp = SimpleNamespace(net=net, cfg=SimpleNamespace(img_size=32))
    got = class_maps(exp, data, msf=True)
    total = 0
    with torch.no_grad():
        for scale in MSF_SCALES:
            for flipped in (False, True):
                x = F.interpolate(images.float(), size=(round(32 * scale),) * 2, mode="bilinear",
                                  align_corners=False, antialias=False)
                x = x.flip(-1) if flipped else x
                mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
                std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                cams = net.class_cams(net.forward_features((x / 255 - mean) / std))
                cams = F.interpolate(cams, size=(16, 16), mode="bilinear", align_corners=False).relu()
                total = total + (cams.flip(-1) if flipped else cams)
    expected = (total / (total.amax((2, 3), keepdim=True) + 1e-5)).numpy()
    assert got.shape == (2, 3, 16, 16) and np.allclose(got, expected, atol=1e-5)
    single = class_maps(exp, data, msf=False)
    assert not np.allclose(single, got, atol=1e-3)


def test_crf_background_is_one_minus_the_max_to_the_alpha(monkeypatch) -> None:
    """psa's _crf_with_alpha: bg = (1 - max over the present classes' maps)^α, stacked before the
    present classes' maps and fed to the CRF as they are (not scaled to sum to 1)."""
    maps = np.zeros((1, 3, 4, 4))
    maps[0, 0, :2] = 0.8
    maps[0, 2, 2:] = 0.5
    present = np.array([[True, False, True]])
    image = np.zeros((1, 4, 4, 3), np.uint8)
    seen = []

    def fake_refine(img, scores, settings):
        seen.append(scores)
        return scores  # the argmax of the scores themselves
    monkeypatch.setattr(crf, "crf_refine", fake_refine)
    labels = crf.segment(maps, present, 4, image, "scaled")
    expected_bg = (1 - np.maximum(maps[0, 0], maps[0, 2])) ** 4
    assert np.allclose(seen[0][0], expected_bg) and np.allclose(seen[0][1:], maps[0, [0, 2]])
    assert labels[0, 0, 0] == 1 and labels[0, 3, 0] == 3  # class 0 and class 2 (labels k + 1)
    seen.clear()
    crf.segment(maps, present, 0.3, image, "scaled-const")  # camlab's earlier: a constant, scaled to sum to 1
    assert np.allclose(seen[0].sum(axis=0), 1) and np.allclose(seen[0][0, 0, 0], 0.3 / (0.3 + 0.8 + 1e-5))
    assert crf.background_grid("affinitynet") == crf.CRF_ALPHA_GRID and 4 in crf.CRF_ALPHA_GRID
    assert 32 in crf.CRF_ALPHA_GRID and crf.background_grid("scaled-const") == crf.CRF_THRESHOLD_GRID


def test_pxap_and_max_box_acc_at_both_steps_by_hand() -> None:
    """At wsolevaluation's default step 0.001 PxAP and MaxBoxAcc see what 0.01 cannot: PxAP bins
    [0.99, 1) hold a foreground 0.999 and a background 0.995 at 0.01 (AP 1/2), apart at 0.001 (AP 1);
    two adjacent pixels quantised to 252 and 250 are kept together at every τ ≤ 0.99 (int(0.99 · 252)
    = 249), alone the first at τ = 0.993 (int(250.2) = 250)."""
    cams, masks = np.array([[[0.999, 0.995]]]), np.array([[[True, False]]])
    assert pxap(cams, masks, 0.01) == pytest.approx(0.5) and pxap(cams, masks, 0.001) == pytest.approx(1.0)
    cam = np.zeros((1, 8, 8))
    cam[0, 2, 2], cam[0, 2, 3] = 252.5 / 255, 250.5 / 255  # uint8 252 and 250
    gt = [[(2, 2, 3, 3)]]  # the first pixel's contour box, (x, y, x + w, y + h)
    coarse, fine = max_box_acc(cam, gt, interval=0.01), max_box_acc(cam, gt, interval=0.001)
    # coarse: the box (2, 2, 4, 3) against (2, 2, 3, 3): IoU 4 / 6 < 0.7; fine: the box itself
    assert coarse[0.5] == 1.0 and coarse[0.7] == 0.0 and fine[0.7] == 1.0
    assert coarse == max_box_acc(cam, gt, interval=0.01, evaluator="reference")
    assert fine == max_box_acc(cam, gt, interval=0.001, evaluator="reference")
