"""CAM boxes, WSOL metrics (PxAP, MaxBoxAccV2, top-1 / GT-known localisation) and ACoL's rest
loss, on tiny maps whose values are computed by hand (as wsolevaluation's evaluation_test.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from camlab.boxes import (
    PROTOCOLS,
    box_iou,
    cam_box,
    localization_accuracy,
    mask_box,
    max_box_acc,
    threshold_boxes,
    wsol_scoremaps,
)
from camlab.methods import rest_cross_entropy
from camlab.metrics import pxap
from camlab.utils import CamlabError

T, F = True, False
EXACT = dict(abs=1e-12)


def rows(*values: float, height: int = 2) -> np.ndarray:
    """float height×W map whose every row is ``values``."""
    return np.tile(np.asarray(values, dtype=np.float64), (height, 1))


# ----------------------------------------------------------------------------- cam_box
def test_cam_box_boxes_the_larger_of_two_blobs() -> None:
    cam = np.zeros((5, 7))
    cam[0:2, 0:2] = 1.0  # 4 px, the maximum
    cam[2:5, 4:7] = 0.5  # 9 px, above 20% of the max: the largest component
    assert cam_box(cam) == (4, 2, 6, 4)


def test_cam_box_keeps_exactly_20_percent_and_drops_below() -> None:
    # kept: 0.2 (= 0.2 · max) and above; 0.19 splits the row into {0, 1, 2} (3 px) and {4, 5}.
    # Were 0.19 kept, the box would be the whole row; were 0.2 dropped, it would be (4, 0, 5, 0).
    cam = np.array([[0.2, 1.0, 0.2, 0.19, 0.5, 0.5]])
    assert cam_box(cam) == (0, 0, 2, 0)
    assert cam_box(cam, fraction=0.6) == (1, 0, 1, 0)


def test_cam_box_joins_diagonal_neighbours() -> None:
    # 8-connectivity: the diagonal is one 3 px component; with 4-connectivity the pair would win
    cam = np.zeros((5, 5))
    cam[[0, 1, 2], [0, 1, 2]] = 1.0
    cam[0, 3:5] = 1.0
    assert cam_box(cam) == (0, 0, 2, 2)


def test_cam_box_coordinates_are_inclusive() -> None:
    cam = np.zeros((3, 4))
    cam[1, 2] = 0.7
    assert cam_box(cam) == (2, 1, 2, 1)


def test_cam_box_of_an_empty_map_is_none() -> None:
    assert cam_box(np.zeros((3, 4))) is None
    assert cam_box(np.full((3, 4), -1.0)) is None
    assert cam_box(np.zeros((0, 0))) is None


def test_cam_box_of_a_mask_is_the_mask_box() -> None:
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:6] = True
    assert cam_box(mask.astype(float)) == mask_box(mask, "camlab") == (2, 1, 5, 3)


# ---------------------------------------------------------------------------- mask_box
def test_mask_box_is_the_inclusive_bounding_box() -> None:
    mask = np.zeros((4, 5), bool)
    mask[1, 1] = mask[2, 3] = True
    assert mask_box(mask, "camlab") == (1, 1, 3, 2)
    assert mask_box(mask.astype(np.uint8) * 255, "camlab") == (1, 1, 3, 2)


def test_mask_box_of_an_empty_mask_is_none() -> None:
    assert mask_box(np.zeros((4, 5), bool)) is None


# ----------------------------------------------------------------------------- box_iou
def test_box_iou_hand_cases() -> None:
    assert box_iou((1, 2, 4, 5), (1, 2, 4, 5)) == 1.0
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 1.0  # one pixel has area 1
    assert box_iou((0, 0, 1, 1), (2, 0, 3, 1)) == 0.0  # side by side, no shared pixel
    # two 2×2 boxes sharing column 1: 2 px in common, 4 + 4 - 2 = 6 px in all
    assert box_iou((0, 0, 1, 1), (1, 0, 2, 1)) == pytest.approx(1 / 3, **EXACT)
    assert box_iou((0, 0, 3, 3), (1, 1, 2, 2)) == 4 / 16


def test_box_iou_rejects_a_reversed_box() -> None:
    with pytest.raises(CamlabError):
        box_iou((2, 0, 1, 1), (0, 0, 1, 1))


# -------------------------------------------------------------------------------- pxap
def test_pxap_hand_case() -> None:
    # foreground 0.9, 0.55; background 0.55, 0.15. From the top: τ in (0.55, 0.9] gives
    # P = 1, R = 1/2; τ in (0.15, 0.55] gives P = 2/3, R = 1; below, R stays 1.
    cams = np.array([[[0.9, 0.55], [0.55, 0.15]]])
    masks = np.array([[[T, F], [T, F]]])
    assert pxap(cams, masks) == pytest.approx(1 * 1 / 2 + 2 / 3 * 1 / 2, **EXACT)


def test_pxap_a_background_pixel_on_top() -> None:
    # τ = 0.8: P = 0, R = 0 (adds nothing); τ = 0.3: P = 1/2, R = 1
    cams = np.array([[[0.8, 0.3], [0.1, 0.1]]])
    masks = np.array([[[F, T], [F, F]]])
    assert pxap(cams, masks) == pytest.approx(0.5, **EXACT)


def test_pxap_coarse_grid_ties_scores_in_one_bin() -> None:
    # interval 0.5: edges 0, 0.5, 1, 2, 3. 0.9 and both 0.55 share [0.5, 1): at τ = 0.5
    # P = 2/3, R = 1, so the case of test_pxap_hand_case drops from 5/6 to 2/3.
    cams = np.array([[[0.9, 0.55], [0.55, 0.15]]])
    masks = np.array([[[T, F], [T, F]]])
    assert pxap(cams, masks, interval=0.5) == pytest.approx(2 / 3, **EXACT)


def test_pxap_of_perfect_maps_is_one() -> None:
    masks = np.array([[[T, F], [F, T]]])
    assert pxap(masks.astype(float), masks) == 1.0
    assert pxap(np.array([[[0.7, 0.2], [0.0, 0.9]]]), masks) == 1.0  # any separating map


def test_pxap_of_a_constant_map_is_the_foreground_share() -> None:
    # every pixel has the same score: one threshold keeps all of them, P = 1/4, R = 1
    assert pxap(np.zeros((1, 2, 2)), np.array([[[T, F], [F, F]]])) == 0.25


def test_pxap_pools_pixels_over_images() -> None:
    # pooled: fg 0.9, 0.6; bg 0.7, 0.2. From the top: 0.9 (P 1, R 1/2), 0.7 (R unchanged),
    # 0.6 (P 2/3, R 1): 1/2 + 1/3 = 5/6. The mean of the per-image APs would be (1 + 1/2) / 2.
    cams = np.array([[[0.9, 0.2]], [[0.6, 0.7]]])
    masks = np.array([[[T, F]], [[T, F]]])
    assert pxap(cams, masks) == pytest.approx(5 / 6, **EXACT)


def test_pxap_is_average_precision_when_scores_sit_in_distinct_bins() -> None:
    rng = np.random.default_rng(0)
    cams = (rng.integers(0, 100, (3, 5, 5)) + 0.5) / 100  # bin centres of the 0.01 grid
    masks = rng.random((3, 5, 5)) < 0.3
    expected = average_precision_score(masks.ravel(), cams.ravel())
    assert pxap(cams, masks) == pytest.approx(expected, abs=1e-9)


def test_pxap_rejects_bad_input() -> None:
    with pytest.raises(CamlabError):
        pxap(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), bool))  # no foreground
    with pytest.raises(CamlabError):
        pxap(np.full((1, 2, 2), 2.0), np.ones((1, 2, 2), bool))  # not in [0, 1]
    with pytest.raises(CamlabError):
        pxap(np.zeros((1, 2, 2)), np.ones((1, 2, 3), bool))  # shapes differ


# ------------------------------------------------------------------------- max_box_acc
def test_camlab_max_box_acc_picks_the_cam_threshold_per_iou_threshold() -> None:
    # Both gt boxes are (0, 0, 3, 1). Below τ = 0.5 (0.5 quantises to 127, kept while
    # int(τ · 255) < 127) both maps give the whole 2×10 image: IoU 8/20 = 0.4 each.
    # From τ = 0.5 only the 1.0 pixels remain: image 1 gives (0, 0, 3, 1), IoU 1, image 2
    # (9, 0, 9, 1), IoU 0. So δ = 0.3 is best at a low τ (2/2), δ = 0.5 and 0.7 at a high τ
    # (1/2); no single τ reaches all three.
    cams = np.stack([rows(1, 1, 1, 1, .5, .5, .5, .5, .5, .5), rows(.5, .5, .5, .5, .5, .5, .5, .5, .5, 1)])
    gt = [[(0, 0, 3, 1)], [(0, 0, 3, 1)]]
    assert max_box_acc(cams, gt, protocol="camlab") == pytest.approx({0.3: 1.0, 0.5: 0.5, 0.7: 0.5, "mean": 2 / 3}, **EXACT)


def test_camlab_multi_contour_lets_a_small_blob_compete() -> None:
    # gt: the 2×2 blob on the left; the 2×5 blob on the right has the larger contour area (4 vs 1)
    cams = rows(1, 1, 0, 0, 0, 1, 1, 1, 1, 1)[None]
    gt = [[(0, 0, 1, 1)]]
    assert max_box_acc(cams, gt, multi_contour=True, protocol="camlab") == {0.3: 1.0, 0.5: 1.0, 0.7: 1.0, "mean": 1.0}
    assert max_box_acc(cams, gt, multi_contour=False, protocol="camlab") == {0.3: 0.0, 0.5: 0.0, 0.7: 0.0, "mean": 0.0}


def test_camlab_contour_boxes_are_inclusive() -> None:
    # the region is x 2..4, y 1..2 exactly; a box one pixel wider and taller, (2, 1, 5, 3),
    # would score 6/12 = 0.5 and miss δ = 0.7
    cam = np.zeros((5, 7))
    cam[1:3, 2:5] = 1.0
    assert max_box_acc(cam[None], [[(2, 1, 4, 2)]], iou_thresholds=(0.7,), protocol="camlab") == {0.7: 1.0, "mean": 1.0}


def test_camlab_best_gt_box_counts_and_empty_maps_miss() -> None:
    cam = np.zeros((4, 4))
    cam[2:4, 2:4] = 1.0
    cams = np.stack([cam, np.zeros((4, 4))])  # the second map has no contour at any τ
    gt = [[(0, 0, 1, 1), (2, 2, 3, 3)], [(0, 0, 0, 0)]]
    assert max_box_acc(cams, gt, iou_thresholds=(0.5,), protocol="camlab") == {0.5: 0.5, "mean": 0.5}


# --------------------------------------- the wsolevaluation protocol (the default), by hand
def test_wsolevaluation_boxes_end_one_past_the_region() -> None:
    """boundingRect of the region x 2..4, y 1..2 is (2, 1, 3, 2): the box is (2, 1, 2 + 3, 1 + 2)
    = (2, 1, 5, 3). Against the inclusive (2, 1, 4, 2), with + 1 areas: 6 / (12 + 6 - 6) = 0.5;
    against the mask's box in the same convention, (2, 1, 5, 3), IoU 1."""
    cam = np.zeros((5, 7))
    cam[1:3, 2:5] = 1.0
    assert threshold_boxes(cam, 0.5, True, PROTOCOLS["wsolevaluation"]).tolist() == [[2, 1, 5, 3]]
    assert mask_box(cam > 0, "wsolevaluation") == (2, 1, 5, 3)
    assert max_box_acc(cam[None], [[(2, 1, 4, 2)]], iou_thresholds=(0.5, 0.7)) == {0.5: 1.0, 0.7: 0.0, "mean": 0.5}
    assert max_box_acc(cam[None], [[(2, 1, 5, 3)]], iou_thresholds=(0.7,)) == {0.7: 1.0, "mean": 1.0}


