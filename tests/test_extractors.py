"""The other CAM extractors (torchcam's hooks): camlab's CAM equals torchcam's, the gradient-based
ones reduce to what their formulas give on a GAP + linear head, Grad-CAM++, SmoothGrad-CAM++ and
Score-CAM equal their papers' steps written out by hand (torchcam 0.5.0's departures equal what
0.5.0 computes, and differ from them), and the commands read them."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchcam import methods

import model
from camlab.cams import minmax
from camlab.extractors import EXTRACTOR_NAMES, EXTRACTORS, extractor_class, open_torchcam
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
            "--weights", "none", "--data_root", str(tiny_lab), "--device", "cpu", "--n_threshold", "6",
            "--faith_steps", "2"]
    assert iou.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "report" / "extractors.csv")))
    assert [(r["experiment"], r["method"]) for r in rows] == [
        ("methods_cam_s0", "CAM"), ("methods_cam_s0", "Grad-CAM"), ("methods_cam_s0", "LayerCAM")]
    metrics = json.loads((tmp_path / "checkpoints" / "methods_cam_s0" / "metrics.json").read_text())
    assert all(float(r["test_acc"]) == pytest.approx(metrics["test_acc"], abs=1e-4) for r in rows)
    md = (tmp_path / "report" / "extractors.md").read_text()
    localisation, faithfulness = md.split("\n### Faithfulness\n")
    summary = [line for line in localisation.splitlines() if line.startswith("| - | ")]
    assert [line.split(" | ")[1] for line in summary] == ["CAM", "Grad-CAM", "LayerCAM"]
    assert all(line.count("[") == 2 for line in summary[1:])  # one seed: one IoU and one PxAP interval
    faith = [line for line in faithfulness.split("\n### ")[0].splitlines() if line.startswith("| - | ")]
    assert [line.split(" | ")[1] for line in faith] == ["CAM", "Grad-CAM", "LayerCAM"]
    assert all(line.count("[") == 4 for line in faith[1:])  # Avg Drop, Incr. Conf., deletion, insertion
    assert all(0 <= float(r["avg_drop"]) <= 100 and 0 <= float(r["deletion_auc"]) <= 1 for r in rows)
    assert (tmp_path / "report" / "extractors_grid.png").stat().st_size > 0
    # --scores reuse keeps each report (off, the default, kept none) and a second pass reads them
    assert not (tmp_path / "report" / "scores").exists()
    table = (tmp_path / "report" / "extractors.csv").read_text()
    assert iou.main([*argv, "--scores", "reuse"]) == 0
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "report" / "scores" / "methods_cam_s0").iterdir()) == [
        "wsol_cam", "wsol_gradcam", "wsol_layercam"]
    from research import comparisons

    def refuse(*args, **kwargs):
        raise AssertionError("scored again")
    with monkeypatch.context() as m:
        m.setattr(comparisons, "wsol_report", refuse)
        assert iou.main([*argv, "--scores", "reuse"]) == 0
    assert (tmp_path / "report" / "extractors.csv").read_text() == table
    # --wsol --extractor reads the same maps as the comparison's row
    assert iou.main(["--wsol", "--extractor", "gradcam", "--device", "cpu", "--n_threshold", "6",
                     "--faith_steps", "2"]) == 0
    again = list(csv.DictReader(open(tmp_path / "report" / "methods.csv")))
    assert [r["pxap"] for r in again] == [rows[1]["pxap"]]


@pytest.mark.parametrize("name", ["smoothgradcampp", "smoothgradcampp_torchcam"])
def test_smoothgrad_maps_do_not_depend_on_the_global_generator(name: str) -> None:
    net = _net(3)
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    _, first = model.extractor_maps(net, images, None, name)
    after = torch.rand(1)
    torch.manual_seed(2)
    _, second = model.extractor_maps(net, images, None, name)
    assert torch.equal(first, second)
    torch.manual_seed(1)
    model.extractor_maps(net, images, None, name)
    assert torch.equal(torch.rand(1), after)  # the global state is left as it was


def test_iou_refuses_an_extractor_without_wsol(capsys) -> None:
    import iou
    with pytest.raises(SystemExit) as stop:
        iou.main(["--extractor", "gradcam"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--extractor applies to --wsol" in err


# ------------------------------------------------------------- the papers' forms, by hand
def test_each_torchcam_variant_sits_beside_its_paper_and_says_how_it_departs() -> None:
    for reference in ("gradcampp", "smoothgradcampp", "scorecam"):
        variant = f"{reference}_torchcam"
        torchcams = getattr(methods, {"gradcampp": "GradCAMpp", "smoothgradcampp": "SmoothGradCAMpp",
                                      "scorecam": "ScoreCAM"}[reference])
        assert extractor_class(variant) is torchcams  # 0.5.0 as shipped
        assert issubclass(extractor_class(reference), torchcams) and extractor_class(reference) is not torchcams
        assert EXTRACTOR_NAMES[variant].startswith(EXTRACTOR_NAMES[reference] + " (torchcam 0.5.0, ")
    assert EXTRACTOR_NAMES["gradcampp"] == "Grad-CAM++" and EXTRACTOR_NAMES["scorecam"] == "Score-CAM"
    assert EXTRACTOR_NAMES["smoothgradcampp"] == "SmoothGrad-CAM++"
    with pytest.raises(CamlabError, match="camlab's own CAM"):
        extractor_class("cam")


def _gap_terms(net: CAMModel, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(features A N×K×h×w, the classes' weights w_ck N×K, m_k = mean_xy A_k N×K, h·w)."""
    features = net.forward_features(images).detach()
    return features, net.fc.weight.detach()[classes], features.mean(dim=(2, 3)), features[0, 0].numel()


