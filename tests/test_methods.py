"""ACoL heads and recipes, CSE's erasing objective: hand-computed erasing, gradients reaching
every head, the frozen classifier left untouched, and both modes end to end on a tiny set."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import main
import model
import train
from camlab.cams import minmax, normalize_cam, select_class
from camlab.methods import CseObjective, acol_objective, erased_class_loss, rest_cross_entropy
from camlab.utils import CamlabError
from model import CAMModel, ModelConfig
from research.wsol import FAITH_COLUMNS, METHOD_COLUMNS, wsol_report

RECIPES = ("p", "pp", "pn", "ppn", "pnp")


def _hand_model(recipe: str, deltas: tuple[float, ...], weights: list[float]) -> CAMModel:
    """One feature channel, one class; head i has weight weights[i] and bias 0."""
    net = CAMModel(num_classes=1, weights="none", recipe=recipe, deltas=deltas)
    net.heads = nn.ModuleList(nn.Linear(1, 1) for _ in recipe)
    for head, w in zip(net.heads, weights):
        head.weight.data.fill_(w)
        head.bias.data.zero_()
    return net


def test_second_head_sees_features_erased_where_the_first_map_reaches_delta() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # min-max: 0, 1/3, 2/3, 1
    net = _hand_model("pp", (0.6,), [1.0, 2.0])
    first, second = net.run_heads(features, torch.tensor([0]))
    assert torch.equal(first.cams, features)
    assert first.scores.item() == pytest.approx(2.5)
    # 3 and 4 (normalised 2/3 and 1, >= 0.6) are zeroed: head 2 sees [[1, 2], [0, 0]], times 2
    assert torch.equal(second.cams, torch.tensor([[[[2.0, 4.0], [0.0, 0.0]]]]))
    assert second.scores.item() == pytest.approx(1.5)
    # evaluated map: max of the p heads' min-max maps: max([0,1/3,2/3,1], [1/2,1,0,0])
    fused = net.localization_cam(features, torch.tensor([0]))
    assert torch.allclose(fused, torch.tensor([[[0.5, 1.0], [2 / 3, 1.0]]]))


def test_n_heads_do_not_erase_and_p_heads_accumulate() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # recipe pnp, deltas 0.9 and 0.5; head 1's normalised map is [[0, 1/3], [2/3, 1]]
    net = _hand_model("pnp", (0.9, 0.5), [1.0, -1.0, 1.0])
    _, adversarial, third = net.run_heads(features, torch.tensor([0]))
    # head 2 (n): only 1 >= 0.9 is erased
    assert torch.equal(adversarial.cams, torch.tensor([[[[-1.0, -2.0], [-3.0, 0.0]]]]))
    # head 3 (p): erased by head 1 alone (an n head's map erases nothing): 2/3 and 1 >= 0.5
    assert torch.equal(third.cams, torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]]))


def test_deltas_expand_and_bad_recipes_are_named() -> None:
    assert ModelConfig(recipe="ppn", deltas=(0.7,)).deltas == (0.7, 0.7)
    assert ModelConfig(recipe="p").deltas == ()
    assert ModelConfig(recipe="pn", deltas=(0.9,)).deltas == (0.9,)
    for recipe in ("", "n", "np", "px"):
        with pytest.raises(CamlabError, match="--recipe"):
            ModelConfig(recipe=recipe)
    with pytest.raises(CamlabError, match="--delta"):
        ModelConfig(recipe="ppp", deltas=(0.5, 0.6, 0.7))
    with pytest.raises(CamlabError, match="--delta"):
        ModelConfig(recipe="pp", deltas=(1.5,))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_head_gets_a_gradient_and_nothing_is_nan(recipe: str) -> None:
    torch.manual_seed(0)
    net = CAMModel(num_classes=3, weights="none", recipe=recipe, deltas=(0.7,))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    step = acol_objective(net, images, labels)
    step.loss.backward()
    assert torch.isfinite(step.loss)
    assert set(step.terms) == {f"{kind}{i}" for i, kind in enumerate(recipe, start=1)}
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    for i, head in enumerate(net.heads):
        assert head.weight.grad.abs().sum() > 0, f"head {i + 1}"


def test_acol_loss_is_the_sum_of_head_losses() -> None:
    torch.manual_seed(0)
    net = CAMModel(num_classes=3, weights="none", recipe="pn", deltas=(0.6,))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([2, 1])
    step = acol_objective(net, images, labels)
    first, second = net.run_heads(net.forward_features(images), labels)
    assert step.terms["p1"] == pytest.approx(nn.functional.cross_entropy(first.scores, labels).item(), rel=1e-5)
    assert step.terms["n2"] == pytest.approx(rest_cross_entropy(second.scores, labels).item(), rel=1e-5)
    assert step.loss.item() == pytest.approx(step.terms["p1"].item() + step.terms["n2"].item(), rel=1e-5)
    scores, _, _ = net(images)  # the first head's GAP-then-linear scores are its 1×1-conv-then-GAP ones
    assert torch.allclose(scores, first.scores, atol=1e-5)


def test_erased_class_loss_by_hand() -> None:
    # logits (log 3, 0, 0): p_y = 3/5, loss -log(2/5); logits (0, 0): p_y = 1/2, loss log 2
    three = torch.tensor([[math.log(3.0), 0.0, 0.0]])
    assert erased_class_loss(three, torch.tensor([0])).item() == pytest.approx(-math.log(2 / 5))
    two = torch.tensor([[0.0, 0.0]])
    assert erased_class_loss(two, torch.tensor([1])).item() == pytest.approx(math.log(2))
    big = torch.tensor([[1000.0, 0.0, 0.0]])  # stable: p_y ≈ 1 gives ≈ 1000 - log 2, not inf
    assert erased_class_loss(big, torch.tensor([0])).item() == pytest.approx(1000 - math.log(2), rel=1e-6)


def test_cse_trains_the_generator_through_the_frozen_classifier() -> None:
    torch.manual_seed(0)
    classifier = CAMModel(num_classes=3, weights="none")
    frozen = {k: v.clone() for k, v in classifier.state_dict().items()}
    net = CAMModel(num_classes=3, weights="none")
    objective = CseObjective(classifier, erase_weight=0.3, erase_growth=0.05, area_weight=0.5)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    net.train()
    step = objective(net, images, labels, None, 3)
    expected = step.terms["ce"] + (0.3 + 0.05 * 2) * step.terms["erase"] + 0.5 * step.terms["area"]
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0 <= step.terms["area"] <= 1
    step.loss.backward()
    erase_grads = {n: p.grad.clone() for n, p in net.backbone.named_parameters()}
    net.zero_grad()
    nn.functional.cross_entropy(net(images)[0], labels).backward()
    # the erasing term reaches the generator's backbone through the mask
    assert any(not torch.allclose(erase_grads[n], p.grad) for n, p in net.backbone.named_parameters())
    assert not classifier.training
    assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in classifier.state_dict().items())  # BN stats too


def _run(tiny_lab, tmp_path, monkeypatch, *extra: str) -> dict:
    monkeypatch.chdir(tmp_path)
    argv = ["--data_root", str(tiny_lab), "--img_size", "32", "--epochs", "2", "--batch_size", "8",
            "--weights", "none", "--quiet", "--device", "cpu", *extra]
    assert main.main(argv) == 0
    exp_id = extra[extra.index("--exp_id") + 1]
    return json.loads((tmp_path / "checkpoints" / exp_id / "metrics.json").read_text())


def test_acol_and_cse_modes_train_and_evaluate_end_to_end(tiny_lab, tmp_path, monkeypatch) -> None:
    metrics = _run(tiny_lab, tmp_path, monkeypatch, "--mode", "ACOL", "--recipe", "ppn",
                   "--delta", "0.6", "0.9", "--exp_id", "acol")
    assert 0 <= metrics["test_acc"] <= 1
    net, ckpt = model.load_checkpoint(tmp_path / "checkpoints" / "acol" / "best.pth")
    assert net.config.recipe == "ppn" and net.config.deltas == (0.6, 0.9)
    header = (tmp_path / "checkpoints" / "acol" / "log.csv").read_text().splitlines()[0]
    assert {"train_p1", "train_p2", "train_n3", "val_p1"} <= set(header.split(","))
    _run(tiny_lab, tmp_path, monkeypatch, "--mode", "CAM", "--exp_id", "oc")
    metrics = _run(tiny_lab, tmp_path, monkeypatch, "--mode", "CSE", "--oc_exp", "oc", "--exp_id", "cse",
                   "--area_weight", "0.1")
    assert metrics["args"]["oc_exp"] == "oc" and 0 <= metrics["test_acc"] <= 1
    net, _ = model.load_checkpoint(tmp_path / "checkpoints" / "cse" / "best.pth")
    assert net.config.recipe == "p"  # CSE trains a plain CAM network


def test_old_checkpoints_with_an_fc_head_still_load(tmp_path) -> None:
    net = CAMModel(num_classes=2, weights="none")
    state = {("fc." + k[len("heads.0."):] if k.startswith("heads.0.") else k): v
             for k, v in net.state_dict().items()}
    torch.save({"format": model.CHECKPOINT_FORMAT, "model": state,
                "model_config": {"num_classes": 2, "backbone": "resnet18", "cut": "layer2"}}, tmp_path / "old.pth")
    loaded, _ = model.load_checkpoint(tmp_path / "old.pth")
    assert torch.equal(loaded.fc.weight, net.fc.weight)


def test_methods_comparison_trains_once_and_tabulates_every_measure(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    import csv

    import iou
    monkeypatch.chdir(tmp_path)
    argv = ["--methods", "--seeds", "0", "1", "--epochs", "1", "--img_size", "32", "--batch_size", "8",
            "--weights", "none", "--data_root", str(tiny_lab), "--device", "cpu", "--n_threshold", "6",
            "--faith_steps", "2"]  # 2 deletion/insertion steps: 24 reports stay cheap
    assert iou.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "report" / "methods.csv")))
    names = ["cam", "seg", "acol_pp", "acol_pp_grow1", "acol_pn", "cse"]
    assert [r["experiment"] for r in rows] == [f"methods_{n}_s{s}" for s in (0, 1) for n in names]
    methods = ["CAM", "SEG rotate+hflip", "ACoL pp conv256 δ=0.6", "ACoL pp conv256 δ=0.6 grow 1",
               "ACoL pn conv256 δ=0.9", "CSE (area weight 0)"]
    assert [r["method"] for r in rows[:6]] == methods
    assert [r["seed"] for r in rows] == ["0"] * 6 + ["1"] * 6
    for r in rows:
        metrics = json.loads((tmp_path / "checkpoints" / r["experiment"] / "metrics.json").read_text())
        assert float(r["test_acc"]) == pytest.approx(metrics["test_acc"], abs=1e-4)
        assert metrics["args"]["seed"] == int(r["seed"])
        values = {k: float(r[k]) for k, _ in METHOD_COLUMNS}
        percent = {"avg_drop", "increase_conf", "avg_drop_mean", "increase_conf_mean"}  # these are percent
        assert all(0 <= v <= (100 if k in percent else 1) for k, v in values.items())
        assert values["top1_loc"] <= values["gt_known_loc"]
        assert r["acc_body"] == "-"  # not the embedded benchmark: no diagnostics
    for seed in (0, 1):
        cse = json.loads((tmp_path / "checkpoints" / f"methods_cse_s{seed}" / "metrics.json").read_text())
        assert cse["args"]["oc_exp"] == f"methods_cam_s{seed}"
    assert (tmp_path / "report" / "methods_grid.png").stat().st_size > 0
    md = (tmp_path / "report" / "methods.md").read_text()
    assert md.count("| methods_") == 12
    localisation, faithfulness = md.split("\n### Faithfulness\n")
    summary = [line for line in localisation.splitlines() if line.startswith("| - | ")]
    assert [line.split(" | ")[1] for line in summary] == methods
    assert all(line.split(" | ")[2] == "0, 1" for line in summary)
    # every method but CAM has one interval per seed, and a verdict
    for line in summary[1:]:
        assert line.count("[") == 4 and ("IoU: " in line and "PxAP: " in line)
    # and the faithfulness summary: four intervals per seed against CAM, each measure's verdict
    faith = [line for line in faithfulness.split("\n### ")[0].splitlines() if line.startswith("| - | ")]
    assert [line.split(" | ")[1] for line in faith] == methods
    assert all(h in faithfulness for _, h in FAITH_COLUMNS)
    for line in faith[1:]:
        assert line.count("[") == 8 and all(f"{what}: " in line for what in
                                            ("Avg Drop", "Incr. Conf.", "deletion AUC", "insertion AUC"))
    capsys.readouterr()
    # --wsol evaluates every finished experiment again, without training
    assert iou.main(["--wsol", "--device", "cpu", "--n_threshold", "6", "--faith_steps", "2"]) == 0
    assert "epoch 1/1" not in capsys.readouterr().out
    again = list(csv.DictReader(open(tmp_path / "report" / "methods.csv")))
    assert sorted(r["experiment"] for r in again) == sorted(r["experiment"] for r in rows)
    assert {r["experiment"]: r["pxap"] for r in again} == {r["experiment"]: r["pxap"] for r in rows}


def test_diagnostics_of_a_run_on_the_embedded_benchmark(tmp_path, monkeypatch) -> None:
    from camlab import synthetic
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "bench"
    synthetic.generate_synthetic(root, seed=0, n_train=40, n_test=20, size=32, progress=False)
    metrics = train.train(train.RunConfig(mode="ACOL", exp_id="acol", epochs=1, img_size=32, batch_size=8,
                                          weights="none", data_root=str(root), device="cpu", acol_width=8,
                                          progress=False))
    assert metrics["benchmark"] == {"version": 2, "body_evidence": synthetic.BODY_EVIDENCE, "seed": 0, "size": 32}
    report = wsol_report("acol", n_threshold=10, device="cpu")
    assert report["acc_normal"] == pytest.approx(metrics["test_acc"])  # the redrawn test set is the files
    for key in ("acc_body", "acc_part", "on_part", "on_body", "on_background"):
        assert 0 <= report[key] <= 1
    assert len(report["heads"]) == 2  # ACoL pp: each p head's own map
    assert report["body_evidence"] == synthetic.BODY_EVIDENCE


def test_wsol_without_experiments_says_what_to_do(tmp_path, monkeypatch, capsys) -> None:
    import iou
    monkeypatch.chdir(tmp_path)
    assert iou.main(["--wsol"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python main.py --mode CAM" in err


def test_evaluation_reads_the_fused_map_of_the_p_heads() -> None:
    torch.manual_seed(0)
    net = CAMModel(num_classes=3, weights="none", recipe="pnp", deltas=(0.5,)).eval()
    images, classes = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with torch.inference_mode():
        features = net.forward_features(images)
        outs = net.run_heads(features, classes)
        fused = torch.maximum(minmax(select_class(outs[0].cams, classes)),
                              minmax(select_class(outs[2].cams, classes)))
        _, maps = model.localization_maps(net, images, (4, 4), "class", classes)
    expected = minmax(nn.functional.interpolate(normalize_cam(fused).unsqueeze(1), size=(4, 4),
                                                      mode="bilinear", align_corners=False)[:, 0])
    assert torch.allclose(maps, expected, atol=1e-6)
    head0 = minmax(select_class(outs[0].cams, classes))
    assert not torch.allclose(fused, head0)  # the second p head changes the map


def test_grid_rows_are_labelled_by_method_and_never_replace_one_another() -> None:
    from research.wsol import grid_labels
    reports = [{"exp_id": "a_cam_s0", "method": "CAM"}, {"exp_id": "b_cam_s0", "method": "CAM"},
               {"exp_id": "a_seg_s0", "method": "SEG rotate+hflip"}]
    assert grid_labels(reports, lambda r: r["method"]) == ["CAM (a_cam_s0)", "CAM (b_cam_s0)", "SEG rotate+hflip"]
    assert grid_labels(reports, lambda r: r["exp_id"]) == ["a_cam_s0", "b_cam_s0", "a_seg_s0"]


def test_the_sweep_draws_each_method_against_cam_at_each_setting(tmp_path, monkeypatch) -> None:
    """run_sweep on two tiny embedded benchmarks (at data/synthetic_be0 and _be1, where the
    sweep looks), CAM and SEG only: its tables and figures, and each setting's interval of SEG
    against the CAM of the same setting and seed."""
    import train
    from camlab import synthetic as gen
    from research import comparisons
    from research.wsol import sweep_intervals
    monkeypatch.chdir(tmp_path)
    for value in (0.0, 1.0):
        gen.generate_synthetic(gen.default_root(value), n_train=24, n_test=8, size=32, progress=False,
                               body_evidence=value)
    monkeypatch.setattr(comparisons, "METHODS", comparisons.METHODS[:2])
    base = train.RunConfig(epochs=1, img_size=32, batch_size=8, weights="none", device="cpu").checked()
    seen = []
    monkeypatch.setattr(comparisons, "sweep_intervals", lambda reports: seen.append(reports) or sweep_intervals(reports))
    text = comparisons.run_sweep(base, (0.0, 1.0), seeds=(0,), n_threshold=6, faith_steps=0,
                                 report_dir=tmp_path / "report")  # as the publication: localisation alone
    rows = [line.split(" | ")[:3] for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert rows == [["| 0", "CAM", "0"], ["| 0", "SEG rotate+hflip", "0"], ["| 1", "CAM", "0"],
                    ["| 1", "SEG rotate+hflip", "0"]]
    reports = seen[0]
    assert sorted((r["body_evidence"], r["exp_id"]) for r in reports) == [
        (0.0, "methods_be0_cam_s0"), (0.0, "methods_be0_seg_s0"), (1.0, "methods_be1_cam_s0"), (1.0, "methods_be1_seg_s0")]
    found = sweep_intervals(reports)
    assert list(found) == ["SEG rotate+hflip"] and set(found["SEG rotate+hflip"]) == {"ΔIoU", "ΔPxAP"}
    by_setting = dict(found["SEG rotate+hflip"]["ΔIoU"])
    assert sorted(by_setting) == [0.0, 1.0] and all(len(v) == 1 for v in by_setting.values())
    seg = next(r for r in reports if r["exp_id"] == "methods_be1_seg_s0")
    cam = next(r for r in reports if r["exp_id"] == "methods_be1_cam_s0")
    assert by_setting[1.0][0][0] == pytest.approx(seg["test_iou"] - cam["test_iou"], abs=1e-9)
    for name in ("sweep.csv", "sweep.md", "sweep.png", "sweep_intervals.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "report" / "sweep.csv")))
    assert len(rows) == 4 and all(r["pxap"] != "-" for r in rows)
    assert all(r[k] == "-" for r in rows for k in ("avg_drop", "increase_conf", "deletion_auc", "insertion_auc"))
