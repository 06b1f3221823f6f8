"""The WSOL evaluator's benchmark: maps per second of the exact fast evaluator (``camlab.boxeval``) and of the per-threshold reference path on the same CAM-like maps, and their ratio.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from camlab.boxes import max_box_acc


# ------------------------------------------------------------------------------ benchmark
def blob_maps(n_maps: int, size: int | tuple[int, int] = 224, seed: int = 0):
    """Smooth CAM-like maps and their ground truth: each map the sum of 1-3 anisotropic
    Gaussian blobs of random place, spread and weight, min-max normalised (float32 H×W in
    [0, 1]); its boxes those of 1-3 of its blobs (centre ± 1.5 spreads, clipped to the image).
    -> (float32 N×H×W, per map a list of boxes)."""
    rng = np.random.default_rng(seed)
    h, w = (size, size) if np.isscalar(size) else size
    yy, xx = np.mgrid[:h, :w]
    cams, gts = np.zeros((n_maps, h, w), np.float32), []
    for i in range(n_maps):
        m, boxes = np.zeros((h, w)), []
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            sx, sy = rng.uniform(w / 16, w / 4), rng.uniform(h / 16, h / 4)
            m += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 / (2 * sx ** 2) + (yy - cy) ** 2 / (2 * sy ** 2)))
            boxes.append((int(max(0, cx - 1.5 * sx)), int(max(0, cy - 1.5 * sy)),
                          int(min(w - 1, cx + 1.5 * sx)), int(min(h - 1, cy + 1.5 * sy))))
        m -= m.min()
        cams[i] = m / m.max() if m.max() > 0 else m
        gts.append(boxes[:int(rng.integers(1, len(boxes) + 1))])
    return cams, gts


def bench_wsol_eval(n_maps: int = 16, size: int = 224, intervals: Sequence[float] = (0.01, 0.001),
                    seed: int = 0, repeats: int = 1, timer=time.perf_counter) -> list[dict]:
    """maps/s of ``camlab.boxes.max_box_acc`` through its fast evaluator (``camlab.boxeval``) and
    through the reference path (cv2 per map and threshold, as wsolevaluation's ``BoxEvaluator``
    runs it), on the same :func:`blob_maps`, for each interval and both contour settings, each the
    best of ``repeats`` timed runs (the two paths alternate, so that a busy machine slows both
    alike); every result is checked equal to the reference's. ``timer``: the wall clock by
    default; ``time.process_time`` counts this process's CPU time only (steadier on a shared
    machine). -> one dict per (interval, multi_contour): n_maps, size, both paths' maps/s, their
    ratio and the MaxBoxAccV2."""
    cams, gts = blob_maps(n_maps, size, seed)
    rows = []
    for interval in intervals:
        for multi in (True, False):
            fast_s = ref_s = float("inf")
            for _ in range(max(1, repeats)):
                start = timer()
                fast = max_box_acc(cams, gts, multi_contour=multi, interval=interval, evaluator="fast")
                fast_s = min(fast_s, timer() - start)
                start = timer()
                ref = max_box_acc(cams, gts, multi_contour=multi, interval=interval, evaluator="reference")
                ref_s = min(ref_s, timer() - start)
                if fast != ref:
                    raise AssertionError(f"the fast evaluator and the reference disagree: {fast} != {ref}")
            rows.append({"interval": interval, "multi_contour": multi, "n_maps": n_maps, "size": size,
                         "fast_maps_per_s": n_maps / fast_s, "reference_maps_per_s": n_maps / ref_s,
                         "ratio": ref_s / fast_s, "max_box_acc_v2": fast["mean"]})
    return rows
