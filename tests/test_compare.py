"""The comparison runner's statistics and diagnostics: the paired bootstrap, PxAP from per-image
histograms, the pixel shares and the rendering accuracies, on hand cases and a hand-built model."""
import numpy as np
import pytest
import torch
from torch import nn

from camlab import synthetic as gen
from camlab import utils
from camlab.metrics import (
    batch_iou,
    iou_curve,
    mean_statistic,
    paired_bootstrap,
    pixel_histograms,
    pxap,
    pxap_from_histograms,
    pxap_statistic,
)
from research.wsol import map_shares, rendering_accuracy


def test_bootstrap_of_a_constant_difference_is_that_difference() -> None:
    a, b = np.array([0.7, 0.2, 0.5, 0.9]), np.array([0.6, 0.1, 0.4, 0.8])
    diff, low, high = paired_bootstrap(mean_statistic(a), mean_statistic(b), 4, 500)
    assert diff == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_bootstrap_interval_of_two_images_by_hand() -> None:
    """Differences (0, 1): a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4. So
    the 95% interval is [0, 1], and the 40% interval (30th to 70th percentile) is [1/2, 1/2]."""
    a, b = mean_statistic([0.0, 1.0]), mean_statistic([0.0, 0.0])
    assert paired_bootstrap(a, b, 2, 20000, 0.95) == (0.5, 0.0, 1.0)
    assert paired_bootstrap(a, b, 2, 20000, 0.40) == (0.5, 0.5, 0.5)


def test_bootstrap_is_paired() -> None:
    # the same resample for both: a shared per-image offset cancels, however large its spread
    rng = np.random.default_rng(0)
    offset = rng.uniform(0, 1, 50)
    diff, low, high = paired_bootstrap(mean_statistic(offset + 0.05), mean_statistic(offset), 50)
    assert diff == pytest.approx(0.05) and low == pytest.approx(0.05) and high == pytest.approx(0.05)


def test_bootstrap_rejects_bad_arguments() -> None:
    stat = mean_statistic([1.0])
    with pytest.raises(utils.CamlabError, match="paired_bootstrap"):
        paired_bootstrap(stat, stat, 1, 10, 1.5)


def test_pxap_from_per_image_histograms_is_pxap_and_resamples_like_copies() -> None:
    rng = np.random.default_rng(1)
    cams, masks = rng.uniform(size=(6, 8, 8)), rng.uniform(size=(6, 8, 8)) < 0.3
    cams[0, 0, 0], cams[1, 0, 0] = 1.0, 0.0
    fg, bg = pixel_histograms(cams, masks)  # the default step 0.001: 1,000 bin edges below 1, then [1, 2), [2, 3]
    assert fg.shape == bg.shape == (6, 1002) and fg.sum() == masks.sum() and bg.sum() == (~masks).sum()
    assert pixel_histograms(cams, masks, 0.01)[0].shape == (6, 102)
    stat = pxap_statistic(fg, bg)
    assert stat(np.ones((1, 6)))[0] == pytest.approx(pxap(cams, masks), abs=1e-12)
    # weights (2, 0, 1, 1, 0, 2): image 0 twice, image 1 left out, ... = pxap of that set of copies
    pick = [0, 0, 2, 3, 5, 5]
    assert stat(np.array([[2.0, 0, 1, 1, 0, 2]]))[0] == pytest.approx(pxap(cams[pick], masks[pick]), abs=1e-12)


def test_map_shares_by_hand() -> None:
    maps = np.array([[[0.9, 0.5, 0.1, 0.0],
                      [0.6, 0.4, 0.7, 0.2]]])
    mask = np.array([[[1, 1, 1, 0],
                      [1, 1, 0, 0]]], bool)
    part = np.array([[[1, 0, 0, 0],
                      [1, 0, 0, 0]]], bool)
    # part: 0.9, 0.6 -> 2/2; body: 0.5, 0.1, 0.4 -> 1/3; background: 0.0, 0.7, 0.2 -> 1/3
    assert map_shares(maps, mask, part) == {"on_part": 1.0, "on_body": pytest.approx(1 / 3),
                                                     "on_background": pytest.approx(1 / 3)}


class PartColourModel(nn.Module):
    """A hand-built classifier that looks only for each class's part colour: its score for class
    c is the share of pixels within 60 grey levels of PART_STYLES[c].rgb. It sees the part and
    nothing else, so it must be right on normal and part-only renderings and lost on body-only."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("colours", torch.tensor([s.rgb for s in gen.PART_STYLES], dtype=torch.float32))

    def forward(self, x: torch.Tensor):
        mean = torch.tensor(utils.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(utils.IMAGENET_STD).view(1, 3, 1, 1)
        rgb = (x * std + mean) * 255
        dist = (rgb.unsqueeze(1) - self.colours.view(1, -1, 3, 1, 1)).norm(dim=2)
        scores = (dist < 60).float().mean(dim=(2, 3))
        return scores, None, None


def test_rendering_accuracy_of_a_model_that_sees_only_the_part(tmp_path) -> None:
    root = tmp_path / "tiny"
    gen.generate_synthetic(root, seed=0, n_train=2, n_test=40, progress=False)
    meta = gen.read_meta(root)
    acc = rendering_accuracy(PartColourModel(), meta, 64, torch.device("cpu"))
    images, _, labels = gen.redraw(meta, "test")
    by_hand = PartColourModel()(
        (torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(utils.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(utils.IMAGENET_STD).view(1, 3, 1, 1))[0]
    assert acc["acc_normal"] == pytest.approx(float((by_hand.argmax(1).numpy() == labels).mean()))
    assert acc["acc_normal"] >= 0.9 and acc["acc_part"] >= 0.9
    assert acc["acc_body"] <= 0.3


def test_ignored_pixels_count_neither_in_iou_nor_in_pxap() -> None:
    """One 2×3 image: prediction P, ground truth G, ignore (valid False) in the last column.
    Counted pixels: P = {(0,0), (0,1)}, G = {(0,1), (1,1)} -> IoU 1/3 (without ignoring, P's
    (1,2) and G's (0,2) join the union: 1/5)."""
    pred = np.array([[[1, 1, 0], [0, 0, 1]]], bool)
    gt = np.array([[[0, 1, 1], [0, 1, 0]]], bool)
    valid = np.array([[[1, 1, 0], [1, 1, 0]]], bool)
    assert batch_iou(pred, gt).tolist() == [pytest.approx(1 / 5)]
    assert batch_iou(pred, gt, valid).tolist() == [pytest.approx(1 / 3)]
    cams = np.array([[[0.9, 0.8, 1.0], [0.1, 0.5, 0.95]]], np.float32)
    fg, bg = pixel_histograms(cams, gt, valid=valid)
    assert fg.sum() == 2 and bg.sum() == 2  # the two ignored pixels are in neither
    # counted scores: foreground 0.8, 0.5; background 0.9, 0.1. Thresholds from the top: 0.9 keeps
    # one background pixel (precision 0), 0.8 adds a foreground one (P 1/2, recall 1/2), 0.5
    # another (P 2/3, recall 1): PxAP = 1/2 · 1/2 + 2/3 · 1/2
    assert pxap_from_histograms(fg.sum(0), bg.sum(0)) == pytest.approx(0.25 + 1 / 3)
    curve = iou_curve(cams, gt, [0.5, 0.85], valid)
    # >= 0.5 counted: {(0,0), (0,1), (1,1)} against G {(0,1), (1,1)}: 2/3; >= 0.85: {(0,0)}: 0
    assert curve.tolist() == [pytest.approx(2 / 3), 0.0]
