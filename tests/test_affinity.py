"""AffinityNet's pairs, affinity labels, loss and random walk (camlab.affinity) against values
worked out by hand from jiwoon-ahn/psa's formulas, and the random walk sharpening a blurred map."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from camlab import affinity as aff, crf
from camlab.metrics import confusion_matrix, label_maps, mean_iou
from camlab.utils import CamlabError


def test_pairs_are_psas_offsets_and_crop_and_the_full_form_keeps_every_pair() -> None:
    assert aff.pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert len(aff.pair_offsets(5)) == 4 + 4 * 9 - 6  # y > 0, |x| < 5, x² + y² < 25 drops (3, ±4), (4, ±3), (4, ±4)
    # a 3×4 map, radius 2: psa's first ends are [:-1, 1:-1] = positions 1, 2, 5, 6, for each offset
    src, dst = aff.pair_indices(3, 4, 2, "psa")
    assert src.tolist() == [1, 2, 5, 6] * 4
    assert dst.tolist() == [2, 3, 6, 7] + [4, 5, 8, 9] + [5, 6, 9, 10] + [6, 7, 10, 11]
    src, dst = aff.pair_indices(3, 4, 2, "full")  # (0, 1): 3 rows × 3; (1, -1): 2 × 3; (1, 0): 2 × 4; (1, 1): 2 × 3
    assert len(src) == 9 + 6 + 8 + 6
    assert len({tuple(sorted(p)) for p in zip(src.tolist(), dst.tolist())}) == 29  # each unordered pair once
    with pytest.raises(CamlabError, match="at least 5 high and 9 wide"):
        aff.pair_indices(8, 8, 5, "psa")


def test_confident_labels_and_pair_labels_by_hand() -> None:
    # 1×3 grid, one present class (2): low α says fg only at pixel 1, high α says bg only at pixel 0
    low = np.array([[[0.6, 0.2, 0.7]], [[0.4, 0.8, 0.3]]])
    high = np.array([[[0.9, 0.1, 0.3]], [[0.1, 0.9, 0.7]]])
    assert aff.confident_labels(low, high, [2]).tolist() == [[0, 3, 255]]
    # a 2×3 label map, radius 2, every pair: (0,1) bg-bg; (1,2) bg-fg; the 255 ends drop out, 255-255 too
    label = np.array([[0, 0, 1], [255, 255, 1]])
    src, dst = aff.pair_indices(2, 3, 2, "full")
    assert list(zip(src.tolist(), dst.tolist())) == [(0, 1), (1, 2), (3, 4), (4, 5), (1, 3), (2, 4), (0, 3), (1, 4),
                                                     (2, 5), (0, 4), (1, 5)]
    bg, fg, neg = aff.pair_labels(label, src, dst)
    assert bg.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert fg.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    assert neg.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]


def test_affinity_is_the_mean_l1_and_the_loss_is_psas_by_hand() -> None:
    features = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]]])  # 1×2×1×2: f0 = (0, 2), f1 = (1, 0)
    found = aff.feature_affinities(features, torch.tensor([0]), torch.tensor([1]))
    assert found.item() == pytest.approx(math.exp(-(1 + 2) / 2))  # the mean over channels, not the sum
    a = torch.tensor([0.5, 0.9, 0.2, 0.8])
    bg, fg, neg = (torch.tensor(v) for v in ([1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]))
    loss, terms = aff.affinity_loss(a, bg, fg, neg)
    want_bg = -math.log(0.5 + 1e-5) / (1 + 1e-5)
    want_fg = -math.log(0.9 + 1e-5) / (1 + 1e-5)
    want_neg = (-math.log(1 + 1e-5 - 0.2) - math.log(1 + 1e-5 - 0.8)) / (2 + 1e-5)
    assert terms["bg"].item() == pytest.approx(want_bg, rel=1e-5)
    assert terms["neg"].item() == pytest.approx(want_neg, rel=1e-5)
    assert loss.item() == pytest.approx(want_bg / 4 + want_fg / 4 + want_neg / 2, rel=1e-5)
    empty = torch.zeros(4)
    assert aff.affinity_loss(a, empty, fg, neg)[1]["bg"].item() == 0.0  # no pair of a kind: that term is 0


def test_random_walk_one_step_and_its_fixed_point_by_hand() -> None:
    # three positions in a row: pairs (0, 1) affinity 0.5 and (1, 2) 0.25; the diagonal is 1
    mat = aff.affinity_matrix(torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([0, 1]),
                              torch.tensor([1, 2]), 3)
    assert mat.tolist() == [[1, 0.5, 0], [0.5, 1, 0.25], [0, 0.25, 1]]
    trans = aff.transition_matrix(mat, 1)  # columns divided by 1.5, 1.75, 1.25
    scores = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)  # 1×1×3
    one = aff.random_walk(scores, aff.walk_powers(trans, [0])[0])
    assert one.flatten().tolist() == pytest.approx([1 / 1.5, 0.5 / 1.75, 0.0])
    assert aff.transition_matrix(mat, 2)[0, 1].item() == pytest.approx(0.25 / (0.25 + 1 + 0.0625))  # A^β first
    # the walk converges to the degree-weighted mean everywhere: (1.5·1 + 1.75·0 + 1.25·0) / 4.5
    settled = aff.random_walk(scores, aff.walk_powers(trans, [10])[10])
    assert settled.flatten().tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)
    # logt t applies T^(2^t): t = 1 is two steps
    assert torch.allclose(aff.walk_powers(trans, [1])[1], trans @ trans)


def test_pooling_and_upsampling_are_torchs_adaptive_pool_and_bilinear() -> None:
    x = np.random.default_rng(0).random((2, 64, 48)).astype(np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x)[None], (14, 8))[0].numpy()
    assert np.allclose(aff.pool_scores(x, (14, 8)), want, atol=1e-6)
    assert np.allclose(aff.pool_scores(x, (8, 6)), x.reshape(2, 8, 8, 6, 8).mean(axis=(2, 4)), atol=1e-6)  # psa's blocks
    small = torch.from_numpy(x[:, :7, :5].copy())
    up = torch.nn.functional.interpolate(small[None], size=(64, 48), mode="bilinear", align_corners=False)[0]
    assert np.allclose(aff.upsample_scores(small, (64, 48)), up.numpy(), atol=1e-5)


def test_the_random_walk_sharpens_a_blurred_two_object_map() -> None:
    """Two touching objects on a 32×32 image, their maps blurred (σ 3 and 6 px) into the background
    and into each other; affinities from features that know the regions (one-hot on the 8×8 grid,
    so exp(-2) across a boundary, e^-16 after β 8): the walk averages each score within its region,
    and the best label maps go from mIoU 0.78 (any threshold) to 0.97 or more."""
    truth = np.zeros((32, 32), np.int64)
    truth[8:24, 4:16], truth[8:24, 16:28] = 1, 2
    maps = np.stack([cv2.GaussianBlur((truth == k).astype(np.float32), (0, 0), s) for k, s in ((1, 3), (2, 6))])
    maps = (maps / maps.max(axis=(1, 2), keepdims=True))[None]
    present = np.array([[True, True]])
    region = torch.from_numpy(truth[::4, ::4]).long()
    features = torch.nn.functional.one_hot(region, 3).permute(2, 0, 1)[None].double() * 3
    src, dst = (torch.from_numpy(i) for i in aff.pair_indices(8, 8, 3, "full"))
    mat = aff.affinity_matrix(aff.feature_affinities(features, src, dst)[0], src, dst, 64)
    plain = max(mean_iou(confusion_matrix(label_maps(maps, present, t), truth[None], 3))
                for t in np.linspace(0.05, 0.95, 19))
    best, walked = aff.choose_walk(maps, present, truth[None], [mat], (8, 8), betas=(8,), logts=(0, 4), alphas=(1, 4))
    assert plain < 0.8 and walked > 0.97 and best == {"beta": 8, "logt": 4, "alpha": 1}
    power = aff.walk_powers(aff.transition_matrix(mat, 8), [4])[4]
    labels = aff.walk_labels(maps, present, [power], 1, (8, 8))[0]
    before = label_maps(maps, present, 0.5)[0]
    assert (before[truth == 1] == 2).sum() > 0 and (labels[truth == 1] == 2).sum() == 0  # B's wide blur no longer wins A


# ------------------------------------------------------------- the network and --refine rw
def test_refine_rw_end_to_end_trains_once_then_reuses_and_refuses_other_settings(tmp_path, monkeypatch, capsys) -> None:
    import csv

    import iou
    import main
    from camlab import synthetic
    monkeypatch.chdir(tmp_path)
    synthetic.generate_multi(tmp_path / "m", n_train=24, n_val=8, size=32, progress=False)
    assert main.main(["--dataset", "multi", "--data_root", "m", "--img_size", "32", "--epochs", "1", "--weights", "none",
                      "--quiet", "--batch_size", "8", "--multi_label", "--exp_id", "ml"]) == 0
    argv = ["--semseg", "--refine", "rw", "--crf", "affinitynet", "--runs", "ml", "--n_threshold", "10", "--no_msf",
            "--aff_radius", "2", "--aff_epochs", "1"]
    assert iou.main(argv) == 0
    err = capsys.readouterr().err
    assert "ml affinity epoch 1/1: loss" in err
    rows = list(csv.DictReader((tmp_path / "report/semseg.csv").open()))
    assert [(r["refine"], r["crf"]) for r in rows] == [("none", "none"), ("none", "affinitynet"), ("rw", "none"),
                                                       ("rw", "affinitynet")]
    walk = rows[2]
    assert float(walk["beta"]) in aff.BETA_GRID and int(walk["logt"]) in aff.LOGT_GRID
    assert (rows[3]["beta"], rows[3]["logt"]) == (walk["beta"], walk["logt"])  # the CRF keeps β and logt,
    assert float(rows[3]["threshold"]) in crf.CRF_ALPHA_GRID  # and chooses α again
    md = (tmp_path / "report/semseg.md").read_text()
    assert "AffinityNet random walk" in md and "ΔmIoU from the random walk" in md
    stored = tmp_path / "checkpoints/ml/affinity.pth"
    before = stored.stat().st_mtime_ns
    assert iou.main([a for a in argv if a not in ("--crf", "affinitynet")]) == 0  # reused, not trained again
    assert "affinity epoch" not in capsys.readouterr().err and stored.stat().st_mtime_ns == before
    assert iou.main(argv[:-1] + ["2"]) == 2  # other settings: refused, the stored network kept
    err = capsys.readouterr().err
    assert "trained with other settings (epochs)" in err and err.count("\n") == 1 and stored.stat().st_mtime_ns == before
    # psa's pairs on a 4×4 grid at radius 5: one line naming the fix
    assert iou.main(["--semseg", "--refine", "rw", "--runs", "ml", "--n_threshold", "10", "--no_msf",
                     "--aff_epochs", "2"]) == 2
    assert "psa's pairs need a feature map at least 5 high and 9 wide" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        iou.main(["--refine", "rw"])
    assert "--refine applies to --semseg" in capsys.readouterr().err


def test_the_affinity_network_gives_a_feature_per_position_and_its_loss_reaches_every_parameter() -> None:
    import model
    from research.affinitynet import AffinityNet
    torch.manual_seed(0)
    net = AffinityNet(model.CAMModel(num_classes=3, weights="none").config)
    features = net(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 96, 4, 4)  # layer1's 64 -> 32 and layer2's 128 -> 64 channels, on layer2's 1/8 grid
    src, dst = (torch.from_numpy(i) for i in aff.pair_indices(4, 4, 2, "full"))
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 2, 2, 255], [0, 2, 2, 0]])
    kinds = [torch.from_numpy(k).expand(2, -1) for k in aff.pair_labels(label, src.numpy(), dst.numpy())]
    loss, _ = aff.affinity_loss(aff.feature_affinities(features, src, dst), *kinds)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                                        for p in net.parameters())


def test_the_test_pass_in_chunks_scores_what_one_chunk_scores(tmp_path, monkeypatch) -> None:
    """research.semseg.score_variants holds the class maps of one chunk of test images at a time:
    every variant (with and without CRF, with and without the walk) gives the same per-image
    confusions, the same chosen background and the same examples in chunks of 3 as in one chunk."""
    import main
    from camlab import synthetic
    from research.affinitynet import AffinitySettings
    from research.experiments import Experiment
    from research.semseg import score_variants
    monkeypatch.chdir(tmp_path)
    synthetic.generate_multi(tmp_path / "m", n_train=24, n_val=8, size=32, progress=False)
    assert main.main(["--dataset", "multi", "--data_root", "m", "--img_size", "32", "--epochs", "1", "--weights", "none",
                      "--quiet", "--batch_size", "8", "--multi_label", "--exp_id", "ml"]) == 0
    variants = [(None, None), (None, "affinitynet"), ("rw", None), ("rw", "affinitynet")]
    settings = AffinitySettings(radius=2, epochs=1, msf=False)
    exp = Experiment.load("ml", "cpu")
    whole = score_variants(exp, 10, variants, msf=False, aff=settings)
    chunked = score_variants(Experiment.load("ml", "cpu"), 10, variants, msf=False, aff=settings, chunk=3)
    assert whole[0]["n_test"] == 8 and [r["refine"] for r in chunked] == [None, None, "rw", "rw"]
    for a, b in zip(whole, chunked):
        assert np.array_equal(a["per_image"]["confusions"], b["per_image"]["confusions"])
        assert a["miou"] == b["miou"] and a["threshold"] == b["threshold"] and a["walk"] == b["walk"]
        for key in ("images", "truth", "labels"):
            assert np.array_equal(a["examples"][key], b["examples"][key])
    assert not [k for k in exp._raw if k[1:2] == ("affinity",) and len(k[0]) == 8], "the test matrices were kept"
