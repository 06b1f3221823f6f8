"""The course skeleton's conventions: its two returnCAM weightings as --cam forms, its 175-of-255
mask rule at 224×224, and its checkpoint file, loaded by a stand-in of the skeleton's model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import main
import model
from camlab import skeleton


def _features_and_model() -> tuple[model.CAMModel, torch.Tensor]:
    torch.manual_seed(0)
    net = model.CAMModel(num_classes=3, weights="none").eval()
    return net, torch.randn(2, 128, 2, 3)


def test_lab_form_is_the_softmax_of_the_pooled_coefficients() -> None:
    net, f = _features_and_model()
    gap = f.mean(dim=(2, 3))
    got = model.CAM_FORMS["lab"](net, f, gap, torch.tensor([0, 1]))
    for i in range(2):
        w = torch.exp(gap[i]) / torch.exp(gap[i]).sum()  # the handout's softmax, by hand
        assert torch.allclose(got[i], (w[:, None, None] * f[i]).sum(0), atol=1e-6)


def test_lab_fc_form_is_the_softmax_of_the_class_weights() -> None:
    net, f = _features_and_model()
    classes = torch.tensor([2, 0])
    got = model.CAM_FORMS["lab_fc"](net, f, f.mean(dim=(2, 3)), classes)
    for i, c in enumerate(classes.tolist()):
        row = net.fc.weight[c].detach()
        w = torch.exp(row) / torch.exp(row).sum()
        assert torch.allclose(got[i], (w[:, None, None] * f[i]).sum(0), atol=1e-6)
    # it differs from the handout's form: the weights are the class's, not the image's
    assert not torch.allclose(got, model.CAM_FORMS["lab"](net, f, f.mean(dim=(2, 3)), classes))


def test_lab_fc_needs_a_linear_head() -> None:
    net = model.CAMModel(num_classes=3, head="conv", head_width=8)
    f = torch.randn(1, 128, 2, 2)
    with pytest.raises(model.CamlabError, match="lab_fc.*linear"):
        model.CAM_FORMS["lab_fc"](net, f, f.mean(dim=(2, 3)), torch.tensor([0]))


def test_render_and_mask_follow_the_skeleton_by_hand() -> None:
    # [0, 7] -> min-max [0, 1] -> uint8 [0, 255]; OpenCV's bilinear resize to 224 samples column x
    # at src = (x + 0.5) * 2 / 224 - 0.5, value 255 * src (clamped to [0, 1]): above 175 from
    # x = 133 (src 0.692, 176.4) on; x = 132 gives src 0.683, 174.2. So 224 - 133 = 91 columns.
    rendered = skeleton.render(np.array([[0.0, 7.0]]))
    assert rendered.shape == (224, 224) and rendered.dtype == np.uint8
    m = skeleton.mask(rendered)
    assert (m.sum(axis=0) == np.where(np.arange(224) >= 133, 224, 0)).all()
    assert rendered[0, 0] == 0 and rendered[0, -1] == 255
    # truncation, not rounding: 255 * 2/3 = 170.0, 255 * 1/3 = 85.0 exactly; 255 * 0.999 -> 254
    assert skeleton.render(np.array([[0.0, 1.0, 2.0, 3.0]]), size=4)[0].tolist() == [0, 85, 170, 255]
    assert np.uint8(255 * 0.999) == 254
    assert not skeleton.mask(skeleton.render(np.zeros((2, 2)))).any()  # a constant map: nothing
    with pytest.raises(model.CamlabError, match="finite"):
        skeleton.render(np.array([[0.0, np.nan]]))


class SkeletonStandIn(nn.Module):
    """The skeleton's model as its loading code needs it: ResNet-18's children through layer2,
    GAP, one 128 -> 10 linear layer (``fc``)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:6])
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x).mean(dim=(2, 3)))


def _finished_run(run_dir, steps: int = 1) -> model.CAMModel:
    """best.pth and last.pth (with Adam's state) of a 10-class lab model, as train.py writes them."""
    torch.manual_seed(1)
    net = model.CAMModel(num_classes=10, weights="none")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(2, 3, 32, 32))[0].sum().backward()
        opt.step()
    run_dir.mkdir(parents=True)
    model.save_checkpoint(run_dir / "best.pth", net.eval(), epoch=3)
    model.save_checkpoint(run_dir / "last.pth", net, epoch=4, optimizer=opt.state_dict())
    return net


def test_exported_checkpoint_loads_into_the_skeletons_model(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    net = _finished_run(tmp_path / "checkpoints" / "cam")
    assert main.main(["--export_skeleton", "--exp_id", "cam"]) == 0
    assert "checkpoints/cam_checkpoint.pth" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "checkpoints" / "cam_checkpoint.pth", weights_only=True)
    assert set(ckpt) == {"model_state_dict", "optimizer_state_dict", "epoch"} and ckpt["epoch"] == 3
    stand_in = SkeletonStandIn().eval()
    stand_in.load_state_dict(ckpt["model_state_dict"])  # strict: every name and shape fits
    assert ckpt["model_state_dict"]["fc.weight"].shape == (10, 128)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(stand_in(x), net(x)[0], atol=1e-5)
    opt = torch.optim.Adam(stand_in.parameters(), lr=1e-3)
    opt.load_state_dict(ckpt["optimizer_state_dict"])  # the skeleton's resume() loads it too
    stand_in.train()
    stand_in(x).sum().backward()
    opt.step()  # Adam's moments fit every parameter's shape


def test_export_keeps_an_existing_file_and_names_what_is_missing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main.main(["--export_skeleton", "--exp_id", "none"]) == 2
    assert "checkpoints/none/best.pth does not exist" in capsys.readouterr().err
    _finished_run(tmp_path / "checkpoints" / "cam")
    out = tmp_path / "checkpoints" / "cam_checkpoint.pth"
    out.write_bytes(b"mine")
    assert main.main(["--export_skeleton", "--exp_id", "cam"]) == 2
    assert "exists already; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main.main(["--export_skeleton", "--exp_id", "cam", "--overwrite"]) == 0
    assert "model_state_dict" in torch.load(out, weights_only=True)


def test_export_refuses_a_model_the_skeleton_cannot_hold(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "checkpoints" / "acol"
    run.mkdir(parents=True)
    model.save_checkpoint(run / "best.pth", model.CAMModel(num_classes=10, recipe="pp"), epoch=1)
    assert main.main(["--export_skeleton", "--exp_id", "acol"]) == 2
    assert "only a run of the lab's model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, resume", [([], False), (["--resume"], True), (["--resume", "1"], True),
                                          (["--resume", "0"], False)])
def test_resume_reads_the_skeletons_form(argv, resume) -> None:
    assert main.build_parser().parse_args(argv).resume is resume


def test_resume_with_another_value_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.build_parser().parse_args(["--resume", "2"])
    assert exit_.value.code == 2 and "give no value, or 1" in capsys.readouterr().err
