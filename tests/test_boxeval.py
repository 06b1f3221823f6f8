"""camlab.boxeval: the level-collapsed WSOL box evaluator gives exactly (==) the per-threshold
best IoUs and MaxBoxAcc values of the reference path (camlab.boxes under the wsolevaluation
protocol, cv2 per map and threshold)."""
from __future__ import annotations

import numpy as np
import pytest

from camlab import boxeval, boxes
from research.evalbench import bench_wsol_eval, blob_maps
from camlab.utils import CamlabError

WSOL = boxes.PROTOCOLS["wsolevaluation"]
GRIDS = (np.arange(0, 1, 0.01), np.arange(0, 1, 0.001))


def reference_ious(cam, gt, thresholds, multi):
    return boxes._threshold_ious(cam, gt, thresholds, multi, WSOL)


def assert_same(cam, gt, grids=GRIDS) -> None:
    """Every per-threshold best IoU equal to the reference, both contour settings."""
    for thresholds in grids:
        for multi in (True, False):
            got = boxeval.threshold_best_ious(cam, gt, thresholds, multi)
            want = reference_ious(cam, gt, thresholds, multi)
            assert got.dtype == np.float64 and got.shape == want.shape
            assert np.array_equal(got, want), (multi, np.flatnonzero(got != want)[:5])


def boxes_at(cam, tau, multi):
    return sorted(map(tuple, boxeval.threshold_boxes_all(cam, np.array([tau]), multi)[0].tolist()))


def reference_boxes(cam, tau, multi):
    return sorted(map(tuple, boxes.threshold_boxes(cam, tau, multi, WSOL).tolist()))


# ---------------------------------------------------------------------------- hand cases
def test_a_ring_scores_its_hole_box_with_multi_contour() -> None:
    # A ring touching the image border around a 3×3 hole; the ground truth is the hole's
    # contour box, which only RETR_TREE's inner border gives (the outer box scores 36/81).
    cam = np.ones((9, 9))
    cam[3:6, 3:6] = 0
    gt = [(2, 2, 7, 7)]
    assert boxes_at(cam, 0.5, True) == reference_boxes(cam, 0.5, True) == [(0, 0, 8, 8), (2, 2, 7, 7)]
    assert boxes_at(cam, 0.5, False) == reference_boxes(cam, 0.5, False) == [(0, 0, 8, 8)]
    assert boxeval.threshold_best_ious(cam, gt, np.array([0.5]), True).tolist() == [1.0]
    assert boxeval.threshold_best_ious(cam, gt, np.array([0.5]), False).tolist() == [36 / 81]
    assert_same(cam, gt)


def test_two_touching_components_merge_below_the_lower_value() -> None:
    cam = np.zeros((6, 10))
    cam[1:4, 1:4] = 1.0   # 3×3 at the top
    cam[2:5, 4:8] = 0.6   # 3×4 sharing an edge with it
    assert boxes_at(cam, 0.7, True) == [(1, 1, 4, 4)]  # only the first is above 0.7
    assert boxes_at(cam, 0.5, True) == reference_boxes(cam, 0.5, True) == [(1, 1, 8, 5)]
    assert_same(cam, [(4, 2, 8, 5), (1, 1, 4, 4)])


def test_a_diagonal_only_connection_is_one_component() -> None:
    cam = np.zeros((6, 6))
    cam[0:2, 0:2] = 1.0
    cam[2:4, 2:4] = 0.8  # touches the first only at a corner: 8-connected
    cam[5, 5] = 0.9
    assert boxes_at(cam, 0.5, True) == reference_boxes(cam, 0.5, True) == [(0, 0, 4, 4), (5, 5, 5, 5)]
    assert_same(cam, [(0, 0, 4, 4)])
    assert_same(cam, [(2, 2, 3, 3)])


def test_a_constant_map_boxes_the_whole_image() -> None:
    cam = np.full((5, 7), 0.5)
    assert boxes_at(cam, 0.3, True) == [(0, 0, 6, 4)]
    assert_same(cam, [(0, 0, 6, 4)])
    assert_same(np.ones((4, 4)), [(1, 1, 2, 2)])


