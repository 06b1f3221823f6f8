"""visualize.py and the report side of iou.py, end to end on a tiny trained run."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

import dataloader
import iou
import main
import train
import visualize
from camlab import figures
from conftest import write_lab_layout
from research.experiments import Experiment, dataset_cams, localization_report

FAST = ["--img_size", "32", "--weights", "none", "--batch_size", "8", "--quiet", "--epochs", "1"]


@pytest.fixture
def trained(tiny_lab, tmp_path, monkeypatch):
    """A working directory holding one tiny CAM run, checkpoints/tiny/."""
    monkeypatch.chdir(tmp_path)
    assert main.main(["--data_root", str(tiny_lab), "--exp_id", "tiny", *FAST]) == 0
    return tmp_path


def test_overlay_by_hand() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    cam = np.array([[0.0, 0.0], [1.0, 1.0]])
    out = figures.heatmap_overlay(image, cam, alpha=0.5)
    # JET: 0 -> dark blue (0, 0, 128), 1 -> dark red (128, 0, 0), blended half with black
    assert out[0, 0].tolist() == [0, 0, 64] and out[1, 0].tolist() == [64, 0, 0]


def test_visualize_writes_overlays_masks_and_grid(trained, tiny_lab) -> None:
    stems = ["000", "001", "002"]
    for fig_size, side in ((visualize.FIG_SIZE, 224), (0, 16)):  # the report size, then the images' own
        out = visualize.visualize_run("tiny", threshold=0.4, form="class", device="cpu", fig_size=fig_size)
        for stem in stems:
            overlay = cv2.imread(str(out / f"{stem}.png"))
            mask = cv2.imread(str(out / f"{stem}_seg.png"), cv2.IMREAD_GRAYSCALE)
            assert overlay.shape == (side, side, 3) and mask.shape == (side, side)
            assert set(np.unique(mask).tolist()) <= {0, 255} and mask.max() == 255  # the CAM max is kept
        assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"
        settings = json.loads((out / "settings.json").read_text())
        assert settings["threshold"] == 0.4 and settings["images"] == stems and settings["fig_size"] == side


def test_iou_csv_agrees_with_the_mask_files(trained, tiny_lab) -> None:
    visualize.visualize_run("tiny", device="cpu")
    assert iou.main(["--gt_dir", str(tiny_lab / "test_seg"), "--no_full"]) == 0
    rows = list(csv.reader(open(trained / "report" / "iou.csv")))
    assert rows[0] == ["image", "tiny"]
    for stem, value in rows[1:4]:
        pred = cv2.imread(str(trained / "visualize" / "tiny" / f"{stem}_seg.png"), 0)  # 224×224
        gt = cv2.imread(str(tiny_lab / "test_seg" / f"{stem}.png"), 0) > 127  # 16×16: scored at its size
        pred = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_NEAREST) > 127
        assert float(value) == pytest.approx((pred & gt).sum() / (pred | gt).sum(), abs=5e-5)
    assert rows[4][0] == "mean"
    assert float(rows[4][1]) == pytest.approx(np.mean([float(r[1]) for r in rows[1:4]]), abs=1e-4)


def test_another_extractor_gets_its_own_folder_and_column(trained, tiny_lab) -> None:
    """visualize.py --extractor gradcam writes visualize/<exp>_gradcam/ beside visualize/<exp>/,
    whose masks stay; iou.py then tabulates both. On this GAP + linear model Grad-CAM is ReLU(M_c)
    / (h w) and the class form is ReLU(M_c) / max: after min-max normalisation the same map, so
    the same masks."""
    own = visualize.visualize_run("tiny", threshold=0.9, device="cpu")
    before = (own / "000_seg.png").read_bytes()
    other = visualize.visualize_run("tiny", threshold=0.9, device="cpu", extractor="gradcam")
    assert other.name == "tiny_gradcam" and (own / "000_seg.png").read_bytes() == before
    assert json.loads((other / "settings.json").read_text())["extractor"] == "gradcam"
    for stem in ("000", "001", "002"):
        assert np.array_equal(cv2.imread(str(own / f"{stem}_seg.png")), cv2.imread(str(other / f"{stem}_seg.png")))
    assert iou.main(["--gt_dir", str(tiny_lab / "test_seg"), "--no_full"]) == 0
    assert next(csv.reader(open(trained / "report" / "iou.csv"))) == ["image", "tiny", "tiny_gradcam"]


def test_whole_test_report_chooses_threshold_on_training_masks(trained, monkeypatch) -> None:
    seen = []
    real = dataloader.ground_truth
    monkeypatch.setattr(dataloader, "ground_truth",
                        lambda dataset, root, split, data, metadata=None: seen.append((split, len(data)))
                        or real(dataset, root, split, data, metadata))
    report = localization_report("tiny", "class", n_threshold=10, device="cpu")
    # the test masks are read to score, the threshold's on 10 training images
    assert sorted(seen) == [("test", 9), ("train", 10)]
    assert report["n_threshold_images"] == 10 and report["n_test"] == 9
    grid, curve = report["curve"]
    assert report["threshold"] == grid[int(np.argmax(curve))]  # best on training masks...
    assert report["test_iou"] == report["test_curve"][1][int(np.argmax(curve))]  # ...applied to test
    assert 0.0 <= report["test_iou"] <= 1.0


def test_refuses_missing_or_foreign_checkpoints(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert visualize.main(["--exp_id", "nothing"]) == 2
    assert "checkpoints/nothing/best.pth does not exist" in capsys.readouterr().err
    (tmp_path / "checkpoints" / "foreign").mkdir(parents=True)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoints" / "foreign" / "best.pth")
    assert visualize.main(["--exp_id", "foreign"]) == 2
    assert "not written by camlab" in capsys.readouterr().err
    assert visualize.main(["--exp_id", "../x"]) == 2


def test_ablation_trains_compares_and_reuses(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--ablation", "--epochs", "1", "--img_size", "32", "--batch_size", "8", "--weights", "none",
            "--data_root", str(tiny_lab), "--n_threshold", "8", "--device", "cpu"]
    assert iou.main(argv) == 0
    table = (tmp_path / "report" / "ablation.md").read_text()
    runs = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ablation_")]
    assert runs == ["ablation_cam", "ablation_seg_scale", "ablation_seg_rotate", "ablation_seg_hflip",
                    "ablation_seg_rotate_hflip"]
    seg = json.loads((tmp_path / "checkpoints" / "ablation_seg_rotate" / "metrics.json").read_text())
    assert seg["args"]["mode"] == "SEG" and seg["args"]["transform"] == "rotate"
    log = list(csv.DictReader(open(tmp_path / "checkpoints" / "ablation_seg_rotate" / "log.csv")))
    assert float(log[0]["train_ser"]) >= 0.0  # the equivariance term is logged
    capsys.readouterr()
    assert iou.main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 5
    argv[argv.index("--epochs") + 1] = "2"
    assert iou.main(argv) == 2
    assert "other settings (epochs)" in capsys.readouterr().err


def test_an_extractors_maps_are_computed_once_and_agree_with_the_direct_path(trained) -> None:
    """Experiment.cams reads another extractor's maps of the labels once and recomputes only the
    images whose prediction differs; the result equals dataset_cams' direct computation."""
    import dataclasses
    exp = Experiment.load("tiny", "cpu")
    data = exp.split("test")
    data = dataclasses.replace(data, labels=(data.labels + torch.arange(len(data)) % 2) % 3)  # some labels wrong
    for name in ("gradcam", "layercam"):
        for of_labels in (False, True):
            got = exp.cams(data, "class", of_labels=of_labels, extractor=name)
            want = dataset_cams(exp.net, data, 32, "class", of_labels=of_labels, extractor=name)
            assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], atol=1e-6)
    assert set(exp._raw) == {(tuple(data.names), "gradcam"), (tuple(data.names), "layercam")}
    preds, _ = exp.raw_maps(data, "gradcam")
    assert (preds != data.labels.numpy()).any()  # the recomputation was exercised


