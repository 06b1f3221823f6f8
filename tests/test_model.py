"""The CAM model: shapes, both CAM forms against hand computations, weight loading paths."""
from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision

import model as M
from camlab.cams import normalize_cam, select_class
from camlab.utils import CamlabError
from model import CAMModel


@pytest.mark.parametrize("size,side", [(224, 28), (112, 14)])
def test_output_shapes(size: int, side: int) -> None:
    net = CAMModel(num_classes=10, weights="none").eval()
    with torch.inference_mode():
        scores, features, gap = net(torch.randn(2, 3, size, size))
    assert scores.shape == (2, 10)
    assert features.shape == (2, 128, side, side)
    assert gap.shape == (2, 128)
    assert net.class_cams(features).shape == (2, 10, side, side)
    assert net.lab_cam(features, gap).shape == (2, side, side)


def test_backbone_is_resnet18_through_layer2_and_trainable() -> None:
    net = CAMModel(weights="none")
    assert list(net.backbone._modules) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    assert len(net.backbone.layer2) == 2  # both BasicBlocks
    assert all(p.requires_grad for p in net.parameters())
    assert sum(p.numel() for p in net.backbone.parameters()) == 683_072


def test_other_backbone_needs_no_new_code() -> None:
    net = CAMModel(num_classes=4, weights="none", backbone="resnet50", cut="layer2")
    scores, features, _ = net(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 512, 8, 8) and net.fc.in_features == 512
    assert scores.shape == (1, 4)


def _hand_model() -> CAMModel:
    net = CAMModel(num_classes=2, weights="none")
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.weight[0, :2] = torch.tensor([1.0, 2.0])
        net.fc.weight[1, :2] = torch.tensor([0.0, -1.0])
        net.fc.bias.copy_(torch.tensor([0.5, -0.5]))
    return net


def _hand_features() -> torch.Tensor:
    f = torch.zeros(1, 128, 2, 2)
    f[0, 0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    f[0, 1] = torch.tensor([[0.0, 4.0], [4.0, 0.0]])
    return f


def test_class_cams_by_hand() -> None:
    net, f = _hand_model(), _hand_features()
    cams = net.class_cams(f)
    # M_0 = 1*f0 + 2*f1, M_1 = -f1
    assert torch.equal(cams[0, 0], torch.tensor([[4.0, 8.0], [8.0, 0.0]]))
    assert torch.equal(cams[0, 1], torch.tensor([[0.0, -4.0], [-4.0, 0.0]]))
    # the map's mean plus the bias is the class score (Zhou et al., eq. 1-2)
    scores, _ = net.forward_head(f)
    assert torch.allclose(cams.mean(dim=(2, 3)) + net.fc.bias, scores)
    assert torch.equal(select_class(cams, torch.tensor([1])), cams[:, 1])


def test_lab_cam_by_hand() -> None:
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    f[0, 1] = torch.tensor([[0.0, 4.0], [4.0, 0.0]])
    gap = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> [1/4, 3/4]
    cam = CAMModel.lab_cam(f, gap)
    assert torch.allclose(cam, torch.tensor([[[1.0, 3.0], [3.0, 0.0]]]))


def test_normalize_cam_in_unit_range() -> None:
    cam = torch.tensor([[[-2.0, 1.0], [4.0, 2.0]], [[-1.0, -3.0], [-2.0, -5.0]]])
    out = normalize_cam(cam, eps=0.0 + 1e-12)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.25], [1.0, 0.5]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # nothing positive: all zero, no NaN
    assert not out.isnan().any()


def _torchvision_state(seed: int = 3) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_weights_from_a_torchvision_state_dict(tmp_path) -> None:
    state = _torchvision_state()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    net = CAMModel(weights=str(path))
    assert net.weights_used == str(path)
    assert torch.equal(net.backbone.layer2[1].conv2.weight, state["layer2.1.conv2.weight"])
    assert torch.equal(net.backbone.bn1.running_mean, state["bn1.running_mean"])


def test_weights_file_errors(tmp_path) -> None:
    with pytest.raises(CamlabError, match="no such file"):
        CAMModel(weights=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CamlabError, match="garbage.pth: not a loadable state dict"):
        CAMModel(weights=str(garbage))
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in _torchvision_state().items() if not k.startswith("layer2")}, partial)
    with pytest.raises(CamlabError, match="backbone tensors missing"):
        CAMModel(weights=str(partial))
    r50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), r50)
    with pytest.raises(CamlabError, match="shape of"):
        CAMModel(weights=str(r50))


