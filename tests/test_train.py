"""Training: the loop lowers the loss, checkpoints round-trip safely, folds are sound."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import model
import train
from camlab.images import ImageSet
from camlab.meters import EpochMeter
from camlab.methods import Step
from camlab.utils import CamlabError
from model import CAMModel
from camlab.runs import cv_summary, cv_table


def _colour_set(n: int = 16, size: int = 16) -> ImageSet:
    """Half red images (class 0), half blue (class 1), with a little noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 40, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[labels == 0, 0] += 200
    images[labels == 1, 2] += 200
    return ImageSet(images=images, labels=labels, names=[f"{i}.png" for i in range(n)],
                               classes=["red", "blue"])


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    data = _colour_set()
    net = CAMModel(num_classes=2, weights="none")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    idx = torch.arange(len(data))
    common = dict(objective=train.cam_objective, img_size=32, batch_size=8, progress=False)
    before = train.run_epoch(net, data, idx, **common)
    for epoch in range(4):
        train.run_epoch(net, data, idx, optimizer=opt, epoch=epoch, **common)
    after = train.run_epoch(net, data, idx, **common)
    assert after["loss"] < before["loss"]
    assert set(after) == {"loss", "ce", "acc"} and 0.0 <= after["acc"] <= 1.0


def test_evaluation_does_not_change_the_model() -> None:
    data = _colour_set()
    net = CAMModel(num_classes=2, weights="none")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    train.run_epoch(net, data, torch.arange(len(data)), objective=train.cam_objective, img_size=32,
                    batch_size=5, progress=False)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN stats too
    assert not net.training


def test_epoch_meter_weights_by_batch_size() -> None:
    meter = EpochMeter()
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    meter.update(Step(torch.tensor(1.0), scores[:1], {}), torch.tensor([0]))
    meter.update(Step(torch.tensor(4.0), scores[1:], {}), torch.tensor([0, 0]))
    out = meter.compute()
    assert out["loss"] == pytest.approx((1.0 * 1 + 4.0 * 2) / 3)
    assert out["acc"] == pytest.approx(2 / 3)


def test_checkpoint_round_trip_with_weights_only(tmp_path) -> None:
    net = CAMModel(num_classes=3, weights="none").eval()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 3, 32, 32))[0].sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pth"
    model.save_checkpoint(path, net, epoch=2, best_val_acc=0.5, optimizer=opt.state_dict(),
                          args={"lr": 1e-3, "mode": "CAM"})
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 2 and raw["model_config"]["num_classes"] == 3
    loaded, ckpt = model.load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(x)[0], net(x)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temporary file left


def test_foreign_or_missing_checkpoints_are_refused(tmp_path) -> None:
    with pytest.raises(CamlabError, match="does not exist"):
        model.load_checkpoint(tmp_path / "none.pth")
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CamlabError, match="not written by camlab"):
        model.load_checkpoint(foreign)


def test_kfold_folds_are_disjoint_and_cover() -> None:
    folds = train.kfold_splits(23, 5, seed=1)
    assert len(folds) == 5
    vals = [set(va.tolist()) for _, va in folds]
    assert sum(len(v) for v in vals) == 23 and set().union(*vals) == set(range(23))
    for (tr, va) in folds:
        assert set(tr.tolist()).isdisjoint(va.tolist())
        assert len(tr) + len(va) == 23
    assert [len(v) for v in vals] == [5, 5, 5, 4, 4]
    with pytest.raises(CamlabError, match="--cv 1"):
        train.kfold_splits(10, 1, seed=0)


def test_cv_summary_by_hand() -> None:
    folds = [{"fold": 1, "val_acc": 0.5, "test_acc": 0.6, "best_epoch": 1},
             {"fold": 2, "val_acc": 0.7, "test_acc": 0.8, "best_epoch": 2}]
    s = cv_summary(folds)
    assert s["mean"] == pytest.approx({"val_acc": 0.6, "test_acc": 0.7})
    assert s["std"] == pytest.approx({"val_acc": 0.1, "test_acc": 0.1})
    assert "| mean ± std | | 0.6000 ± 0.1000 | 0.7000 ± 0.1000 |" in cv_table(s)


def test_validation_split_is_stratified_and_disjoint() -> None:
    labels = torch.tensor([0, 1] * 10)
    tr, va = train._validation_split(labels, 0.2, seed=0)
    assert len(va) == 4 and set(tr.tolist()).isdisjoint(va.tolist())
    assert np.bincount(labels[va].numpy()).tolist() == [2, 2]


def test_validation_split_on_tiny_sets() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])  # one validation image cannot hold 3 classes
    tr, va = train._validation_split(labels, 0.1, seed=0)
    assert len(va) == 1 and len(tr) == 6
    with pytest.raises(CamlabError, match="cannot spare"):
        train._validation_split(torch.tensor([0]), 0.5, seed=0)
    with pytest.raises(CamlabError, match="--val_fraction must lie"):
        train._validation_split(labels, 1.0, seed=0)