def test_wsolevaluation_clips_box_ends_to_the_last_pixel_but_not_the_ground_truth() -> None:
    """The region x 4..6, y 3..4 of a 5×7 map: (4, 3, 4 + 3, 3 + 2) clipped to (6, 4); the
    mask's box is not clipped, (4, 3, 7, 5): IoU 3·2 / (3·2 + 4·3 - 3·2) = 0.5."""
    cam = np.zeros((5, 7))
    cam[3:5, 4:7] = 1.0
    assert threshold_boxes(cam, 0.5, True, PROTOCOLS["wsolevaluation"]).tolist() == [[4, 3, 6, 4]]
    gt = mask_box(cam > 0, "wsolevaluation")
    assert gt == (4, 3, 7, 5)
    assert max_box_acc(cam[None], [[gt]], iou_thresholds=(0.5, 0.7)) == {0.5: 1.0, 0.7: 0.0, "mean": 0.5}


def test_wsolevaluation_scores_the_box_0000_when_no_contour_is_left() -> None:
    """An all-zero map leaves no contour at any τ: wsolevaluation scores (0, 0, 0, 0), area 1,
    against (0, 0, 1, 1), area 4: IoU 1 / 4; camlab counts no box as a miss."""
    cams, gt = np.zeros((1, 4, 4)), [[(0, 0, 1, 1)]]
    assert max_box_acc(cams, gt, iou_thresholds=(0.25, 0.3)) == {0.25: 1.0, 0.3: 0.0, "mean": 0.5}
    assert max_box_acc(cams, gt, iou_thresholds=(0.25,), protocol="camlab") == {0.25: 0.0, "mean": 0.0}