def test_an_all_zero_map_scores_the_empty_box() -> None:
    cam = np.zeros((4, 5))
    assert boxes_at(cam, 0.0, True) == [(0, 0, 0, 0)]
    for multi in (True, False):
        assert boxeval.threshold_best_ious(cam, [(0, 0, 0, 0)], GRIDS[0], multi).tolist() == [1.0] * 100
    assert_same(cam, [(0, 0, 1, 1)])


def test_a_single_pixel() -> None:
    cam = np.zeros((5, 5))
    cam[2, 3] = 1.0
    assert boxes_at(cam, 0.5, True) == [(3, 2, 4, 3)]  # boundingRect's x + w, y + h
    assert_same(cam, [(3, 2, 4, 3)])
    assert_same(np.ones((1, 1)), [(0, 0, 0, 0)])


def test_a_component_on_the_border_is_clipped_to_w_minus_1() -> None:
    cam = np.zeros((4, 6))
    cam[2:4, 4:6] = 1.0  # the bottom-right corner: x + w = 6 and y + h = 4 clip to 5 and 3
    cam[0, 0] = 0.8
    assert boxes_at(cam, 0.5, True) == reference_boxes(cam, 0.5, True) == [(0, 0, 1, 1), (4, 2, 5, 3)]
    assert_same(cam, [(4, 2, 5, 3)])
    assert_same(cam, [(4, 2, 6, 4)])


def test_a_tie_of_largest_areas_goes_to_findcontours_first() -> None:
    # Equal areas on different rows: findContours lists the later start first; on one row the
    # evaluator leaves the level to cv2. Either way the box is the reference's.
    cam = np.zeros((9, 9))
    cam[1:3, 1:3] = 1.0
    cam[5:7, 4:6] = 1.0
    assert boxes_at(cam, 0.5, False) == reference_boxes(cam, 0.5, False) == [(4, 5, 6, 7)]
    assert_same(cam, [(1, 1, 3, 3)])
    same_row = np.zeros((5, 9))
    same_row[1:3, 1:3] = 1.0
    same_row[1:3, 5:7] = 0.9
    assert boxes_at(same_row, 0.5, False) == reference_boxes(same_row, 0.5, False)
    assert_same(same_row, [(1, 1, 3, 3)])


def test_the_largest_contour_is_by_polygon_area_not_pixel_count() -> None:
    # A one-pixel ring of side 10 (36 pixels, contourArea 81: its holes count) against a solid
    # 7×7 square (49 pixels, contourArea 36): findContours' largest is the ring.
    cam = np.zeros((12, 22))
    cam[1:11, 1:11] = 1.0
    cam[2:10, 2:10] = 0.0
    cam[2:9, 13:20] = 0.8
    assert boxes_at(cam, 0.5, False) == reference_boxes(cam, 0.5, False) == [(1, 1, 11, 11)]
    assert_same(cam, [(13, 2, 20, 9)])


def test_holes_nested_components_and_lines() -> None:
    cam = np.zeros((12, 12))
    cam[1:11, 1:11] = 0.6
    cam[3:9, 3:9] = 0.0      # a hole ...
    cam[5:7, 5:7] = 1.0      # ... with an island in it
    cam[0, :] = 0.3          # a line along the top
    cam[11, 0:12:2] = 0.9    # single pixels on the bottom row
    for gt in ([(2, 2, 9, 9)], [(5, 5, 7, 7)], [(0, 0, 11, 0)], [(0, 11, 0, 11)]):
        assert_same(cam, gt)


def test_nan_and_bad_inputs_are_refused() -> None:
    cam = np.zeros((4, 4))
    cam[1, 1] = np.nan
    with pytest.raises(CamlabError, match="NaN"):
        boxes.max_box_acc(cam[None], [[(0, 0, 1, 1)]])
    with pytest.raises(CamlabError, match="NaN"):
        boxeval.threshold_best_ious(cam, [(0, 0, 1, 1)], GRIDS[0], True)
    with pytest.raises(CamlabError, match=r"\[0, 1\]"):
        boxes.max_box_acc(np.full((1, 4, 4), 1.5), [[(0, 0, 1, 1)]])
    with pytest.raises(CamlabError, match="interval"):
        boxes.max_box_acc(np.zeros((1, 4, 4)), [[(0, 0, 1, 1)]], interval=0)
    with pytest.raises(CamlabError, match="as many"):
        boxes.max_box_acc(np.zeros((2, 4, 4)), [[(0, 0, 1, 1)]])
    with pytest.raises(CamlabError, match="x0 <= x1"):
        boxes.max_box_acc(np.zeros((1, 4, 4)), [[(3, 0, 1, 1)]])
    with pytest.raises(CamlabError, match="H×W"):
        boxeval.threshold_best_ious(np.zeros((2, 3, 3)), [(0, 0, 1, 1)], GRIDS[0], True)