# ----------------------------------------------------------- report figures (the student's path)
def test_viridis_overlay_by_hand() -> None:
    # matplotlib's viridis: 0 -> #440154, 1 -> #FDE725; alpha 1 shows the colour map alone
    out = figures.heatmap_overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0.0, 1.0]]), alpha=1.0, cmap="viridis")
    assert out.tolist() == [[[68, 1, 84], [253, 231, 37]]]
    with pytest.raises(figures.CamlabError, match="--cmap"):
        figures.heatmap_overlay(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1)), cmap="rainbow")


def test_threshold_takes_a_share_or_the_skeleton_preset() -> None:
    assert visualize.threshold_arg("0.3") == 0.3 and visualize.threshold_arg("skeleton") == "skeleton"
    for bad in ("1.5", "half"):
        with pytest.raises(visualize.argparse.ArgumentTypeError):
            visualize.threshold_arg(bad)


def test_default_form_is_the_one_the_run_was_trained_with() -> None:
    assert visualize.trained_form(train.RunConfig(mode="SEG", cam="lab")) == "lab"
    assert visualize.trained_form(train.RunConfig(mode="SEG", cam="class")) == "class"
    assert visualize.trained_form(train.RunConfig(mode="CAM", cam="lab")) == "class"  # CAM reads no --cam