def test_wsolevaluation_scoremaps_min_max_the_raw_map() -> None:
    """No ReLU: [[-2, 0], [0, 2]] -> [[0, .5], [.5, 1]] (camlab's class form would zero the
    negative corner and give [[0, 0], [0, 1]]); a constant map and one with NaN become zeros;
    the cubic resize goes to the image size."""
    raw = np.array([[[-2.0, 0.0], [0.0, 2.0]], [[3.0, 3.0], [3.0, 3.0]], [[np.nan, 1.0], [0.0, 2.0]]])
    maps = wsol_scoremaps(raw, (2, 2))
    assert maps[0].tolist() == [[0.0, 0.5], [0.5, 1.0]]
    assert not maps[1].any() and not maps[2].any()
    big = wsol_scoremaps(raw[:1], (5, 3))
    assert big.shape == (1, 5, 3) and big.min() == 0.0 and big.max() == 1.0


def test_wsolevaluation_localization_box_is_its_largest_contour() -> None:
    """The 20% box: pixels above int(0.2 · 255) = 51 of the quantised map; two blobs, the 2×2
    one (contour area 1) and the 2×3 one (area 2), which wins: boundingRect (3, 2, 3, 2), so the
    box (3, 2, 3 + 3, 2 + 2) clipped to (5, 3)."""
    cam = np.zeros((4, 6))
    cam[0:2, 0:2] = 1.0
    cam[2:4, 3:6] = 1.0
    assert localization_accuracy(cam[None], [1], [1], [[(3, 2, 6, 4)]], iou_threshold=0.5) == \
        {"top1_loc": 1.0, "gt_known_loc": 1.0}  # (3, 2, 5, 3) vs (3, 2, 6, 4): 6 / 12 = 0.5
    assert localization_accuracy(cam[None], [1], [1], [[(0, 0, 2, 2)]], iou_threshold=0.5) == \
        {"top1_loc": 0.0, "gt_known_loc": 0.0}
    with pytest.raises(CamlabError):  # its uint8 quantisation needs maps in [0, 1]
        localization_accuracy(cam[None] * 2, [1], [1], [[(0, 0, 2, 2)]])