def test_imagenet_weights_from_the_torch_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _torchvision_state(seed=5)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / url.rsplit("/", 1)[1])
    net = CAMModel(weights="imagenet")
    assert net.weights_used == "imagenet"
    assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])


def test_imagenet_unreachable_falls_back_to_random_init(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("name resolution failed")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = CAMModel(weights="imagenet")
    assert net.weights_used == M.RANDOM_INIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: ImageNet weights" in err and "random init" in err
    # the next fold of the same run neither tries again nor warns again
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried twice"))
    assert CAMModel(weights="imagenet").weights_used == M.RANDOM_INIT
    assert capsys.readouterr().err == ""


def test_unknown_backbone_is_a_user_error() -> None:
    with pytest.raises(CamlabError, match="--backbone 'vgg'"):
        CAMModel(backbone="vgg")


def test_normalize_cam_over_valid_positions() -> None:
    cam = torch.tensor([[[[4.0, 2.0], [1.0, -3.0]]]])  # N×1×h×w
    valid = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    out = normalize_cam(cam, eps=1e-12, valid=valid)  # the 4 lies outside: the max is 2
    assert torch.allclose(out, torch.tensor([[[[2.0, 1.0], [0.5, 0.0]]]]))


@pytest.mark.parametrize("size, side", [(7, 1), (8, 1), (9, 2), (16, 2), (17, 3), (32, 4), (224, 28)])
def test_input_shape_gives_the_feature_side_of_a_real_forward(size: int, side: int) -> None:
    """Hand count for layer2: conv1 (k7 s2 p3), maxpool (k3 s2 p1), layer2 (s2): 9 -> 5 -> 3 -> 2."""
    config = M.ModelConfig()
    assert M.input_shape(config, size).feature_side == side
    net = M.CAMModel(2, "none").eval()
    assert net.forward_features(torch.zeros(1, 3, size, size)).shape[-1] == side


def test_activation_bytes_count_every_layer_output() -> None:
    """At 32 px: the stem's outputs (conv1, bn1, relu at 64×16×16; maxpool 64×8×8); each basic
    block's conv1, bn1, relu, conv2, bn2 and relu again (the one ReLU module runs twice), so six
    outputs, eight with layer2's downsample conv and bn; layer1 at 64×8×8, layer2 at 128×4×4;
    float32."""
    stem = 3 * 64 * 16 * 16 + 64 * 8 * 8
    layer1 = 2 * 6 * 64 * 8 * 8
    layer2 = (8 + 6) * 128 * 4 * 4
    assert M.input_shape(M.ModelConfig(), 32).activation_bytes == 4 * (stem + layer1 + layer2)


def test_input_size_checks_name_the_flags() -> None:
    config = M.ModelConfig()
    with pytest.raises(CamlabError, match=r"--img_size 8 gives 1×1 feature maps after layer2; at least 9 gives 2×2"):
        M.check_input_size(config, 8, 1, torch.device("cpu"))
    with pytest.raises(CamlabError, match=r"--img_size 100000 with --batch_size 32 needs about .* GiB"):
        M.check_input_size(config, 100_000, 32, torch.device("cpu"))
    assert M.check_input_size(config, 16, 8, torch.device("cpu")).feature_side == 2


@pytest.mark.parametrize("content, kind", [(b"", "an empty file"), (b"hello\n", "a text file"),
                                           (b"\x89PNG\r\n\x1a\n\x00\x01", "a PNG image"),
                                           (b"\xff\xd8\xff\xe0\x00", "a JPEG image")])
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, content: bytes, kind: str) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CamlabError, match=f"it is not a PyTorch checkpoint \\({kind}, not a file torch.save wrote\\)"):
        M.safe_load(path, "cpu", "checkpoint x.pth cannot be read safely")


def test_a_cut_checkpoint_is_not_called_dangerous(tmp_path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"w": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CamlabError, match="not a complete PyTorch checkpoint .truncated or damaged") as err:
        M.safe_load(path, "cpu", "checkpoint x.pth cannot be read safely")
    assert "run code" not in str(err.value)
