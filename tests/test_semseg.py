"""Semantic segmentation scoring (the VOC protocol): the confusion matrix with the ignore label,
per-class IoU and mIoU, label maps by a background threshold, and the threshold's choice; every
expected value is worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

import iou
from camlab import crf, figures
from camlab.metrics import (
    class_ious,
    confusion_matrix,
    image_confusions,
    label_maps,
    mean_iou,
    miou_statistic,
    paired_bootstrap,
)
from camlab.utils import CamlabError
from research.semseg import error_shares

# two 2×3 images, labels 0 (background), 1, 2; 255 = ignore
GT = np.array([[[0, 1, 1], [0, 255, 2]],
               [[2, 2, 0], [255, 0, 0]]])
PRED = np.array([[[0, 1, 0], [1, 2, 2]],
                 [[2, 1, 0], [0, 0, 1]]])


def test_confusion_matrix_counts_by_hand_and_skips_ignored_pixels() -> None:
    # counted pixels (gt, pred): image 1: (0,0) (1,1) (1,0) (0,1) (2,2); image 2: (2,2) (2,1) (0,0) (0,0) (0,1)
    # the two 255 pixels (predicted 2 and 0) count nowhere
    expected = np.array([[3, 2, 0],
                         [1, 1, 0],
                         [0, 1, 2]])
    found = confusion_matrix(PRED, GT, 3)
    assert found.dtype == np.int64 and found.tolist() == expected.tolist()
    assert found.sum() == 10  # 12 pixels minus 2 ignored


def test_class_ious_and_miou_by_hand() -> None:
    confusion = confusion_matrix(PRED, GT, 3)
    # background: TP 3, row 5, column 4 -> 3 / (5 + 4 - 3) = 1/2
    # class 1:    TP 1, row 2, column 4 -> 1 / 5
    # class 2:    TP 2, row 3, column 2 -> 2 / 3
    assert class_ious(confusion).tolist() == pytest.approx([1 / 2, 1 / 5, 2 / 3])
    assert mean_iou(confusion) == pytest.approx((1 / 2 + 1 / 5 + 2 / 3) / 3)
    # a class neither present nor predicted is NaN and left out of the mean
    four = confusion_matrix(PRED, GT, 4)
    assert np.isnan(class_ious(four)[3]) and mean_iou(four) == pytest.approx(mean_iou(confusion))


def test_out_of_range_labels_and_all_ignored_are_errors() -> None:
    with pytest.raises(CamlabError, match="predicted label 3 is outside"):
        confusion_matrix(np.full((1, 2, 2), 3), np.zeros((1, 2, 2), int), 3)
    with pytest.raises(CamlabError, match="ground-truth label 7"):
        confusion_matrix(np.zeros((1, 2, 2), int), np.full((1, 2, 2), 7), 3)
    with pytest.raises(CamlabError, match="no pixel was counted"):
        mean_iou(confusion_matrix(np.zeros((1, 2, 2), int), np.full((1, 2, 2), 255), 3))


def test_label_maps_take_the_background_threshold_and_present_classes_only() -> None:
    # one image, K = 2 classes, 1×4 pixels
    cams = np.array([[[[0.9, 0.2, 0.5, 0.6]],     # class 0 (label 1)
                      [[0.1, 0.8, 0.5, 0.95]]]])  # class 1 (label 2)
    both = np.array([[True, True]])
    # threshold 0.5: pixel 0 -> class 0 (0.9); 1 -> class 1 (0.8); 2 -> tie of all three at 0.5:
    # background; 3 -> class 1 (0.95)
    assert label_maps(cams, both, 0.5).tolist() == [[[1, 2, 0, 2]]]
    # class 1 absent from the image: its map is never taken
    assert label_maps(cams, np.array([[True, False]]), 0.5).tolist() == [[[1, 0, 0, 1]]]
    assert label_maps(cams, both, 0.99).tolist() == [[[0, 0, 0, 0]]]


def test_background_threshold_is_chosen_by_miou() -> None:
    cams = np.array([[[[0.9, 0.6, 0.3, 0.1]]]])  # one class, present
    present = np.array([[True]])
    gt = np.array([[[1, 1, 0, 0]]])
    # t = 0.2: [1, 1, 1, 0] -> bg IoU 1/2, class 2/3; t = 0.5: [1, 1, 0, 0] -> both 1;
    # t = 0.7: [1, 0, 0, 0] -> bg 2/3, class 1/2
    threshold, best = crf.choose_background_threshold(cams, present, gt, [0.2, 0.5, 0.7])
    assert threshold == 0.5 and best == 1.0
    assert mean_iou(confusion_matrix(label_maps(cams, present, 0.2), gt, 2)) == pytest.approx(
        (1 / 2 + 2 / 3) / 2)


def test_crf_sharpens_a_blurred_map_of_a_square() -> None:
    """A red 20×20 square on grey; the map is the square dilated by 3 px and blurred (σ 6): at
    0.5 it is a rounded blob, IoU 0.68 with the square. The CRF's bilateral kernel snaps it to the
    colour edge: IoU 1."""
    import cv2
    image = np.full((48, 48, 3), 60, np.uint8)
    image[14:34, 14:34] = (220, 40, 40)
    square = np.zeros((48, 48), np.float32)
    square[14:34, 14:34] = 1
    blurred = cv2.GaussianBlur(cv2.dilate(square, np.ones((7, 7), np.uint8)), (0, 0), 6)
    fg = 0.05 + 0.9 * blurred / blurred.max()
    probs = np.stack([1 - fg, fg])
    before = probs.argmax(0) == 1
    refined = crf.crf_refine(image, probs)
    after = refined.argmax(0) == 1
    truth = square > 0
    assert refined.shape == (2, 48, 48) and np.allclose(refined.sum(0), 1, atol=1e-4)
    assert iou.iou(before, truth) < 0.7 and iou.iou(after, truth) == 1.0
    with pytest.raises(CamlabError, match="crf_refine"):
        crf.crf_refine(image.astype(np.float32), probs)


def test_segment_with_crf_maps_back_to_the_present_classes() -> None:
    """One image, K = 3, class 2 present alone: its map is the blurred square; with CRF the label
    map is 3 (class 2's label) exactly on the square, and 0 elsewhere; an absent class's map
    (class 0, high everywhere) is never read."""
    import cv2
    image = np.full((48, 48, 3), 60, np.uint8)
    image[14:34, 14:34] = (220, 40, 40)
    square = np.zeros((48, 48), np.float32)
    square[14:34, 14:34] = 1
    blurred = cv2.GaussianBlur(cv2.dilate(square, np.ones((7, 7), np.uint8)), (0, 0), 6)
    cams = np.zeros((1, 3, 48, 48))
    cams[0, 0] = 0.99
    cams[0, 2] = blurred / blurred.max()
    present = np.array([[False, False, True]])
    plain = crf.segment(cams, present, 0.5)
    refined = crf.segment(cams, present, 0.5, images=image[None])
    assert set(np.unique(plain)) == {0, 3} and set(np.unique(refined)) == {0, 3}
    assert np.array_equal(refined[0] == 3, square > 0) and not np.array_equal(plain[0] == 3, square > 0)


def test_per_image_confusions_pool_to_the_split_and_bootstrap_by_pooling() -> None:
    confusions = image_confusions(PRED, GT, 3)
    assert confusions.shape == (2, 3, 3)
    assert np.array_equal(confusions.sum(0), confusion_matrix(PRED, GT, 3))
    statistic = miou_statistic(confusions)
    # weights (1, 1): the split's mIoU; (2, 0): image 1 alone (pooling twice the same counts)
    found = statistic(np.array([[1.0, 1.0], [2.0, 0.0]]))
    assert found[0] == pytest.approx(mean_iou(confusion_matrix(PRED, GT, 3)))
    assert found[1] == pytest.approx(mean_iou(confusion_matrix(PRED[:1], GT[:1], 3)))
    # a run against itself differs by exactly 0 in every resample
    assert paired_bootstrap(statistic, statistic, 2, 50) == (0.0, 0.0, 0.0)


def test_label_colours() -> None:
    labels = np.array([[0, 1, 10, 255]])
    rgb = figures.label_colours(labels, 10)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 3].tolist() == [255, 255, 255]
    assert len({tuple(c) for c in figures.label_colours(np.arange(11), 10).tolist()}) == 11  # all distinct


def test_crf_settings_scale_only_the_spatial_widths() -> None:
    assert crf.crf_settings("affinitynet", (64, 64)) == crf.CRF_SETTINGS
    scaled = crf.crf_settings("scaled", (64, 48))
    factor = 64 / 500
    assert scaled["gaussian_sxy"] == pytest.approx(3 * factor) and scaled["bilateral_sxy"] == pytest.approx(80 * factor)
    assert {k: v for k, v in scaled.items() if "sxy" not in k} == {k: v for k, v in crf.CRF_SETTINGS.items()
                                                                     if "sxy" not in k}
    with pytest.raises(CamlabError, match="unknown CRF variant"):
        crf.crf_settings("dense", (8, 8))


def test_error_shares_by_hand() -> None:
    # the confusion matrix of PRED against GT (rows truth): [[3, 2, 0], [1, 1, 0], [0, 1, 2]]
    shares = error_shares(confusion_matrix(PRED, GT, 3))
    # object pixels: 5 (rows 1, 2): 1 as background, 1 as another class (2 -> 1); background: 5, 2 as objects
    assert shares == pytest.approx({"object_as_background": 1 / 5, "object_as_other": 1 / 5,
                                    "background_as_object": 2 / 5, "predicted_object": 6 / 10, "true_object": 5 / 10})


def test_the_scales_report_pairs_each_run_with_itself_at_one_scale(tmp_path) -> None:
    from research.semseg import write_scales_report
    perfect, worse = image_confusions(GT, GT, 3), image_confusions(PRED, GT, 3)
    # by hand: PRED's split confusion has IoUs 3/6, 1/5, 2/3, so mIoU 0.45556; GT's own is 1
    assert mean_iou(worse.sum(0)) == pytest.approx((0.5 + 0.2 + 2 / 3) / 3)

    def report(crf_variant, confusions):
        return {"exp_id": "a_s0", "method": "CAM", "refine": None, "crf": crf_variant, "seed": 0, "n_test": 2,
                "miou": mean_iou(confusions.sum(0)), "per_image": {"confusions": confusions}}
    # no CRF: multi-scale perfect, one scale PRED; with CRF the other way round
    multi = [report(None, perfect), report("scaled", worse)]
    single = [report(None, worse), report("scaled", perfect)]
    text = write_scales_report(multi, single, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| CAM")]
    assert len(rows) == 2
    plain, with_crf = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    # method, refinement, CRF, seeds, one scale, multi-scale, Δ MSF, verdict, Δ CRF (one), verdict, Δ CRF (multi), verdict
    assert plain[4:8] == ["0.4556 ± 0.0000", "1.0000 ± 0.0000", plain[6], "better"]
    assert plain[6].startswith("+0.544 [") and plain[8:] == ["-", "-", "-", "-"]
    assert with_crf[6].startswith("-0.544 [") and with_crf[7] == "worse"
    assert with_crf[8].startswith("+0.544 [") and with_crf[9] == "better"  # CRF at one scale: PRED -> GT
    assert with_crf[10].startswith("-0.544 [") and with_crf[11] == "worse"
    assert (tmp_path / "semseg_msf.md").read_text() == text and (tmp_path / "semseg_msf.png").stat().st_size > 0
    with pytest.raises(CamlabError, match="no run was scored both"):
        write_scales_report(multi, [], tmp_path)