def test_no_ground_truth_scores_zero_everywhere() -> None:
    cam = np.random.default_rng(0).random((6, 7))
    for multi in (True, False):
        assert boxeval.threshold_best_ious(cam, [], GRIDS[0], multi).tolist() == [0.0] * 100
    assert boxes.max_box_acc(cam[None], [[]]) == boxes.max_box_acc(cam[None], [[]], evaluator="reference")


def test_thresholds_outside_0_1_and_in_float32() -> None:
    cam = blob_maps(1, (20, 30), seed=3)[0][0]
    gt = [(5, 5, 20, 15)]
    for thresholds in (np.array([-0.5, -1e-9, 0.0, 0.999999, 1.0, 1.7]), np.arange(0, 1, 0.01, dtype=np.float32),
                       [0.1, 0.25, 0.5]):
        for multi in (True, False):
            assert np.array_equal(boxeval.threshold_best_ious(cam, gt, thresholds, multi),
                                  reference_ious(cam, gt, thresholds, multi))


# -------------------------------------------------------------------------- random maps
def _maps(rng, shape):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    blobs = blob_maps(1, shape, seed=int(rng.integers(1 << 30)))[0][0]
    rings = (np.cos(np.hypot(yy - rng.uniform(0, h), xx - rng.uniform(0, w)) / rng.uniform(0.8, 3)) + 1) / 2
    return {"blobs": blobs,
            "noise": rng.random(shape).astype(np.float32),
            "stripes": (np.sin(xx / rng.uniform(1, 4) + yy / rng.uniform(2, 9)) + 1) / 2,
            "rings": rings,
            "few_levels": rng.integers(0, 3, shape) / 2.0,
            "blobs_and_noise": np.clip(blobs + rng.normal(0, 0.03, shape), 0, 1)}