def _weighted(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k weights_k A_k) per image: the map of channel weights N×K."""
    return torch.einsum("nk,nkhw->nhw", weights, features).relu()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcampp_on_a_gap_linear_head_is_its_closed_form(seed: int) -> None:
    """g = w_ck / (h w) everywhere and sum_ab A_k = h w m_k: Eq. 19 gives alpha = 1 / (2 + w_ck m_k),
    so the weights are relu(w_ck) / (2 + w_ck m_k). torchcam 0.5.0 never divides alpha (it stays
    g²): its weights are h w · g² · relu(g) = relu(w_ck) w_ck² / (h w)², and its maps differ."""
    net = _net(seed)
    images, classes = torch.randn(4, 3, 32, 32), torch.tensor([seed, 4, 1, 2])
    features, w, m, area = _gap_terms(net, images, classes)
    assert (2 + w * m > 0).all()  # post-ReLU features: the closed form is defined
    _, paper = model.extractor_maps(net, images, classes, "gradcampp")
    assert torch.allclose(paper, _weighted(w.clamp_min(0) / (2 + w * m), features), rtol=1e-5, atol=1e-6)
    _, shipped = model.extractor_maps(net, images, classes, "gradcampp_torchcam")
    cubed = _weighted(w.clamp_min(0) * w.pow(2) / area ** 2, features)
    assert torch.allclose(shipped, cubed, rtol=1e-4, atol=1e-12)
    assert float((minmax(paper) - minmax(shipped)).abs().max()) > 0.05


class _Tiny(nn.Module):
    """conv → ReLU → square → GAP → linear. The gradient of the class logit at the ReLU's output
    A, 2 w_ck A_k(x, y) / (h w), varies over positions and is 0 where the ReLU cut."""

    def __init__(self, seed: int, channels: int = 4, classes: int = 3, gain: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels, classes)
        with torch.no_grad():
            self.fc.weight.mul_(gain)
        self.eval()

    def head(self, activations: torch.Tensor) -> torch.Tensor:
        return self.fc(activations.pow(2).mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(images)))


def _tiny_maps(net: nn.Module, images: torch.Tensor, classes: torch.Tensor, name: str, **options) -> torch.Tensor:
    with open_torchcam(net, "act", name, images.shape[-1], **options) as maps_of:
        scores, maps = maps_of(images, classes)
    assert torch.allclose(scores, net(images))
    return maps


def _activations_and_gradient(net: _Tiny, images: torch.Tensor,
                              classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (the ReLU's output) and dS_c/dA, by torch.autograd."""
    activations = net.act(net.conv(images)).detach().requires_grad_(True)
    logits = net.head(activations).gather(1, classes.view(-1, 1)).sum()
    return activations.detach(), torch.autograd.grad(logits, activations)[0]


