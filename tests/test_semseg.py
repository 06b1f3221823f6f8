"""Semantic segmentation scoring (the VOC protocol): the confusion matrix with the ignore label,
per-class IoU and mIoU, label maps by a background threshold, and the threshold's choice; every
expected value is worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

import iou
from utils import CamlabError

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
    found = iou.confusion_matrix(PRED, GT, 3)
    assert found.dtype == np.int64 and found.tolist() == expected.tolist()
    assert found.sum() == 10  # 12 pixels minus 2 ignored


def test_class_ious_and_miou_by_hand() -> None:
    confusion = iou.confusion_matrix(PRED, GT, 3)
    # background: TP 3, row 5, column 4 -> 3 / (5 + 4 - 3) = 1/2
    # class 1:    TP 1, row 2, column 4 -> 1 / 5
    # class 2:    TP 2, row 3, column 2 -> 2 / 3
    assert iou.class_ious(confusion).tolist() == pytest.approx([1 / 2, 1 / 5, 2 / 3])
    assert iou.mean_iou(confusion) == pytest.approx((1 / 2 + 1 / 5 + 2 / 3) / 3)
    # a class neither present nor predicted is NaN and left out of the mean
    four = iou.confusion_matrix(PRED, GT, 4)
    assert np.isnan(iou.class_ious(four)[3]) and iou.mean_iou(four) == pytest.approx(iou.mean_iou(confusion))


def test_out_of_range_labels_and_all_ignored_are_errors() -> None:
    with pytest.raises(CamlabError, match="predicted label 3 is outside"):
        iou.confusion_matrix(np.full((1, 2, 2), 3), np.zeros((1, 2, 2), int), 3)
    with pytest.raises(CamlabError, match="ground-truth label 7"):
        iou.confusion_matrix(np.zeros((1, 2, 2), int), np.full((1, 2, 2), 7), 3)
    with pytest.raises(CamlabError, match="no pixel was counted"):
        iou.mean_iou(iou.confusion_matrix(np.zeros((1, 2, 2), int), np.full((1, 2, 2), 255), 3))


def test_label_maps_take_the_background_threshold_and_present_classes_only() -> None:
    # one image, K = 2 classes, 1×4 pixels
    cams = np.array([[[[0.9, 0.2, 0.5, 0.6]],     # class 0 (label 1)
                      [[0.1, 0.8, 0.5, 0.95]]]])  # class 1 (label 2)
    both = np.array([[True, True]])
    # threshold 0.5: pixel 0 -> class 0 (0.9); 1 -> class 1 (0.8); 2 -> tie of all three at 0.5:
    # background; 3 -> class 1 (0.95)
    assert iou.label_maps(cams, both, 0.5).tolist() == [[[1, 2, 0, 2]]]
    # class 1 absent from the image: its map is never taken
    assert iou.label_maps(cams, np.array([[True, False]]), 0.5).tolist() == [[[1, 0, 0, 1]]]
    assert iou.label_maps(cams, both, 0.99).tolist() == [[[0, 0, 0, 0]]]


def test_background_threshold_is_chosen_by_miou() -> None:
    cams = np.array([[[[0.9, 0.6, 0.3, 0.1]]]])  # one class, present
    present = np.array([[True]])
    gt = np.array([[[1, 1, 0, 0]]])
    # t = 0.2: [1, 1, 1, 0] -> bg IoU 1/2, class 2/3; t = 0.5: [1, 1, 0, 0] -> both 1;
    # t = 0.7: [1, 0, 0, 0] -> bg 2/3, class 1/2
    threshold, best = iou.choose_background_threshold(cams, present, gt, [0.2, 0.5, 0.7])
    assert threshold == 0.5 and best == 1.0
    assert iou.mean_iou(iou.confusion_matrix(iou.label_maps(cams, present, 0.2), gt, 2)) == pytest.approx(
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
    refined = iou.crf_refine(image, probs)
    after = refined.argmax(0) == 1
    truth = square > 0
    assert refined.shape == (2, 48, 48) and np.allclose(refined.sum(0), 1, atol=1e-4)
    assert iou.iou(before, truth) < 0.7 and iou.iou(after, truth) == 1.0
    with pytest.raises(CamlabError, match="crf_refine"):
        iou.crf_refine(image.astype(np.float32), probs)