def _boxes(rng, shape, n):
    h, w = shape
    out = []
    for _ in range(n):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        out.append((int(x0), int(y0), int(x1), int(y1)))
    return out


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (16, 16), (1, 9), (9, 1), (2, 7), (7, 2), (3, 3), (64, 48)])
def test_random_maps_equal_the_reference(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for kind, cam in _maps(rng, shape).items():
        # the reference's findContours is slow on noise: its 1,000 thresholds on small maps only
        grids = GRIDS[:1] if kind in ("noise", "few_levels") and cam.size > 1000 else GRIDS
        assert_same(cam, _boxes(rng, shape, int(rng.integers(1, 4))), grids)


def test_224_maps_equal_the_reference() -> None:
    cams, gts = blob_maps(3, 224, seed=7)
    for cam, gt in zip(cams, gts):
        assert_same(cam, gt)
    stripes = _maps(np.random.default_rng(1), (224, 224))["stripes"]
    assert_same(stripes, [(10, 20, 120, 200)], grids=GRIDS[:1])
    # an upsampled low-resolution map, as wsolevaluation evaluates them: holes at many levels
    lowres = boxes.wsol_scoremaps(np.random.default_rng(2).normal(size=(1, 14, 14)).astype(np.float32), (224, 224))[0]
    assert_same(lowres, [(30, 40, 90, 120), (120, 10, 200, 60)])


def test_boxes_per_threshold_equal_the_reference() -> None:
    rng = np.random.default_rng(5)
    thresholds = np.arange(0, 1, 0.01)
    for cam in list(_maps(rng, (23, 31)).values()) + [blob_maps(1, (40, 60), seed=2)[0][0]]:
        for multi in (True, False):
            got = boxeval.threshold_boxes_all(cam, thresholds, multi)
            for tau, found in zip(thresholds, got):
                assert sorted(map(tuple, found.tolist())) == reference_boxes(cam, tau, multi)


@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_max_box_acc_equals_the_reference(interval) -> None:
    cams, gts = blob_maps(6, (37, 53), seed=11)
    rng = np.random.default_rng(0)
    noisy = np.clip(cams + rng.normal(0, 0.02, cams.shape), 0, 1).astype(np.float32)
    gts[1] = []  # an image without boxes never counts as right
    for maps in (cams, noisy) if interval < 0.01 else (cams, noisy, cams.astype(np.float64)):
        for multi in (True, False):
            got = boxes.max_box_acc(maps, gts, multi_contour=multi, interval=interval)
            want = boxes.max_box_acc(maps, gts, multi_contour=multi, interval=interval, evaluator="reference")
            assert got == want and list(got) == [0.3, 0.5, 0.7, "mean"]
    one = boxes.max_box_acc(cams[0], gts[:1], iou_thresholds=(0.25,), interval=interval)
    assert one == boxes.max_box_acc(cams[0], gts[:1], iou_thresholds=(0.25,), interval=interval, evaluator="reference")


def test_smooth_maps_never_need_cv2(monkeypatch) -> None:
    """The fast path decides every level of smooth maps, holes included (upsampled random
    low-resolution maps have holes at many levels); cv2 would only see undecidable ties."""
    calls = []
    real = boxeval._cv2_boxes
    monkeypatch.setattr(boxeval, "_cv2_boxes", lambda *a: calls.append(a[1]) or real(*a))
    cams, gts = blob_maps(6, 96, seed=1)
    rng = np.random.default_rng(0)
    lowres = boxes.wsol_scoremaps(rng.normal(size=(4, 7, 7)).astype(np.float32), (96, 96))
    for multi in (True, False):
        for cam, gt in zip(list(cams) + list(lowres), gts + gts[:4]):
            got = boxeval.threshold_best_ious(cam, gt, GRIDS[1], multi)
            assert np.array_equal(got, reference_ious(cam, gt, GRIDS[1], multi))
    assert calls == []


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_maps_past_the_basin_limit_fall_back_to_cv2_exactly(monkeypatch, limit) -> None:
    """With few basins allowed, the map's tree, the background's tree (holes) or the filled
    map's tree is refused in turn; the levels it would decide go to cv2, with equal results."""
    monkeypatch.setattr(boxeval, "MAX_BASINS", limit)
    rng = np.random.default_rng(limit)
    maps = list(boxes.wsol_scoremaps(rng.normal(size=(4, 4, 4)).astype(np.float32), (30, 40)))
    for x in (2, 6):  # a ring (one maximum) around a hole, on a plateau, and a lower square
        ring = np.full((30, 40), 0.4)
        ring[5:20, x:x + 15] = 1.0
        ring[8:17, x + 3:x + 12] = 0.2
        ring[22:27, 30:36] = 0.6
        if x == 6:  # two holes, of different depths: three background maxima
            ring[8:17, x + 6:x + 8] = 1.0
            ring[8:17, x + 3:x + 6] = 0.1
        maps.append(ring)
    for cam in maps:
        assert_same(cam, _boxes(rng, cam.shape, 2), grids=GRIDS[:1])


def test_a_refused_filled_map_tree_falls_back_to_cv2_exactly(monkeypatch) -> None:
    """The largest-contour mode with holes builds a third tree, of the hole-filled map; when
    that one is refused, the levels with holes go to cv2."""
    real_tree, real_fast = boxeval._tree, boxeval._fast_table
    seen = []

    def fast(*args):
        seen.clear()
        return real_fast(*args)

    def tree(m, lmin, eight):
        seen.append(eight)
        return None if seen.count(True) == 2 else real_tree(m, lmin, eight)

    monkeypatch.setattr(boxeval, "_fast_table", fast)
    monkeypatch.setattr(boxeval, "_tree", tree)
    cam = np.ones((9, 9))
    cam[3:6, 3:6] = 0.2
    cam[0, 0] = 0.5
    assert_same(cam, [(2, 2, 7, 7)])
    assert_same(cam, [(0, 0, 8, 8)])


def test_bench_reports_both_paths() -> None:
    rows = bench_wsol_eval(n_maps=2, size=24, intervals=(0.01,))
    assert [(r["interval"], r["multi_contour"]) for r in rows] == [(0.01, True), (0.01, False)]
    assert all(r["fast_maps_per_s"] > 0 and r["reference_maps_per_s"] > 0 and r["ratio"] > 0 for r in rows)
