"""ACoL's convolutional heads (Zhang et al., CVPR 2018; wsolevaluation's ``wsol/method/acol.py``):
erasing and fusion by hand on hand-set weights, gradients reaching every parameter, the paper's
layer shapes, old configs and runs reading back as the linear heads they had."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from torch import nn

import model
import train
from camlab.cams import minmax, select_class
from camlab.heads import ACOL_WIDTH, HEAD_TYPES
from camlab.methods import acol_objective
from camlab.utils import CamlabError
from model import CAMModel, ModelConfig

CONV = HEAD_TYPES["conv"]


def _set_conv_head(head: nn.Sequential, first: float, second: float, last: list[float],
                   last_bias: list[float]) -> None:
    """A width-1 conv head on one feature channel: both 3×3 convs only their centre tap (``first``,
    ``second``; no bias), so the head computes ``last_k * relu(second * relu(first * f)) + last_bias_k``."""
    conv_a, _, conv_b, _, conv_c = head
    with torch.no_grad():
        for conv, centre in ((conv_a, first), (conv_b, second)):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = centre
            conv.bias.zero_()
        conv_c.weight.copy_(torch.tensor(last).view(-1, 1, 1, 1))
        conv_c.bias.copy_(torch.tensor(last_bias))


def _hand_conv_model() -> CAMModel:
    """Recipe pp, two classes, delta 0.5, both heads conv on one feature channel.
    Head 1: class 0 = f + 0.5, class 1 = -f. Head 2: class 0 = 2f, class 1 = 2f + 1 (f >= 0)."""
    net = CAMModel(num_classes=2, weights="none", recipe="pp", deltas=(0.5,), head="conv", head_width=1)
    net.heads = nn.ModuleList(CONV.build(1, 2, 1) for _ in "pp")
    _set_conv_head(net.heads[0], 1.0, 1.0, [1.0, -1.0], [0.5, 0.0])
    _set_conv_head(net.heads[1], 2.0, 1.0, [1.0, 1.0], [0.0, 1.0])
    return net


FEATURES = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])  # N=1, C=1, 2×2


def test_conv_heads_erase_where_the_first_heads_target_map_reaches_delta() -> None:
    net = _hand_conv_model()
    first, second = net.run_heads(FEATURES, torch.tensor([1]))
    assert torch.equal(first.cams[0, 0], torch.tensor([[1.5, 2.5], [3.5, 5.5]]))
    assert torch.equal(first.cams[0, 1], torch.tensor([[-1.0, -2.0], [-3.0, -5.0]]))
    assert torch.allclose(first.scores, torch.tensor([[13 / 4, -11 / 4]]))  # GAP of the maps, no extra bias
    # target class 1 (not the top class 0): min-max of -f is [[1, 3/4], [1/2, 0]]; >= 0.5 (the
    # 1/2 included) everywhere but the last position, so head 2 sees [[0, 0], [0, 5]] (class 0's
    # map, [[0, 1/4], [1/2, 1]], would have erased the bottom row instead)
    erased = torch.tensor([[[[0.0, 0.0], [0.0, 5.0]]]])
    assert torch.equal(second.cams[0, 0], torch.tensor([[0.0, 0.0], [0.0, 10.0]]))
    assert torch.equal(second.cams[0, 1], torch.tensor([[1.0, 1.0], [1.0, 11.0]]))
    assert torch.allclose(second.scores, torch.tensor([[10 / 4, 14 / 4]]))
    assert torch.allclose(second.scores, second.cams.mean(dim=(2, 3)))
    assert torch.equal(second.cams, net.class_cams(erased, 1))


def test_the_fused_map_is_the_max_of_both_heads_normalised_maps() -> None:
    net = _hand_conv_model()
    fused = net.localization_cam(FEATURES, torch.tensor([1]))
    # max([[1, 3/4], [1/2, 0]], min-max of [[1, 1], [1, 11]] = [[0, 0], [0, 1]])
    assert torch.equal(fused, torch.tensor([[[1.0, 0.75], [0.5, 1.0]]]))
    first, second = net.run_heads(FEATURES, torch.tensor([1]))
    both = torch.stack([minmax(select_class(o.cams, torch.tensor([1]))) for o in (first, second)])
    assert torch.equal(fused, both.amax(dim=0))


def test_the_conv_head_is_the_papers() -> None:
    with torch.device("meta"):
        head = CONV.build(128, 10, ACOL_WIDTH)
    conv_a, relu_a, conv_b, relu_b, conv_c = head
    assert (conv_a.in_channels, conv_a.out_channels, conv_a.kernel_size, conv_a.padding) == (128, 1024, (3, 3), (1, 1))
    assert (conv_b.in_channels, conv_b.out_channels, conv_b.kernel_size, conv_b.padding) == (1024, 1024, (3, 3), (1, 1))
    assert (conv_c.in_channels, conv_c.out_channels, conv_c.kernel_size) == (1024, 10, (1, 1))
    assert isinstance(relu_a, nn.ReLU) and isinstance(relu_b, nn.ReLU)
    assert sum(p.numel() for p in head.parameters()) == (128 * 9 + 1) * 1024 + (1024 * 9 + 1) * 1024 + 1025 * 10


def test_conv_scores_are_the_gap_of_the_class_maps() -> None:
    torch.manual_seed(0)
    net = CAMModel(num_classes=3, weights="none", head="conv", head_width=8).eval()
    with torch.inference_mode():
        scores, features, _ = net(torch.randn(2, 3, 32, 32))
        assert torch.allclose(scores, net.class_cams(features).mean(dim=(2, 3)), atol=1e-6)
        assert torch.allclose(scores, net.run_heads(features, scores.argmax(1))[0].scores, atol=1e-6)


@pytest.mark.parametrize("recipe", ("pp", "pn", "ppn"))
def test_every_parameter_gets_a_nonzero_gradient_with_conv_heads(recipe: str) -> None:
    torch.manual_seed(0)
    net = CAMModel(num_classes=3, weights="none", recipe=recipe, deltas=(0.6,), head="conv", head_width=8)
    step = acol_objective(net, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    step.loss.backward()
    assert torch.isfinite(step.loss)
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert {n.split(".")[1] for n, _ in net.named_parameters() if n.startswith("heads.")} == set(
        str(i) for i in range(len(recipe)))


def test_an_old_config_without_a_head_loads_as_linear(tmp_path) -> None:
    old = {"num_classes": 2, "backbone": "resnet18", "cut": "layer2", "recipe": "pp", "deltas": [0.6]}
    assert ModelConfig(**old).head == "linear"
    net = CAMModel(num_classes=2, weights="none", recipe="pp")  # what ACOL trained before conv heads
    torch.save({"format": model.CHECKPOINT_FORMAT, "model": net.state_dict(), "model_config": old},
               tmp_path / "old.pth")
    loaded, _ = model.load_checkpoint(tmp_path / "old.pth")
    assert loaded.config.head == "linear" and all(isinstance(h, nn.Linear) for h in loaded.heads)
    assert torch.equal(loaded.heads[1].weight, net.heads[1].weight)


def test_conv_checkpoints_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    net = CAMModel(num_classes=3, weights="none", recipe="pn", deltas=(0.9,), head="conv", head_width=4).eval()
    model.save_checkpoint(tmp_path / "c.pth", net)
    loaded, ckpt = model.load_checkpoint(tmp_path / "c.pth")
    assert ckpt["model_config"]["head"] == "conv" and ckpt["model_config"]["head_width"] == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(x)[0], net(x)[0])


def test_bad_head_settings_are_named() -> None:
    with pytest.raises(CamlabError, match="--acol_head 'mlp'"):
        ModelConfig(head="mlp")
    with pytest.raises(CamlabError, match="--acol_width"):
        ModelConfig(head="conv", head_width=0)


def test_conv_head_activations_count_toward_the_memory_check() -> None:
    """At 32 px layer2's maps are 4×4; each conv head of width 8 outputs conv, ReLU, conv, ReLU
    (8 channels each) and 2 class maps, float32; a linear head counts nothing."""
    linear = model.input_shape(ModelConfig(num_classes=2, recipe="pp"), 32).activation_bytes
    conv = model.input_shape(ModelConfig(num_classes=2, recipe="pp", head="conv", head_width=8), 32)
    assert conv.activation_bytes - linear == 2 * 4 * (4 * 8 + 2) * 4 * 4
    assert linear == model.input_shape(ModelConfig(), 32).activation_bytes


def test_acol_runs_use_conv_heads_and_others_linear() -> None:
    assert train.RunConfig(mode="ACOL").model_config(5).head == "conv"
    assert train.RunConfig(mode="ACOL", acol_head="linear").model_config(5).head == "linear"
    assert train.RunConfig(mode="ACOL", acol_width=16).model_config(5).head_width == 16
    for mode in ("CAM", "SEG", "CSE"):
        assert train.RunConfig(mode=mode).model_config(5).head == "linear"


def test_acol_runs_saved_before_conv_heads_read_back_as_linear() -> None:
    old_acol = {"mode": "ACOL", "recipe": "pp", "delta": [0.6], "lr": 1e-3}
    assert train.RunConfig.from_args(old_acol).acol_head == "linear"
    assert train.differing(train.RunConfig(mode="ACOL"), old_acol) == ["acol_head", "acol_pool", "acol_init"]
    old_settings = dict(acol_head="linear", acol_pool="none", acol_init="torch")
    assert train.differing(train.RunConfig(mode="ACOL", **old_settings), old_acol) == []
    # a CAM run's heads never depended on the setting: an old one still matches a new one
    assert train.differing(train.RunConfig(mode="CAM"), {"mode": "CAM"}) == []
    saved = json.loads(json.dumps({"args": asdict(train.RunConfig(mode="ACOL"))}))["args"]
    assert train.RunConfig.from_args(saved).acol_head == "conv"


def test_an_acol_run_trains_conv_heads_end_to_end(tiny_lab, tmp_path, monkeypatch) -> None:
    import main
    monkeypatch.chdir(tmp_path)
    argv = ["--mode", "ACOL", "--acol_width", "8", "--data_root", str(tiny_lab), "--img_size", "32",
            "--epochs", "1", "--batch_size", "8", "--weights", "none", "--quiet", "--device", "cpu",
            "--exp_id", "acol"]
    assert main.main(argv) == 0
    metrics = json.loads((tmp_path / "checkpoints" / "acol" / "metrics.json").read_text())
    assert metrics["args"]["acol_head"] == "conv" and metrics["args"]["acol_width"] == 8
    net, _ = model.load_checkpoint(tmp_path / "checkpoints" / "acol" / "best.pth")
    assert net.config.head == "conv" and net.config.head_width == 8 and len(net.heads) == 2


def test_a_grown_erase_region_covers_the_neighbouring_cells() -> None:
    """Grow 1: every cell within one step (8-neighbourhood) of a cell >= delta is erased too."""
    net = CAMModel(num_classes=2, weights="none", recipe="pp", deltas=(0.5,), erase_grow=1)
    found = torch.zeros(1, 1, 4, 5)
    found[0, 0, 0, 0] = 0.9   # a corner: its 2×2 block
    found[0, 0, 2, 3] = 0.5   # inside: its 3×3 block (0.5 >= delta counts)
    found[0, 0, 3, 0] = 0.49  # below delta: nothing
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 1],
                             [0, 0, 1, 1, 1],
                             [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(net.erased(found, 0.5)[0, 0], expected)
    plain = CAMModel(num_classes=2, weights="none", recipe="pp", deltas=(0.5,))
    assert torch.equal(plain.erased(found, 0.5)[0, 0], found[0, 0] >= 0.5)
    with pytest.raises(CamlabError, match="--acol_grow"):
        ModelConfig(recipe="pp", erase_grow=-1)
