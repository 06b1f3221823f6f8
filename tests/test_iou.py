"""IoU metric on hand-computed masks, CAM thresholding, mask files and the IoU report."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import iou as iou_mod
from camlab.cams import minmax
from camlab.figures import plot_iou_curves
from camlab.images import read_mask_dir
from camlab.metrics import choose_threshold, iou_curve, threshold_masks
from camlab.utils import CamlabError
from iou import experiment_table, format_table, iou, iou_table, write_report

T, F = True, False


def cols(width: int, *on: int, height: int = 2) -> np.ndarray:
    """bool height×width mask with the listed columns set."""
    mask = np.zeros((height, width), bool)
    mask[:, list(on)] = True
    return mask


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


# ----------------------------------------------------------------------------- iou()
def test_identical_masks() -> None:
    assert iou(cols(4, 0, 2), cols(4, 0, 2)) == 1.0


def test_disjoint_masks() -> None:
    assert iou(cols(4, 0, 1), cols(4, 2, 3)) == 0.0


def test_left_half_of_everything() -> None:
    # |P ∩ G| = 4, |P ∪ G| = 8
    assert iou(cols(4, 0, 1), cols(4, 0, 1, 2, 3)) == 0.5


def test_shifted_overlap() -> None:
    # P = cols 0-1, G = cols 1-2: intersection col 1 (2 px), union cols 0-2 (6 px)
    assert iou(cols(4, 0, 1), cols(4, 1, 2)) == pytest.approx(1 / 3, abs=1e-12)


def test_both_empty_is_perfect() -> None:
    assert iou(cols(4), cols(4)) == 1.0


def test_one_empty_is_zero() -> None:
    assert iou(cols(4), cols(4, 1)) == 0.0
    assert iou(cols(4, 1), cols(4)) == 0.0


def test_pred_resized_to_gt_by_nearest() -> None:
    # The 2×2 pred's top-left pixel becomes the top-left 2×2 block (4 px) of a 4×4 mask.
    pred = np.array([[T, F], [F, F]])
    gt = np.zeros((4, 4), bool)
    gt[:3, :3] = True  # 9 px, containing the block: IoU = 4 / 9
    assert iou(pred, gt) == pytest.approx(4 / 9, abs=1e-12)
    diagonal = np.kron(np.eye(2, dtype=int), np.ones((2, 2), int)).astype(bool)
    assert iou(np.array([[T, F], [F, T]]), diagonal) == 1.0


def test_uint8_0_255_gt_agrees_with_bool() -> None:
    pred, gt = cols(4, 0, 1), cols(4, 1, 2)
    assert iou(pred, gt.astype(np.uint8) * 255) == iou(pred, gt)
    # foreground is > 127: 128 counts, 127 does not
    assert iou(cols(4, 0), np.array([[128, 127, 0, 0]] * 2, np.uint8)) == 1.0


def test_iou_refuses_wrong_shapes_and_dtypes() -> None:
    with pytest.raises(CamlabError, match="H×W"):
        iou(np.zeros((1, 2, 2), bool), np.zeros((2, 2), bool))
    with pytest.raises(CamlabError, match="float64"):
        iou(np.zeros((2, 2)), np.zeros((2, 2), bool))


# -------------------------------------------------------------- normalising, thresholding
def test_minmax_hand_values_and_constant_map() -> None:
    cams = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = minmax(cams)
    assert torch.equal(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))  # each map on its own
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map: zeros, not NaN


def test_threshold_boundary_counts_as_foreground() -> None:
    cams = np.array([[0.25, 0.5], [0.75, 1.0]])
    np.testing.assert_array_equal(threshold_masks(cams, 0.5), [[F, T], [T, T]])
    np.testing.assert_array_equal(threshold_masks(cams, 1.0), [[F, F], [F, T]])


def test_threshold_refuses_unnormalised_cams() -> None:
    with pytest.raises(CamlabError, match=r"must lie in \[0, 1\] \(min-max normalise them first\), found values "
                                          r"from 0 to 2$"):
        threshold_masks(np.array([[0.0, 2.0]]), 0.5)
    with pytest.raises(CamlabError, match="hold NaN"):
        threshold_masks(np.array([[0.0, np.nan]]), 0.5)


# ------------------------------------------------------------- iou_curve, choose_threshold
# Two 1×4 images. At 0.25: masks 0111 and 0111 -> 2/3 each; at 0.5: 0011 and 0110 -> exact (1);
# at 0.75: 0001 and 0010 -> 1/2 each.
CAMS = np.array([[[0.1, 0.4, 0.6, 0.9]], [[0.2, 0.7, 0.8, 0.3]]])
GTS = np.array([[[F, F, T, T]], [[F, T, T, F]]])


def test_iou_curve_hand_case() -> None:
    curve = iou_curve(CAMS, GTS, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(curve, [2 / 3, 1.0, 1 / 2], rtol=0, atol=1e-12)


def test_choose_threshold_hand_case() -> None:
    assert choose_threshold(CAMS, GTS, np.array([0.25, 0.5, 0.75])) == (0.5, 1.0)
    # On the default grid 0.45 .. 0.60 all give 1.0; ties go to the lowest threshold.
    assert choose_threshold(CAMS, GTS) == (0.45, 1.0)


def test_iou_curve_resizes_cams_bilinearly() -> None:
    # A 2×2 cam [[0, 1], [0, 1]] upscaled to 4×4 (cv2 half-pixel centres): rows 0, .25, .75, 1.
    cams = np.array([[[0.0, 1.0], [0.0, 1.0]]])
    gt = np.zeros((1, 4, 4), bool)
    gt[:, :, 2:] = True
    # 0.2 -> cols 1-3 (8/12); 0.5 -> cols 2-3 (1); 0.9 -> col 3 (4/8)
    curve = iou_curve(cams, gt, [0.2, 0.5, 0.9])
    np.testing.assert_allclose(curve, [2 / 3, 1.0, 0.5], rtol=0, atol=1e-12)


def test_iou_curve_refuses_mismatched_counts() -> None:
    with pytest.raises(CamlabError, match="2 CAMs, 1 masks"):
        iou_curve(CAMS, GTS[:1], [0.5])


# ---------------------------------------------------------------------------- mask files
def test_read_mask_dir_accepts_0_255_and_0_1(tmp_path: Path) -> None:
    pattern = np.array([[0, 1], [1, 0]], np.uint8)
    write_png(tmp_path / "a.png", pattern * 255)
    write_png(tmp_path / "b.png", pattern)
    write_png(tmp_path / "c.bmp", pattern * 255)
    (tmp_path / "notes.txt").write_text("not a mask")
    masks = read_mask_dir(tmp_path)
    assert list(masks) == ["a", "b", "c"]
    for mask in masks.values():
        assert mask.dtype == np.bool_
        np.testing.assert_array_equal(mask, pattern.astype(bool))


@pytest.mark.parametrize("values, bad", [((0, 128), "the value 128"), ((0, 1, 255), "both 1 and 255"),
                                         ((0, 1, 7, 255), "the value 7")])
def test_non_binary_mask_is_named(tmp_path: Path, values: tuple[int, ...], bad: str) -> None:
    write_png(tmp_path / "good.png", np.array([[0, 255]], np.uint8))
    write_png(tmp_path / "bad.png", np.array([values], np.uint8))
    with pytest.raises(CamlabError, match=rf"bad\.png is not binary: it holds {bad}"):
        read_mask_dir(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_unreadable_mask_is_named(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "broken.png").write_bytes(content)
    with pytest.raises(CamlabError, match=r"cannot read mask .*broken\.png") as info:
        read_mask_dir(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_mask_dir_and_duplicate_stems(tmp_path: Path) -> None:
    with pytest.raises(CamlabError, match="nowhere does not exist"):
        read_mask_dir(tmp_path / "nowhere")
    write_png(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    write_png(tmp_path / "a.bmp", np.zeros((2, 2), np.uint8))
    with pytest.raises(CamlabError, match="two masks named 'a'"):
        read_mask_dir(tmp_path)


def test_iou_table_names_missing_prediction(tmp_path: Path) -> None:
    for stem in ("a", "b"):
        write_png(tmp_path / "gt" / f"{stem}.png", np.array([[0, 255]], np.uint8))
    write_png(tmp_path / "pred" / "a_seg.png", np.array([[0, 255]], np.uint8))
    with pytest.raises(CamlabError, match=r"no predicted mask .*b_seg\.png"):
        iou_table(tmp_path / "pred", tmp_path / "gt")


def test_iou_table_ignores_extra_files(tmp_path: Path) -> None:
    write_png(tmp_path / "gt" / "a.png", np.array([[0, 255, 255, 0]], np.uint8))
    write_png(tmp_path / "pred" / "a_seg.png", np.array([[0, 255, 0, 0]], np.uint8))
    write_png(tmp_path / "pred" / "a_cam.png", np.full((1, 4, 3), 77, np.uint8))  # an overlay
    write_png(tmp_path / "pred" / "z_seg.png", np.array([[255]], np.uint8))  # not in gt
    assert iou_table(tmp_path / "pred", tmp_path / "gt") == {"a": 0.5}


# ---------------------------------------------------------------------------------- report
def test_format_table_exact_text() -> None:
    csv_text, md = format_table(["a", "b"], ["cam", "seg"], np.array([[0.5, 1.0], [0.25, 1 / 3]]))
    assert csv_text == "image,cam,seg\na,0.5000,1.0000\nb,0.2500,0.3333\nmean,0.3750,0.6667\n"
    assert md == ("| image | cam | seg |\n| --- | ---: | ---: |\n| a | 0.5000 | 1.0000 |\n"
                  "| b | 0.2500 | 0.3333 |\n| mean | 0.3750 | 0.6667 |\n")


def test_format_table_refuses_wrong_shape() -> None:
    with pytest.raises(CamlabError, match="does not match 2 images × 1"):
        format_table(["a", "b"], ["cam"], np.zeros((2, 2)))


def make_experiments(root: Path, seed: int = 0) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """gt/ with 3 random 8×8 masks; visualize/{full,half}/ predictions (half: 4×4, upscaled by
    nearest = np.repeat by 2), plus distractors. Returns exp -> stem -> (pred at gt size, gt)."""
    rng = np.random.default_rng(seed)
    stems = ["img0", "img1", "img2"]
    gts = {s: rng.random((8, 8)) < 0.4 for s in stems}
    for s, g in gts.items():
        write_png(root / "gt" / f"{s}.png", g.astype(np.uint8) * 255)
    pairs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"full": {}, "half": {}}
    for s, g in gts.items():
        full, half = rng.random((8, 8)) < 0.5, rng.random((4, 4)) < 0.5
        write_png(root / "visualize" / "full" / f"{s}_seg.png", full.astype(np.uint8) * 255)
        write_png(root / "visualize" / "half" / f"{s}_seg.png", half.astype(np.uint8))  # 0/1 coding
        pairs["full"][s] = (full, g)
        pairs["half"][s] = (half.repeat(2, axis=0).repeat(2, axis=1), g)
    write_png(root / "visualize" / "cam_only" / "img0_cam.png", np.zeros((8, 8, 3), np.uint8))
    (root / "visualize" / "stray.txt").write_text("a file, not an experiment")
    return pairs


def test_report_numbers_match_independent_computation(tmp_path: Path) -> None:
    pairs = make_experiments(tmp_path)
    stems, experiments, matrix = experiment_table(tmp_path / "visualize", tmp_path / "gt")
    assert stems == ["img0", "img1", "img2"] and experiments == ["full", "half"]  # cam_only skipped
    write_report(stems, experiments, matrix, tmp_path / "report")
    rows = list(csv.reader((tmp_path / "report" / "iou.csv").read_text().splitlines()))
    assert rows[0] == ["image", "full", "half"]
    assert [r[0] for r in rows[1:]] == ["img0", "img1", "img2", "mean"]
    for j, exp in enumerate(experiments, start=1):
        plain = [np.sum(p & g) / np.sum(p | g) for p, g in (pairs[exp][s] for s in stems)]
        written = [float(r[j]) for r in rows[1:]]
        np.testing.assert_allclose(written, [*plain, np.mean(plain)], rtol=0, atol=5e-5)
    md = (tmp_path / "report" / "iou.md").read_text()
    assert md.startswith("| image | full | half |") and md.count("\n") == 6
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_experiment_table_without_experiments(tmp_path: Path) -> None:
    write_png(tmp_path / "visualize" / "cam_only" / "a_cam.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(CamlabError, match=r"no experiment folder with \*_seg\.png"):
        experiment_table(tmp_path / "visualize", tmp_path / "gt")
    with pytest.raises(CamlabError, match="run visualize.py first"):
        experiment_table(tmp_path / "missing", tmp_path / "gt")


def test_main_prints_and_writes_report(tmp_path: Path, monkeypatch, capsys) -> None:
    make_experiments(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert iou_mod.main(["--gt_dir", "gt"]) == 0
    out = capsys.readouterr().out
    assert out == (tmp_path / "report" / "iou.md").read_text()
    assert (tmp_path / "report" / "iou.csv").is_file()


def test_main_error_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    make_experiments(tmp_path)
    (tmp_path / "visualize" / "full" / "img1_seg.png").unlink()
    monkeypatch.chdir(tmp_path)
    assert iou_mod.main(["--gt_dir", "gt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "img1_seg.png" in err


# ------------------------------------------------------------------------------------ plot
def test_plot_writes_png(tmp_path: Path) -> None:
    thresholds = np.array([0.25, 0.5, 0.75])
    curves = {"cam": (thresholds, np.array([0.3, 0.6, 0.4])), "seg": (thresholds, np.array([0.5, 0.7, 0.2]))}
    path = tmp_path / "plots" / "iou_curve.png"
    plot_iou_curves(curves, path, chosen={"cam": 0.5, "seg": 0.5})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["iou_curve.png"]  # no temporary file left


def test_ablation_table_says_when_no_training_masks_chose_the_threshold() -> None:
    import train
    rows = [{"run": "ablation_cam", "mode": "CAM", "transform": "-", "test_acc": 0.5, "weights": "random init",
             "ten": 0.25, "full": None}]
    text = iou_mod.ablation_table(rows, train.RunConfig(), "class", 0.15)
    assert "Shared threshold 0.15: the default, since this data has no training masks" in text
    assert "| ablation_cam | CAM | - | 0.5000 | 0.2500 | - | - | - |" in text
    rows[0]["full"] = {"shared_iou": 0.3, "test_iou": 0.31, "threshold": 0.2}
    assert "the CAM run's best on training masks" in iou_mod.ablation_table(rows, train.RunConfig(), "class", 0.2)