def _eq19_by_hand(g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Eq. 19 written out: alpha_kij = g2_kij / (2 g2_kij + (sum_ab A_kab) g3_kij), 0 where g2 = 0;
    w_k = sum_ij alpha_kij relu(g1_kij); the map ReLU(sum_k w_k A_k)."""
    total = activations.sum(dim=(2, 3), keepdim=True)
    alpha = torch.zeros_like(g2)
    nonzero = g2 != 0
    alpha[nonzero] = g2[nonzero] / (2 * g2 + total * g3)[nonzero]
    return _weighted((alpha * g1.relu()).sum(dim=(2, 3)), activations)


def test_gradcampp_where_the_gradient_varies_over_positions_is_eq19_by_hand() -> None:
    net = _Tiny(0)
    images, classes = torch.randn(3, 3, 16, 16), torch.tensor([0, 2, 1])
    activations, g = _activations_and_gradient(net, images, classes)
    assert (g == 0).any() and (g.flatten(2).std(-1) > 0).all()  # zeros and variation
    paper = _tiny_maps(net, images, classes, "gradcampp")
    assert torch.allclose(paper, _eq19_by_hand(g, g.pow(2), g.pow(3), activations), rtol=1e-5, atol=1e-7)
    shipped = _tiny_maps(net, images, classes, "gradcampp_torchcam")  # alpha = g²: weights sum relu(g)³
    assert torch.allclose(shipped, _weighted(g.relu().pow(3).sum(dim=(2, 3)), activations), rtol=1e-4, atol=1e-12)
    assert float((minmax(paper) - minmax(shipped)).abs().max()) > 0.05


def _torchcams_noise(shape: torch.Size, seed: int = 0, n: int = 4, std: float = 0.3) -> list[torch.Tensor]:
    """The n noise draws SmoothGrad-CAM++ adds to the input, in order: N(0, std²) from torch's
    global generator, which open_torchcam seeds with ``seed`` (the forward pass before draws none)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        normal = torch.distributions.Normal(0.0, std)
        return [normal.sample(shape) for _ in range(n)]


def test_smoothgradcampp_on_a_gap_linear_head_is_gradcampp_and_torchcams_reads_the_noisy_activations() -> None:
    """The gradient of a GAP + linear head does not depend on the input, so averaging it over noisy
    copies changes nothing: SmoothGrad-CAM++ is Grad-CAM++. torchcam 0.5.0's map combines those
    weights (its alpha with eps 1e-8 in the denominator) with the last noisy copy's activations."""
    net = _net(4)
    images, classes = torch.randn(3, 3, 32, 32), torch.tensor([1, 1, 3])
    _, gradcampp = model.extractor_maps(net, images, classes, "gradcampp")
    _, smooth = model.extractor_maps(net, images, classes, "smoothgradcampp")
    assert torch.allclose(smooth, gradcampp, rtol=1e-6, atol=1e-7)
    _, shipped = model.extractor_maps(net, images, classes, "smoothgradcampp_torchcam")
    features, w, m, area = _gap_terms(net, images, classes)
    g = w / area
    alpha = g.pow(2) / (2 * g.pow(2) + g.pow(3) * area * m + 1e-8)
    last = net.forward_features(images + _torchcams_noise(images.shape)[-1]).detach()
    assert torch.allclose(shipped, _weighted(area * alpha * g.relu(), last), rtol=1e-4, atol=1e-7)
    assert float((minmax(shipped) - minmax(gradcampp)).abs().max()) > 0.05


def test_smoothgradcampp_where_the_gradient_varies_is_eq19_of_the_averaged_derivatives() -> None:
    """g, g², g³ each averaged over the 4 noisy copies (the same draws as torchcam's), Eq. 19 with
    the clean input's activations, relu of the averaged g, the map from the clean activations."""
    net = _Tiny(1)
    images, classes = torch.randn(2, 3, 16, 16), torch.tensor([2, 0])
    clean, _ = _activations_and_gradient(net, images, classes)
    grads = [_activations_and_gradient(net, images + noise, classes)[1] for noise in _torchcams_noise(images.shape)]
    means = [torch.stack([g.pow(p) for g in grads]).mean(0) for p in (1, 2, 3)]
    paper = _tiny_maps(net, images, classes, "smoothgradcampp")
    assert torch.allclose(paper, _eq19_by_hand(*means, clean), rtol=1e-5, atol=1e-7)
    shipped = _tiny_maps(net, images, classes, "smoothgradcampp_torchcam")
    assert float((minmax(paper) - minmax(shipped)).abs().max()) > 0.05


def _scorecam_by_hand(net: _Tiny, images: torch.Tensor, classes: torch.Tensor, upsample_first: bool) -> torch.Tensor:
    """Score-CAM's steps written out, one (image, channel) at a time. The paper's order: A_k
    upsampled bilinearly (align_corners=False) to the input, then min-max normalised (constant:
    0); torchcam's: min-max at A's resolution (divided by max - min + 1e-8), then upsampled.
    The class logit of the masked input minus that of the input, softmax over k,
    ReLU(sum_k w_k A_k)."""
    with torch.no_grad():
        activations = net.act(net.conv(images))
        maps = []
        for n in range(images.shape[0]):
            c = int(classes[n])
            baseline = net(images[n:n + 1])[0, c]
            gains = []
            for a in activations[n]:
                if upsample_first:
                    up = F.interpolate(a[None, None], size=images.shape[-2:], mode="bilinear",
                                       align_corners=False)[0, 0]
                    span = up.max() - up.min()
                    mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                else:
                    low = (a - a.min()) / (a.max() - a.min() + 1e-8)
                    mask = F.interpolate(low[None, None], size=images.shape[-2:], mode="bilinear",
                                         align_corners=False)[0, 0]
                gains.append(net(images[n:n + 1] * mask)[0, c] - baseline)
            weights = torch.softmax(torch.stack(gains), dim=0)
            maps.append((weights[:, None, None] * activations[n]).sum(0).relu())
        return torch.stack(maps)


def test_scorecam_is_the_papers_steps_and_torchcams_normalises_before_upsampling() -> None:
    net = _Tiny(2, channels=5, gain=5.0)
    images, classes = torch.randn(3, 3, 12, 12), torch.tensor([0, 1, 2])
    paper = _tiny_maps(net, images, classes, "scorecam")
    assert paper.shape == (3, 6, 6)
    assert torch.allclose(paper, _scorecam_by_hand(net, images, classes, upsample_first=True), rtol=1e-5, atol=1e-6)
    shipped = _tiny_maps(net, images, classes, "scorecam_torchcam")
    assert torch.allclose(shipped, _scorecam_by_hand(net, images, classes, upsample_first=False), rtol=1e-5, atol=1e-6)
    assert float((minmax(paper) - minmax(shipped)).abs().max()) > 0.01
    # the masked inputs are scored in chunks: any chunk size gives the same map
    assert torch.allclose(_tiny_maps(net, images, classes, "scorecam", score_batch=4), paper, atol=1e-6)
    assert not net.training and all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
