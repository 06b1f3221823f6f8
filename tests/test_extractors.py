"""The other CAM extractors (torchcam): camlab's CAM equals torchcam's, the gradient-based ones
reduce to what their formulas give on a GAP + linear head, and the commands read them."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torchcam import methods

import model
from camlab.extractors import EXTRACTORS
from camlab.utils import CamlabError
from model import CAMModel


def _net(seed: int = 0) -> CAMModel:
    torch.manual_seed(seed)
    return CAMModel(num_classes=5, weights="none").eval()


def _torchcam_normalised(cam: torch.Tensor) -> torch.Tensor:
    """torchcam's own normalisation: minus the min, divided by the new max + 1e-8."""
    low = cam.flatten(1).amin(1).view(-1, 1, 1)
    shifted = cam - low
    return shifted / (shifted.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)


def test_camlab_cam_equals_torchcams_cam_on_the_same_weights() -> None:
    net = _net()
    images, classes = torch.randn(4, 3, 64, 64), torch.tensor([0, 3, 3, 1])
    _, ours = model.feature_maps(net, images, "raw", classes)
    wrapped = model._Scores(net)
    with methods.CAM(wrapped, "net.backbone", "net.heads.0", input_shape=(3, 64, 64)) as extractor:
        wrapped(images)
        raw = extractor(classes.tolist(), normalized=False)[0]
        wrapped(images)
        normalised = extractor(classes.tolist())[0]
    assert raw.shape == ours.shape == (4, 8, 8)
    assert torch.allclose(raw, ours, atol=1e-5)  # sum_k w_ck f_k, no bias, no ReLU
    assert torch.allclose(normalised, _torchcam_normalised(ours), atol=1e-5)
    # and through camlab's own path, as the commands call it
    _, through = model.extractor_maps(net, images, classes, "cam")
    assert torch.equal(through, ours)


def test_gradcam_on_a_gap_linear_head_is_the_relu_of_cam_over_the_map_area() -> None:
    """dS_c/df_k(x, y) = w_ck / (h w) for GAP + linear: Grad-CAM's channel weights are w_ck / (h w),
    so its map is ReLU(M_c) / (h w); XGrad-CAM's weights sum(grad · f) / sum(f) are the same here."""
    net = _net(1)
    images, classes = torch.randn(3, 3, 32, 32), torch.tensor([4, 0, 2])
    _, cam = model.extractor_maps(net, images, classes, "cam")
    area = cam.shape[-1] * cam.shape[-2]
    for name in ("gradcam", "xgradcam"):
        scores, maps = model.extractor_maps(net, images, classes, name)
        assert maps.shape == (3, 4, 4) and scores.shape == (3, 5)
        assert torch.allclose(maps, cam.relu() / area, atol=1e-6), name
    # LayerCAM weighs each position by ReLU(grad) = ReLU(w_ck) / (h w): the ReLU of the
    # positive-weight channels' sum
    net_w = net.fc.weight.detach()
    features = net.forward_features(images).detach()
    expected = torch.einsum("nk,nkhw->nhw", net_w[classes].clamp_min(0) / area, features).relu()
    _, layer = model.extractor_maps(net, images, classes, "layercam")
    assert torch.allclose(layer, expected, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in EXTRACTORS if n != "cam"])
def test_every_extractor_gives_finite_maps_of_the_top_class_and_removes_its_hooks(name: str) -> None:
    net = _net(2)
    images = torch.randn(2, 3, 32, 32)
    scores, maps = model.extractor_maps(net, images, None, name)
    assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all() and (maps >= 0).all()
    assert torch.equal(scores.argmax(1), net(images)[0].argmax(1))
    assert not net.training  # Score-CAM puts the model back as it found it
    hooks = [m._forward_hooks for m in net.modules()] + [m._forward_pre_hooks for m in net.modules()]
    assert all(len(h) == 0 for h in hooks)  # the hooks went with the block
    assert all(p.grad is None for p in net.parameters())  # gradients were taken, not accumulated
    _, unit = model.localization_maps(net, images, (32, 32), "class", None, extractor=name)
    assert unit.shape == (2, 32, 32) and float(unit.min()) >= 0 and float(unit.max()) <= 1 + 1e-6


def test_unknown_extractor_and_the_lab_form_are_refused() -> None:
    net = _net()
    with pytest.raises(CamlabError, match="--extractor 'gradcam2'"):
        model.extractor_maps(net, torch.randn(1, 3, 32, 32), None, "gradcam2")
    with pytest.raises(CamlabError, match="use it with --cam class"):
        model.localization_maps(net, torch.randn(1, 3, 32, 32), (8, 8), "lab", extractor="gradcam")


def test_extractors_command_scores_every_extractor_against_cam(tiny_lab, tmp_path, monkeypatch) -> None:
    import iou
    monkeypatch.chdir(tmp_path)
    argv = ["--extractors", "gradcam", "layercam", "--epochs", "1", "--img_size", "32", "--batch_size", "8",
            "--weights", "none", "--data_root", str(tiny_lab), "--device", "cpu", "--n_threshold", "6"]
    assert iou.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "report" / "extractors.csv")))
    assert [(r["experiment"], r["method"]) for r in rows] == [
        ("methods_cam_s0", "CAM"), ("methods_cam_s0", "Grad-CAM"), ("methods_cam_s0", "LayerCAM")]
    metrics = json.loads((tmp_path / "checkpoints" / "methods_cam_s0" / "metrics.json").read_text())
    assert all(float(r["test_acc"]) == pytest.approx(metrics["test_acc"], abs=1e-4) for r in rows)
    md = (tmp_path / "report" / "extractors.md").read_text()
    summary = [line for line in md.splitlines() if line.startswith("| - | ")]
    assert [line.split(" | ")[1] for line in summary] == ["CAM", "Grad-CAM", "LayerCAM"]
    assert all(line.count("[") == 2 for line in summary[1:])  # one seed: one IoU and one PxAP interval
    assert (tmp_path / "report" / "extractors_grid.png").stat().st_size > 0
    # --wsol --extractor reads the same maps as the comparison's row
    assert iou.main(["--wsol", "--extractor", "gradcam", "--device", "cpu", "--n_threshold", "6"]) == 0
    again = list(csv.DictReader(open(tmp_path / "report" / "methods.csv")))
    assert [r["pxap"] for r in again] == [rows[1]["pxap"]]


def test_smoothgrad_maps_do_not_depend_on_the_global_generator() -> None:
    net = _net(3)
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    _, first = model.extractor_maps(net, images, None, "smoothgradcampp")
    after = torch.rand(1)
    torch.manual_seed(2)
    _, second = model.extractor_maps(net, images, None, "smoothgradcampp")
    assert torch.equal(first, second)
    torch.manual_seed(1)
    model.extractor_maps(net, images, None, "smoothgradcampp")
    assert torch.equal(torch.rand(1), after)  # the global state is left as it was


def test_iou_refuses_an_extractor_without_wsol(capsys) -> None:
    import iou
    with pytest.raises(SystemExit) as stop:
        iou.main(["--extractor", "gradcam"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--extractor applies to --wsol" in err