def test_captions_name_the_true_and_predicted_class_and_mark_a_wrong_one() -> None:
    right = {"true": "bird", "pred": "bird (0.91)", "wrong": False}
    wrong = {"true": "bird", "pred": "cat (0.59)", "wrong": True}
    assert visualize._caption("00002", right) == "00002\ntrue bird\npred bird (0.91)"
    assert visualize._caption("00002", wrong) == "00002\ntrue bird\npred cat (0.59) ✗"
    assert visualize._caption("x", {"true": None, "pred": "cat (0.59)", "wrong": False}) == "x\npred cat (0.59)"


def test_a_folder_without_meta_json_and_ten_classes_has_cifars_names(tmp_path) -> None:
    assert dataloader._lab_classes(tmp_path / "meta.json", None)[2] == "bird"
    assert dataloader._lab_classes(tmp_path / "meta.json", 3) == ["0", "1", "2"]


def test_skeleton_preset_renders_as_the_skeleton(trained, tiny_lab) -> None:
    out = visualize.visualize_run("tiny", threshold="skeleton", form="lab", device="cpu", fig_size=0)
    run = train.load_run("tiny", "cpu")
    _, images = visualize._source_images(tiny_lab)
    inputs = dataloader.to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2), run.cfg.img_size)
    with torch.no_grad():
        _, features, gap = run.net(inputs)
    for i, stem in enumerate(["000", "001", "002"]):
        w = gap[i].softmax(dim=0)  # the skeleton's returnCAM, written out
        cam = (w[:, None, None] * features[i]).sum(0).numpy()
        cam = cam - cam.min()
        skel = cv2.resize(np.uint8(255 * (cam / cam.max())), (224, 224))
        _, expected = cv2.threshold(skel, 175, 255, cv2.THRESH_BINARY)
        assert np.array_equal(cv2.imread(str(out / f"{stem}_seg.png"), 0), expected)  # 224 whatever --fig_size
    assert json.loads((out / "settings.json").read_text())["threshold"] == "skeleton"


def test_compare_draws_each_run_and_refuses_mixed_data(trained, tiny_lab, tmp_path, capsys) -> None:
    assert main.main(["--data_root", str(tiny_lab), "--exp_id", "tiny_seg", "--mode", "SEG", *FAST]) == 0
    assert visualize.main(["--compare", "tiny", "tiny_seg", "--device", "cpu", "--fig_format", "pdf"]) == 0
    path = trained / "report" / "compare_tiny_tiny_seg.pdf"
    assert "report/compare_tiny_tiny_seg.pdf" in capsys.readouterr().out and path.read_bytes()[:4] == b"%PDF"
    other = write_lab_layout(tmp_path / "other", seed=1)
    assert main.main(["--data_root", str(other), "--exp_id", "elsewhere", *FAST]) == 0
    assert visualize.main(["--compare", "tiny", "elsewhere", "--device", "cpu"]) == 2
    assert "read different data" in capsys.readouterr().err
    # iou.py over both: refused with the roots and their runs named; --runs scores the chosen one
    for exp_id in ("tiny", "elsewhere"):
        assert visualize.main(["--exp_id", exp_id, "--device", "cpu", "--threshold", "0.3"]) == 0
    capsys.readouterr()
    assert iou.main(["--no_full"]) == 2
    err = capsys.readouterr().err
    assert f"{tiny_lab}: tiny" in err and f"{other}: elsewhere" in err and "--runs" in err
    assert iou.main(["--no_full", "--runs", "tiny"]) == 0
    rows = list(csv.reader(open(trained / "report" / "iou.csv")))
    assert rows[0] == ["image", "tiny"]
    md = (trained / "report" / "iou.md").read_text()
    assert "| tiny | class | cam | 0.3 | 224 | checkpoints/tiny/best.pth |" in md  # how the masks were made
    assert iou.main(["--no_full", "--runs", "nothere"]) == 2
    assert "--runs nothere: no masks in visualize/nothere/" in capsys.readouterr().err
