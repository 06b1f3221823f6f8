"""The multi-label setting: the multi-object scenes, BCE training, OC-CSE as published."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dataloader
import main
import model
import train
from camlab import crf
from camlab import synthetic as gen
from camlab.cams import minmax, target_map
from camlab.images import ImageSet
from camlab.meters import EpochMeter, mean_average_precision
from camlab.methods import CseObjective, Step, classification_loss, sample_target
from camlab.metrics import THRESHOLD_GRID
from camlab.transforms import EquivarianceTransform, TransformSettings

K = len(gen.PART_STYLES)


# ------------------------------------------------------------------------------- the scenes
def test_a_scene_is_a_function_of_its_generator_state() -> None:
    a, b = gen.draw_scene(np.random.default_rng(7)), gen.draw_scene(np.random.default_rng(7))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.classes, b.classes) and a.order == b.order


def test_masks_and_labels_agree_with_what_was_drawn() -> None:
    counts = np.zeros(gen.MULTI_MAX_OBJECTS + 1, int)
    for i in range(60):
        scene = gen.draw_scene(gen._scene_rng(0, "train", i), size=48)
        order = list(scene.order)
        assert 1 <= len(order) <= gen.MULTI_MAX_OBJECTS and len(set(order)) == len(order)
        counts[len(order)] += 1
        # the labels are exactly the classes drawn, and each is visible
        assert set(np.flatnonzero(scene.present)) == set(order)
        assert set(np.unique(scene.classes)) == {0, *(c + 1 for c in order)}
        # the visible part pixels are object pixels, and each class's part shows its own colour
        assert not (scene.parts & (scene.classes == 0)).any()
        for c in order:
            part = scene.parts & (scene.classes == c + 1)
            assert part.sum() > 0
            colour = scene.image[part].astype(float).mean(axis=0)
            assert np.abs(colour - gen.PART_STYLES[c].rgb).max() < 25  # jitter ±20 plus averaged noise
    assert (counts[1:] > 0).all()  # one, two and three objects all occur


def test_a_farther_object_keeps_half_its_pixels_and_part() -> None:
    """_visible_enough is what placement enforces: check it against a hand-made occlusion."""
    body = np.zeros((10, 10), bool)
    body[0:4, 0:4] = True  # 16 px
    part = np.zeros((10, 10), bool)
    part[4, 0:2] = True  # 2 px
    near = np.zeros((10, 10), bool)
    near[0:4, 0:2] = True  # covers 8 of the 18 px, no part pixel
    assert gen._visible_enough([(body, part), (near, np.zeros_like(near))], 0)
    near[0:4, 0:3] = True  # covers 12 of 18: fewer than half left
    assert not gen._visible_enough([(body, part), (near, np.zeros_like(near))], 0)
    cover_part = np.zeros((10, 10), bool)
    cover_part[4, 0:2] = True  # the whole part hidden, the body untouched
    assert not gen._visible_enough([(body, part), (cover_part, np.zeros_like(near))], 0)


def test_the_set_is_deterministic_and_reads_alike_as_multi_and_as_voc(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        gen.generate_multi(root, n_train=6, n_val=4, size=32, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    read = {ds: dataloader.load_split(ds, a, "val", cache_dir=None, progress=False) for ds in ("multi", "voc")}
    assert torch.equal(read["multi"].images, read["voc"].images)
    assert torch.equal(read["multi"].present, read["voc"].present)
    assert read["multi"].classes == gen.SYNTHETIC_CLASSES
    truth = dataloader.ground_truth("multi", a, "val", read["multi"])
    for i in range(4):
        scene = gen.draw_scene(gen._scene_rng(0, "val", i), 32)
        assert np.array_equal(read["multi"].images[i].permute(1, 2, 0).numpy(), scene.image)
        assert np.array_equal(read["multi"].present[i].numpy(), scene.present)
        assert np.array_equal(truth.classes[i], scene.classes)
        pixels = np.bincount(scene.classes.ravel(), minlength=K + 1)[1:]
        assert read["multi"].labels[i] == pixels.argmax()  # the single label: the largest class
        assert np.array_equal(truth.masks[i], (scene.classes == pixels.argmax() + 1).astype(np.uint8))


def test_the_default_roots() -> None:
    assert dataloader.default_root("multi") == Path("data/synthetic_multi")
    assert dataloader.default_root("multi", 1.0) == Path("data/synthetic_multi_be1")
    assert dataloader.split_for("multi", "fit") == "train" and dataloader.split_for("multi", "test") == "val"


# ------------------------------------------------------------------------- BCE and metrics
def test_bce_is_the_mean_over_images_and_classes() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    hand = -(math.log(sig(0)) + math.log(1 - sig(2)) + math.log(1 - sig(-1)) + math.log(sig(3))) / 4
    assert classification_loss(logits, labels).item() == pytest.approx(hand, rel=1e-6)
    assert classification_loss(logits, torch.tensor([1, 1])).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1, 1])).item())


def test_the_multi_label_meter_by_hand() -> None:
    meter = EpochMeter()
    scores = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.2], [1.0, 1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    meter.update(Step(torch.tensor(0.5), scores, {}), labels)
    out = meter.compute()
    # predicted sets {0,2}, {1}, {0,1}: one exact match; tp 4, fp 1, fn 1
    assert out["acc"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    # AP per class: class 0 positives {0, 2} (scores 2, 1) rank first: 1; class 1 positive {1}
    # (score 1) ties with image 2's 1 -> precision 1/2 at its recall: 0.5; class 2 positives
    # {0, 1} (0.5, -0.2) above the negative (-1): 1
    assert out["map"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert mean_average_precision(scores.numpy(), np.zeros((3, 3))) != mean_average_precision(
        scores.numpy(), labels.numpy())


def _scene_set(n: int = 24, size: int = 32) -> ImageSet:
    scenes = [gen.draw_scene(gen._scene_rng(3, "train", i), size) for i in range(n)]
    return ImageSet(torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous(),
                               torch.tensor([int(np.bincount(s.classes.ravel(), minlength=K + 1)[1:].argmax())
                                             for s in scenes]),
                               [f"{i}.png" for i in range(n)], list(gen.SYNTHETIC_CLASSES),
                               present=torch.from_numpy(np.stack([s.present for s in scenes])))


def test_bce_training_lowers_the_loss_on_a_tiny_set() -> None:
    torch.manual_seed(0)
    data = _scene_set()
    net = model.CAMModel(num_classes=K, weights="none")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    idx = torch.arange(len(data))
    common = dict(objective=train.cam_objective, img_size=32, batch_size=8, progress=False, multi_label=True)
    before = train.run_epoch(net, data, idx, **common)
    for epoch in range(5):
        train.run_epoch(net, data, idx, optimizer=opt, epoch=epoch, **common)
    after = train.run_epoch(net, data, idx, **common)
    assert after["loss"] < 0.8 * before["loss"]
    assert set(after) == {"loss", "ce", "acc", "f1", "map"}


# ---------------------------------------------------------------------------------- OC-CSE
def test_the_target_is_the_kth_present_class() -> None:
    labels = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 1, 1, 0]]).float()
    g = torch.Generator().manual_seed(5)
    u = torch.rand(3, generator=torch.Generator().manual_seed(5))
    ranks = (u * torch.tensor([3, 1, 2])).long().tolist()
    hand = [[1, 3, 4][ranks[0]], 0, [2, 3][ranks[2]]]
    assert sample_target(labels, g).tolist() == hand


def test_targets_are_present_and_uniform_among_them() -> None:
    labels = torch.tensor([[0, 1, 0, 1, 1]]).float().repeat(3000, 1)
    targets = sample_target(labels, torch.Generator().manual_seed(0))
    counts = np.bincount(targets.numpy(), minlength=5)
    assert counts[[0, 2]].sum() == 0
    assert np.abs(counts[[1, 3, 4]] - 1000).max() < 90  # ~3.3 standard deviations


def _bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()


def test_both_oc_cse_terms_by_hand() -> None:
    torch.manual_seed(0)
    net, oc = model.CAMModel(num_classes=4, weights="none"), model.CAMModel(num_classes=4, weights="none")
    net.eval()  # BatchNorm in eval mode: the objective's forward and the hand one see the same statistics
    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]]).float()
    objective = CseObjective(oc, erase_weight=0.3, erase_growth=0.05)
    step = objective(net, images, labels, torch.Generator().manual_seed(2), epoch=3)

    target = sample_target(labels, torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores, features, _ = net(images)
        # the reference's mask (KAIST-vilab/OC-CSE models/model_cse.py): the raw map upsampled
        # bilinearly, then ReLU, then divided by ONE max over the batch plus 1e-5
        raw = net.class_cams(features)[torch.arange(3), target]
        mask = F.interpolate(raw[:, None], size=(32, 32), mode="bilinear", align_corners=False).relu()
        mask = mask / (mask.max() + 1e-5)
        erased_scores = oc(images * (1 - mask))[0]
    assert mask.flatten(1).amax(1).min() < 0.999 and mask.max() == pytest.approx(1, abs=1e-4)
    remain = labels.clone()
    remain[torch.arange(3), target] = 0  # the target must go, the other present classes stay
    assert (remain.sum(1) == labels.sum(1) - 1).all()
    ce, erase = _bce(scores, labels), _bce(erased_scores, remain)
    assert step.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert step.terms["erase"].item() == pytest.approx(erase.item(), rel=1e-5)
    assert step.loss.item() == pytest.approx((ce + (0.3 + 0.05 * 2) * erase).item(), rel=1e-5)
    step.loss.backward()
    assert all(p.grad is None for p in oc.parameters())  # the ordinary classifier stays frozen
    assert net.heads[0].weight.grad is not None


# --------------------------------------------------------- one present class = one label
def test_seg_with_one_present_class_equals_the_single_label_loss() -> None:
    torch.manual_seed(0)
    net = model.CAMModel(num_classes=4, weights="none").eval()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([2, 0])
    objective = train.SegObjective(EquivarianceTransform("rotate+hflip", TransformSettings()), "class")
    single = objective(net, images, labels, torch.Generator().manual_seed(1))
    multi = objective(net, images, F.one_hot(labels, 4).float(), torch.Generator().manual_seed(1))
    assert multi.terms["ser"].item() == pytest.approx(single.terms["ser"].item(), rel=1e-5)


def test_acol_erases_by_the_present_classes_maps() -> None:
    cams = torch.rand(2, 3, 4, 4)
    one = target_map(cams, torch.tensor([1, 2]))
    assert torch.allclose(target_map(cams, F.one_hot(torch.tensor([1, 2]), 3).float()), one)
    both = target_map(cams, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    each = [minmax(cams[:, k]) for k in range(3)]
    assert torch.allclose(both[0], torch.maximum(each[0][0], each[2][0]))
    assert torch.allclose(both[1], torch.maximum(each[1][1], each[2][1]))
    net = model.CAMModel(num_classes=3, weights="none").eval()
    features = torch.randn(2, 128, 4, 4)  # ResNet-18's layer2
    assert torch.equal(net.every_class_cam(features, torch.ones(2, 3)), net.class_cams(features))


# ------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("argv, says", [
    (["--multi_label"], "--multi_label needs a dataset"),
    (["--dataset", "multi", "--multi_label", "--mode", "ACOL", "--recipe", "pn"], "'n' head's loss is single-label"),
    (["--dataset", "cifar10", "--body_evidence", "0.5"], "--body_evidence sets an embedded benchmark"),
])
def test_multi_label_flags_fail_in_one_line(argv, says, capsys) -> None:
    assert main.main(argv + ["--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


# ------------------------------------------------------------------------ the semseg report
def test_semseg_report_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    import csv

    import iou
    monkeypatch.chdir(tmp_path)
    gen.generate_multi(tmp_path / "m", n_train=24, n_val=8, size=32, progress=False)
    common = ["--dataset", "multi", "--data_root", "m", "--img_size", "32", "--epochs", "1", "--weights", "none",
              "--quiet", "--batch_size", "8"]
    assert main.main(common + ["--multi_label", "--exp_id", "ml"]) == 0
    assert main.main(common + ["--exp_id", "sl"]) == 0
    metrics = __import__("json").loads((tmp_path / "checkpoints/ml/metrics.json").read_text())
    assert {"test_map", "test_f1"} <= set(metrics) and metrics["best_val_by"] == "mAP"
    assert iou.main(["--semseg", "--crf", "--runs", "ml", "--n_threshold", "10", "--no_msf"]) == 0
    one_scale = (tmp_path / "report/semseg.csv").read_text().splitlines()
    # --scores reuse: the run's reports at that scale kept once, then read, not scored again
    assert iou.main(["--semseg", "--crf", "--runs", "ml", "--n_threshold", "10", "--no_msf", "--scores", "reuse"]) == 0
    assert [p.name.split("-")[0] for p in (tmp_path / "report/scores/ml").iterdir()] == ["semseg_1scale"]
    from research import comparisons

    def refuse(*args, **kwargs):
        raise AssertionError("scored again")
    with monkeypatch.context() as m:
        m.setattr(comparisons, "semseg_variants", refuse)
        assert iou.main(["--semseg", "--crf", "--runs", "ml", "--n_threshold", "10", "--no_msf", "--scores",
                         "reuse"]) == 0
    assert (tmp_path / "report/semseg.csv").read_text().splitlines() == one_scale
    # both scales at once: the one-scale table is the --no_msf one, and what each adds is paired per run
    assert iou.main(["--semseg", "--crf", "--runs", "ml", "sl", "--n_threshold", "10", "--both_scales"]) == 0
    both = (tmp_path / "report/semseg_1scale.csv").read_text().splitlines()
    assert len(one_scale) == 4 and both[:4] == one_scale and len(both) == 7  # header, ml's 3 rows; then sl's
    assert one_scale != (tmp_path / "report/semseg.csv").read_text().splitlines()[:4]
    scales = (tmp_path / "report/semseg_msf.md").read_text()
    assert sum(line.startswith("| CAM (") for line in scales.splitlines()) == 6  # 2 runs × 3 CRF settings
    assert (tmp_path / "report/semseg_msf.png").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "report/semseg.csv").open()))
    assert [(r["experiment"], r["crf"]) for r in rows] == [(e, c) for e in ("ml", "sl")
                                                           for c in ("none", "affinitynet", "scaled")]
    for r in rows:
        ious = [float(v) for k, v in r.items() if k.startswith("iou_") and v != "-"]
        assert float(r["miou"]) == pytest.approx(np.mean(ious), abs=2e-4)  # mIoU: the mean over the classes that occur
        grid = THRESHOLD_GRID if r["crf"] == "none" else crf.background_grid(r["crf"])  # α for (1 - max)^α
        assert float(r["threshold"]) in grid
    md = (tmp_path / "report/semseg.md").read_text()
    assert "CAM (multi-label)" in md and "CAM (single-label)" in md and "IoU per class" in md and "Where the errors are" in md
    assert (tmp_path / "report/semseg.png").stat().st_size > 0
    # each run's interval with CRF against itself without, drawn per row (no CAM to compare a CAM with)
    from research.semseg import interval_rows
    assert (tmp_path / "report/semseg_intervals.png").stat().st_size > 0
    assert interval_rows([]) == {}
    capsys.readouterr()
    # a run without class masks cannot be scored; --crf alone is a mistake
    write_lab = __import__("conftest").write_lab_layout
    write_lab(tmp_path / "lab")
    assert main.main(["--data_root", "lab", "--img_size", "16", "--epochs", "1", "--weights", "none", "--quiet",
                      "--exp_id", "lab"]) == 0
    capsys.readouterr()
    assert iou.main(["--semseg", "--runs", "ml", "--both_scales", "--no_msf"]) == 2
    assert "--both_scales scores every run" in capsys.readouterr().err
    assert iou.main(["--semseg", "--runs", "lab"]) == 2
    assert "no class masks" in capsys.readouterr().err
    for flag in ("--crf", "--no_msf", "--both_scales"):
        with pytest.raises(SystemExit) as stop:
            iou.main([flag])
        assert stop.value.code == 2 and f"{flag} applies to --semseg" in capsys.readouterr().err
