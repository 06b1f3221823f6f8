"""Faithfulness measures (camlab.faithfulness) against hand computations on a tiny model whose
logits are written out: class 0's logit is the sum of the red channel's 0–1 pixels, class 1's is
0, so P(class 0) = sigmoid(sum of red). And torchcam 0.5.0's metrics against the definitions."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from camlab import faithfulness as fa
from camlab.utils import IMAGENET_MEAN, IMAGENET_STD, CamlabError

MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def red_logits(inputs: torch.Tensor) -> torch.Tensor:
    """The tiny model on normalised inputs: logits (sum of the red 0–1 pixels, 0)."""
    red = (inputs * STD.to(inputs) + MEAN.to(inputs))[:, 0].flatten(1).sum(1)
    return torch.stack([red, torch.zeros_like(red)], dim=1)


class RedModel(torch.nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return red_logits(inputs)


def normalised(red: list[list[float]], other: float = 0.3) -> torch.Tensor:
    """1×3×H×W normalised input of an image whose red channel is ``red`` (0–1) and whose green
    and blue are ``other`` (the model ignores them)."""
    pixels = torch.full((1, 3, len(red), len(red[0])), other, dtype=torch.float64)
    pixels[0, 0] = torch.tensor(red, dtype=torch.float64)
    return (pixels - MEAN.double()) / STD.double()


# two 2×2 images: A (label 0) and B (label 1), with their maps
RED_A, MAP_A = [[1.0, 1.0], [0.0, 0.0]], [[2.0, 1.0], [0.0, 0.0]]  # min-max: [[1, .5], [0, 0]]
RED_B, MAP_B = [[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]


def two_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = torch.cat([normalised(RED_A), normalised(RED_B)])
    return inputs, torch.tensor([MAP_A, MAP_B], dtype=torch.float64), torch.tensor([0, 1])


# ------------------------------------------------------------------ Average Drop, Increase
def test_explanation_image_multiplies_the_pixels_not_the_normalised_tensor() -> None:
    inputs = normalised([[0.5, 0.5], [0.5, 0.5]])
    maps = torch.tensor([[[4.0, 2.0], [0.0, 0.0]]])  # min-max: [[1, .5], [0, 0]]
    pixels = fa.explanation_inputs(inputs, maps) * STD.double() + MEAN.double()
    # red 0.5 times the map: 0.5, 0.25, 0 (black), 0; green and blue 0.3 times it
    assert pixels[0, 0].flatten().tolist() == pytest.approx([0.5, 0.25, 0.0, 0.0], abs=1e-12)
    assert pixels[0, 2].flatten().tolist() == pytest.approx([0.3, 0.15, 0.0, 0.0], abs=1e-12)


def test_the_mean_colour_variant_fades_the_normalised_tensor() -> None:
    inputs = normalised([[0.5, 0.5], [0.5, 0.5]])
    maps = torch.tensor([[[4.0, 2.0], [0.0, 0.0]]])  # min-max: [[1, .5], [0, 0]]
    pixels = fa.explanation_inputs(inputs, maps, fill="mean") * STD.double() + MEAN.double()
    # red: mean + m·(0.5 − mean), mean 0.485: 0.5, 0.4925, 0.485, 0.485; blue (mean 0.406): 0.3, 0.353, 0.406, 0.406
    assert pixels[0, 0].flatten().tolist() == pytest.approx([0.5, 0.4925, 0.485, 0.485], abs=1e-12)
    assert pixels[0, 2].flatten().tolist() == pytest.approx([0.3, 0.353, 0.406, 0.406], abs=1e-12)
    with pytest.raises(CamlabError, match="fill 'grey'"):
        fa.explanation_inputs(inputs, maps, fill="grey")


def test_the_mean_colour_variant_by_hand_is_torchcams_masking_in_percent() -> None:
    inputs, maps, classes = two_images()
    y, o = fa.confidences(red_logits, inputs, maps, classes, fill="mean")
    # A: red (1, 1·.5 + .485·.5, .485, .485) sums to 2.7125; B: red (.485, 0, 0, 0), P(1) = 1 − sigmoid(.485)
    assert o.tolist() == pytest.approx([sigmoid(2.7125), 1 - sigmoid(0.485)], abs=1e-12)
    assert fa.average_drop(y, o).tolist() == [0.0, 0.0] and fa.increase_in_confidence(y, o).tolist() == [100.0, 100.0]
    found = fa.faithfulness(red_logits, inputs, maps, classes, steps=2)
    assert found["o_mean"].tolist() == pytest.approx(o.tolist(), abs=1e-12)
    assert found["o"].tolist() == pytest.approx([0.8175744761936437, 0.5], abs=1e-12)  # the paper's, unchanged
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    metric = torchcam_metrics.ClassificationMetric(FixedMaps(RedModel(), fa.fitted_maps(maps, (2, 2))),
                                                   lambda z: z.softmax(dim=-1))
    metric.update(inputs, class_idx=classes.tolist())
    assert metric.summary() == {"avg_drop": found["drop_mean"].mean() / 100, "conf_increase": found["increase_mean"].mean() / 100}


def test_average_drop_and_increase_in_confidence_by_hand() -> None:
    inputs, maps, classes = two_images()
    y, o = fa.confidences(red_logits, inputs, maps, classes)
    # A: red sum 2 on the image, 1·1 + 1·0.5 = 1.5 on the explanation image; P(0) = sigmoid
    # B: red sum 1, then 0 (its one red pixel has map 0); P(1) = 1 - sigmoid(sum)
    assert y.tolist() == pytest.approx([0.8807970779778823, 0.2689414213699951], abs=1e-12)
    assert o.tolist() == pytest.approx([0.8175744761936437, 0.5], abs=1e-12)
    drop, increase = fa.average_drop(y, o), fa.increase_in_confidence(y, o)
    assert drop.tolist() == pytest.approx([7.177885050366418, 0.0], abs=1e-9)  # 100·(Y−O)/Y, then max(0, ·)
    assert increase.tolist() == [0.0, 100.0]
    assert drop.mean() == pytest.approx(3.588942525183209) and increase.mean() == 50.0


def test_equal_confidence_is_no_increase_and_a_zero_probability_drops_nothing() -> None:
    assert fa.increase_in_confidence(np.array([0.4]), np.array([0.4])).tolist() == [0.0]
    assert fa.average_drop(np.array([0.0, 0.5]), np.array([0.0, 0.25])).tolist() == [0.0, 50.0]


def test_a_constant_map_blackens_the_whole_image() -> None:
    fitted = fa.fitted_maps(torch.full((1, 2, 2), 0.7), (2, 2))
    assert fitted.tolist() == [[[0.0, 0.0], [0.0, 0.0]]]


def test_maps_are_resized_to_the_inputs() -> None:
    fitted = fa.fitted_maps(torch.tensor([[[0.0, 1.0]]]), (2, 4))
    assert fitted.shape == (1, 2, 4)
    # bilinear, align_corners=False: source x = (x + 0.5)/2 − 0.5 = −0.25 (clamped to 0), 0.25, 0.75, 1.25 (to 1)
    assert fitted[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=1e-6)


class FixedMaps:
    """A torchcam extractor (the protocol its metrics use) that returns given maps."""

    def __init__(self, net: torch.nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = net, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def test_torchcam_classification_metric_does_not_compute_the_definition() -> None:
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    inputs, maps, classes = two_images()
    fitted = fa.fitted_maps(maps, (2, 2))
    metric = torchcam_metrics.ClassificationMetric(FixedMaps(RedModel(), fitted), lambda z: z.softmax(dim=-1))
    metric.update(inputs, class_idx=classes.tolist())
    # torchcam multiplies the NORMALISED tensor: a map of 0 leaves the mean colour (red 0.485),
    # not black. A: red (1, 1·.5 + .485·.5, .485, .485) sums to 2.7125 > 2: an increase;
    # B: red (.485, 0, 0, 0), P(1) = 1 − sigmoid(.485) = 0.381 > 0.269: an increase too.
    # It reports fractions. The definition (pixel space, percent) gives 3.589% and 50%.
    assert metric.summary() == {"avg_drop": 0.0, "conf_increase": 1.0}
    y, o = fa.confidences(red_logits, inputs, maps, classes)
    assert (fa.average_drop(y, o).mean(), fa.increase_in_confidence(y, o).mean()) == pytest.approx((3.5889425, 50.0))


def test_torchcam_classification_metric_agrees_where_the_normalisation_is_the_identity() -> None:
    # with inputs that ARE the pixels (mean 0, std 1 in effect: a model on the raw tensor)
    # torchcam's product is the pixel product, and its numbers are the definition's / 100
    torchcam_metrics = pytest.importorskip("torchcam.metrics")

    class RawRed(torch.nn.Module):
        def forward(self, x):
            red = x[:, 0].flatten(1).sum(1)
            return torch.stack([red, torch.zeros_like(red)], dim=1)
    pixels = torch.tensor([[RED_A, RED_A, RED_A], [RED_B, RED_B, RED_B]], dtype=torch.float64)
    fitted = fa.fitted_maps(torch.tensor([MAP_A, MAP_B], dtype=torch.float64), (2, 2))
    metric = torchcam_metrics.ClassificationMetric(FixedMaps(RawRed(), fitted), lambda z: z.softmax(dim=-1))
    metric.update(pixels, class_idx=[0, 1])
    found = metric.summary()
    assert found["avg_drop"] == pytest.approx(0.03588942525183209, abs=1e-6)  # its Y + 1e-7 denominator
    assert found["conf_increase"] == 0.5


# ----------------------------------------------------------------------- deletion, insertion
RED_C = [[1.0, 0.5], [0.25, 0.0]]
MAP_C = [[0.1, 0.9], [0.9, 0.5]]  # order: pixel 1, pixel 2 (the tie: raster order), pixel 3, pixel 0


def one_image() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return normalised(RED_C), torch.tensor([MAP_C], dtype=torch.float64), torch.tensor([0])


def test_salient_order_is_descending_with_ties_in_raster_order() -> None:
    assert fa.salient_order(torch.tensor([MAP_C])).tolist() == [[1, 2, 3, 0]]
    assert fa.salient_order(torch.zeros(1, 1, 3)).tolist() == [[0, 1, 2]]


def test_deletion_curve_by_hand() -> None:
    inputs, maps, classes = one_image()
    curve = fa.causal_curves(red_logits, inputs, maps, classes, "deletion", steps=4, substrate="black")
    # red sums: 1.75, then without pixel 1 (0.5): 1.25, pixel 2 (0.25): 1.0, pixel 3 (0): 1.0, pixel 0: 0
    # (were the tie broken the other way, the second score would be sigmoid(1.5))
    assert curve[0].tolist() == pytest.approx([sigmoid(1.75), sigmoid(1.25), sigmoid(1.0), sigmoid(1.0), 0.5],
                                           abs=1e-12)
    assert fa.causal_auc(curve).tolist() == pytest.approx([0.728848354854714], abs=1e-12)


def test_deletion_with_the_mean_substrate_puts_the_mean_colour_in() -> None:
    inputs, maps, classes = one_image()
    curve = fa.causal_curves(red_logits, inputs, maps, classes, "deletion", steps=4)  # RISE's default: "mean"
    # each deleted red pixel becomes 0.485: 1.75, 1.735, 1.97, 2.455, 4·0.485 = 1.94
    assert curve[0].tolist() == pytest.approx([sigmoid(v) for v in (1.75, 1.735, 1.97, 2.455, 1.94)], abs=1e-12)
    assert fa.causal_auc(curve)[0] == pytest.approx(0.8779351918423888, abs=1e-12)


def test_insertion_curve_by_hand() -> None:
    inputs, maps, classes = one_image()
    curve = fa.causal_curves(red_logits, inputs, maps, classes, "insertion", steps=4, substrate="black")
    # from black: pixel 1 back (0.5), pixel 2 (0.75), pixel 3 (0.75), pixel 0 (1.75)
    assert curve[0].tolist() == pytest.approx([0.5, sigmoid(0.5), sigmoid(0.75), sigmoid(0.75), sigmoid(1.75)],
                                           abs=1e-12)
    assert fa.causal_auc(curve)[0] == pytest.approx(0.664198282634199, abs=1e-12)


def test_two_pixels_per_step_and_the_known_ends() -> None:
    inputs, maps, classes = one_image()
    curve = fa.causal_curves(red_logits, inputs, maps, classes, "deletion", steps=2, substrate="black",
                             image_scores=torch.tensor([0.123], dtype=torch.float64))
    # step 2: pixels 1 and 2, then 3 and 0; the first score is the given one (no forward pass)
    assert curve[0].tolist() == pytest.approx([0.123, sigmoid(1.0), 0.5], abs=1e-12)
    ins = fa.causal_curves(red_logits, inputs, maps, classes, "insertion", steps=2, substrate="black",
                           image_scores=torch.tensor([0.456], dtype=torch.float64))
    assert ins[0].tolist() == pytest.approx([0.5, sigmoid(0.75), 0.456], abs=1e-12)


def test_step_counts_follow_rise() -> None:
    assert fa.step_counts(112 * 112, 16) == [784 * k for k in range(17)]
    assert fa.step_counts(9, 2) == [0, 5, 9]  # step ceil(9/2) = 5, the last step changes 4
    assert fa.step_counts(10, 4) == [0, 3, 6, 9, 10]
    assert fa.step_counts(3, 8) == [0, 1, 2, 3]  # never more steps than pixels
    with pytest.raises(CamlabError, match="--faith_steps"):
        fa.step_counts(4, 0)


def test_auc_on_known_curves() -> None:
    assert fa.causal_auc(np.array([[1.0, 0.5, 0.0], [0.3, 0.3, 0.3], [0.0, 1.0, 0.0]])).tolist() == \
        pytest.approx([0.5, 0.3, 0.5])
    assert fa.causal_auc(np.array([1.0, 0.0])).tolist() == [0.5]
    with pytest.raises(CamlabError):
        fa.causal_auc(np.array([[1.0]]))


def test_blur_kernel_is_rises_gkern() -> None:
    kernel = fa.gaussian_kernel()
    assert kernel.shape == (11, 11) and kernel.sum() == pytest.approx(1.0)
    assert np.allclose(kernel, kernel.T) and np.allclose(kernel, kernel[::-1])
    assert kernel[5, 5] == kernel.max() and kernel[0, 0] == kernel.min()
    ndimage = pytest.importorskip("scipy.ndimage")  # what RISE's gkern calls
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    assert np.abs(kernel - ndimage.gaussian_filter(impulse, 5)).max() < 1e-15


def test_blur_substrate_keeps_a_flat_interior_and_zero_pads() -> None:
    flat = torch.ones(1, 3, 16, 16)
    blurred = fa.SUBSTRATES["blur"](flat)
    assert blurred.shape == flat.shape
    assert blurred[0, :, 5:11, 5:11] == pytest.approx(torch.ones(3, 6, 6), abs=1e-6)  # the kernel sums to 1
    assert blurred[0, 0, 0, 0] < 0.5  # zero padding (the mean colour) enters at the border
    assert torch.equal(fa.SUBSTRATES["mean"](flat), torch.zeros_like(flat))


def test_torchcam_deletion_insertion_agrees_where_the_steps_divide_the_image() -> None:
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    torch.manual_seed(0)
    inputs = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    maps = torch.rand(3, 4, 4, dtype=torch.float64)
    classes = torch.tensor([0, 1, 0])
    metric = torchcam_metrics.DeletionInsertionMetric(FixedMaps(RedModel(), maps), lambda z: z.softmax(dim=-1),
                                                      steps=4, baseline=fa.SUBSTRATES["blur"])
    metric.update(inputs, class_idx=classes.tolist())
    ours_ins = fa.causal_auc(fa.causal_curves(red_logits, inputs, maps, classes, "insertion", 4)).mean()
    assert metric.summary()["insertion_auc"] == pytest.approx(ours_ins, abs=1e-9)
    zeros = torchcam_metrics.DeletionInsertionMetric(FixedMaps(RedModel(), maps), lambda z: z.softmax(dim=-1),
                                                     steps=4)  # its default baseline: zeros = RISE's deletion
    zeros.update(inputs, class_idx=classes.tolist())
    ours_del = fa.causal_auc(fa.causal_curves(red_logits, inputs, maps, classes, "deletion", 4)).mean()
    assert zeros.summary()["deletion_auc"] == pytest.approx(ours_del, abs=1e-9)


def test_torchcam_deletion_integrates_a_partial_last_step_by_its_width_rise_does_not() -> None:
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    inputs, maps, classes = normalised([[1.0, 0.5, 0.25]] * 3), torch.rand(1, 3, 3), torch.tensor([0])
    metric = torchcam_metrics.DeletionInsertionMetric(FixedMaps(RedModel(), maps), lambda z: z.softmax(dim=-1),
                                                      steps=2)
    metric.update(inputs, class_idx=[0])
    curve = fa.causal_curves(red_logits, inputs, maps, classes, "deletion", 2)[0]  # 3 scores: 0, 5, 9 pixels
    assert fa.causal_auc(curve)[0] == pytest.approx((curve[0] / 2 + curve[1] + curve[2] / 2) / 2)  # RISE
    assert metric.summary()["deletion_auc"] == pytest.approx(np.trapezoid(curve, [0, 5 / 9, 1]), abs=1e-9)


def test_faithfulness_gives_every_per_image_measure() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3 * 4 * 4, 3).double()
    inputs, maps = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.rand(5, 4, 4, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 0, 1])
    found = fa.faithfulness(lambda x: lin(x.flatten(1)), inputs, maps, classes, steps=4, batch=3)
    assert set(found) == {"y", "o", "drop", "increase", "o_mean", "drop_mean", "increase_mean", "deletion", "insertion"}
    assert all(v.shape == (5,) and v.dtype == np.float64 for v in found.values())
    assert ((0 <= found["drop"]) & (found["drop"] <= 100)).all() and set(found["increase"]) <= {0.0, 100.0}
    full = fa.causal_curves(lambda x: lin(x.flatten(1)), inputs, maps, classes, "deletion", 4, batch=4)
    assert full[:, 0] == pytest.approx(found["y"], abs=1e-12)  # the unchanged image: Y
    assert fa.causal_auc(full) == pytest.approx(found["deletion"], abs=1e-12)


def test_bad_shapes_and_names_are_one_line_errors() -> None:
    inputs, maps, classes = one_image()
    with pytest.raises(CamlabError, match="faithfulness"):
        fa.confidences(red_logits, inputs, maps[0], classes)
    with pytest.raises(CamlabError, match="mode"):
        fa.causal_curves(red_logits, inputs, maps, classes, "erase")
    with pytest.raises(CamlabError, match="substrate"):
        fa.causal_curves(red_logits, inputs, maps, classes, "deletion", substrate="noise")


# ------------------------------------------------------------- in the WSOL report and tables
def _report(method: str, mode: str, drop: list[float], deletion: list[float]) -> dict:
    n = len(drop)
    per_image = {"drop": np.array(drop), "increase": np.zeros(n), "deletion": np.array(deletion),
                 "insertion": np.full(n, 0.5)}
    return {"exp_id": method, "method": method, "mode": mode, "seed": 0, "data_root": "d", "n_test": n,
            "per_image": per_image, "avg_drop": float(np.mean(drop)), "increase_conf": 0.0,
            "deletion_auc": float(np.mean(deletion)), "insertion_auc": 0.5, "faith_steps": 16}


def test_lower_is_better_measures_read_their_intervals_the_other_way() -> None:
    from research.wsol import _verdict
    below, above = [(-0.2, -0.3, -0.1)], [(0.2, 0.1, 0.3)]
    assert (_verdict(below, higher_is_better=False), _verdict(above, higher_is_better=False)) == ("better", "worse")
    assert (_verdict(below), _verdict(above)) == ("worse", "better")
    assert _verdict([(0.0, -0.1, 0.1)], higher_is_better=False) == "no clear difference"


def test_faithfulness_summary_bootstraps_each_measure_against_cam() -> None:
    from research.wsol import faithfulness_section, versus_cam
    cam = _report("CAM", "CAM", [40.0, 50.0, 60.0, 30.0], [0.5, 0.6, 0.4, 0.5])
    other = _report("other", "SEG", [10.0, 20.0, 30.0, 5.0], [0.5, 0.6, 0.4, 0.5])  # every drop 25–30 lower
    found = versus_cam(other, cam, resamples=200)
    assert set(found) == {"drop", "increase", "deletion", "insertion"}
    assert found["drop"][0] == pytest.approx(-28.75)  # the means' difference: 16.25 − 45
    assert found["drop"][2] < 0 and found["deletion"] == (0.0, 0.0, 0.0)
    text = faithfulness_section([cam, other])
    row = next(line for line in text.splitlines() if line.startswith("| - | other |"))
    assert "Avg Drop: better" in row and "deletion AUC: no clear difference" in row  # lower drop: more faithful
    assert "-28.750 [" in row
    assert faithfulness_section([{k: v for k, v in cam.items() if k != "avg_drop"}]) == ""  # --faith_steps 0


def test_map_faithfulness_scores_a_models_inputs_in_batches() -> None:
    import dataloader
    import model
    from camlab.images import ImageSet
    from research.wsol import map_faithfulness
    torch.manual_seed(0)
    net = model.CAMModel(num_classes=3, weights="none").eval()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    data = ImageSet(images, torch.tensor([0, 1, 2, 0, 1]), [str(i) for i in range(5)], ["a", "b", "c"])
    maps = torch.rand(5, 16, 16).numpy()
    found = map_faithfulness(net, data, maps, img_size=32, steps=4, batch=2)
    with torch.inference_mode():
        inputs = dataloader.to_model_input(images, 32)
    whole = fa.faithfulness(lambda x: net(x)[0], inputs, torch.from_numpy(maps), data.labels, steps=4)
    assert set(found) == set(whole)
    for key in whole:
        assert found[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6)  # float32 batches of 2 against 5