def test_max_box_acc_rejects_mismatched_counts() -> None:
    with pytest.raises(CamlabError):
        max_box_acc(np.zeros((2, 4, 4)), [[(0, 0, 1, 1)]])


# --------------------------------------------------------------- localization_accuracy
def test_localization_accuracy_hand_case() -> None:
    left, right = np.zeros((4, 4)), np.zeros((4, 4))
    left[0:2, 0:2] = 1.0
    right[2:4, 2:4] = 1.0
    cams = np.stack([left, left, right, np.zeros((4, 4))])
    gt = [[(0, 0, 1, 1)],                 # right class, right box: both count
          [(2, 2, 3, 3), (0, 0, 1, 1)],   # wrong class, box matches the second gt box: GT-known only
          [(0, 0, 1, 1)],                 # right class, box elsewhere (IoU 0): neither
          [(0, 0, 1, 1)]]                 # right class, no box at all: neither
    result = localization_accuracy(cams, pred_classes=[0, 1, 2, 2], labels=[0, 0, 2, 2], gt_boxes=gt, protocol="camlab")
    assert result == {"top1_loc": 0.25, "gt_known_loc": 0.5}


def test_localization_accuracy_iou_of_exactly_half_counts() -> None:
    cam = np.zeros((4, 4))
    cam[0:2, 0:2] = 1.0
    cam[2, 0] = 0.1  # below 20% of the max: outside the box
    # box (0, 0, 1, 1) against gt (0, 0, 1, 3): 4 / 8 = 0.5
    result = localization_accuracy(cam[None], [3], [3], [[(0, 0, 1, 3)]], protocol="camlab")
    assert result == {"top1_loc": 1.0, "gt_known_loc": 1.0}
    # at fraction 0.05 the 0.1 pixel (right below the blob) joins it: box (0, 0, 1, 2), IoU 6/8
    assert localization_accuracy(cam[None], [3], [3], [[(0, 0, 1, 3)]], fraction=0.05,
                                 iou_threshold=0.75, protocol="camlab") == {"top1_loc": 1.0, "gt_known_loc": 1.0}


# ------------------------------------------------------------------ rest_cross_entropy
def reference_rest_loss(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """restCrossEtropyLoss as the ACoL seed notes give it (the unstable form)."""
    one_hot = torch.ones(X.size()).scatter(1, y.view(-1, 1), 0)
    C = one_hot[0].sum()  # noqa: N806 - the notes' name; it counts the non-target classes
    return -torch.log(torch.exp((X * one_hot).sum(1) / C) / torch.exp(X).sum(1)).mean()


def test_rest_cross_entropy_hand_value() -> None:
    logits = torch.tensor([[0.0, math.log(2), math.log(4)]], dtype=torch.float64)
    # label 0: -log(exp((ln 2 + ln 4) / 2) / (1 + 2 + 4)) = ln 7 - 1.5 ln 2
    assert rest_cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(
        math.log(7) - 1.5 * math.log(2), **EXACT)
    # label 2: rest mean (0 + ln 2) / 2; a batch of both averages them
    both = rest_cross_entropy(logits.repeat(2, 1), torch.tensor([0, 2]))
    assert both.ndim == 0
    assert both.item() == pytest.approx(math.log(7) - (1.5 + 0.5) / 2 * math.log(2), **EXACT)


def test_rest_cross_entropy_gradient() -> None:
    # d/dz_j = softmax_j - [j != y] / (C - 1): softmax (1, 2, 4)/7, minus 1/2 off the target
    logits = torch.tensor([[0.0, math.log(2), math.log(4)]], dtype=torch.float64, requires_grad=True)
    rest_cross_entropy(logits, torch.tensor([0])).backward()
    expected = torch.tensor([[1 / 7, 2 / 7 - 1 / 2, 4 / 7 - 1 / 2]], dtype=torch.float64)
    torch.testing.assert_close(logits.grad, expected, atol=1e-12, rtol=0)


def test_rest_cross_entropy_matches_the_seed_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (6,), generator=g)
    torch.testing.assert_close(rest_cross_entropy(logits, labels),
                               reference_rest_loss(logits, labels), atol=1e-12, rtol=0)


def test_rest_cross_entropy_is_stable_for_large_logits() -> None:
    # adding a constant to every logit leaves the loss unchanged; exp(1000) would overflow
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1])
    shifted = rest_cross_entropy(logits + 1000, labels)
    assert torch.isfinite(shifted)
    assert shifted.item() == pytest.approx(rest_cross_entropy(logits, labels).item(), abs=1e-9)


def test_rest_cross_entropy_needs_two_classes() -> None:
    with pytest.raises(CamlabError):
        rest_cross_entropy(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
