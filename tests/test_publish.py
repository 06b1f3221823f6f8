"""The publication (``iou.py --publish``): each table's runs trained once, its files copied whole
with their digests in the manifest, and a second pass, every run reused, rewriting every file
byte for byte."""
from __future__ import annotations

import json

import pytest

import iou
from camlab.utils import CamlabError
from research import publish


def tiny_plan(root) -> tuple[publish.Table, ...]:
    return publish.make_plan(publish.PlanSettings(
        research=("--weights", "none"), seeds=(0,),
        extra=("--epochs", "1", "--img_size", "32", "--batch_size", "8", "--weights", "none", "--data_root", str(root),
               "--device", "cpu"),
        extra_iou=("--n_threshold", "6")))


def test_the_plan_names_every_published_table_once_in_order() -> None:
    names = [t.name for t in publish.PLAN]
    assert names == ["lab", "ablation", "methods", "extractors", "bench_cpu", "bench_data_cpu", "semseg", "sweep", "cv",
                     "semseg_rw", "bench_wsol_eval_cpu"]
    methods = publish.TABLES["methods"]
    assert methods.command == "python iou.py --methods --seeds 0 1 2 --img_size 112 --weights none"
    runs = methods.runs()
    assert len(runs) == 18 and {(c.img_size, c.weights, c.seed) for c in runs} == {
        (112, "none", s) for s in (0, 1, 2)}
    sweep = publish.TABLES["sweep"].runs()
    # 0, 0.85 (the methods table's own runs) and 1 at three seeds, 0.25, 0.5 and 0.75 at one
    assert len(sweep) == 6 * (3 + 1 + 1 + 1 + 3 + 3)
    assert {c.exp_id for c in sweep} >= {c.exp_id for c in runs}
    assert {c.body_evidence for c in sweep if c.exp_id.startswith("methods_be0.5_")} == {0.5}


def test_the_sweep_is_scored_without_faithfulness_and_says_so(monkeypatch) -> None:
    """The sweep tables localisation alone: its command names --faith_steps 0 and its write
    passes it to run_sweep (the scoring itself with 0 steps: test_methods' sweep test)."""
    from research import comparisons
    sweep = publish.TABLES["sweep"]
    assert sweep.command.endswith("--img_size 112 --weights none; --faith_steps 0)")
    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise CamlabError("stop here")

    monkeypatch.setattr(comparisons, "run_sweep", stop)
    with pytest.raises(CamlabError, match="stop here"):
        sweep.write()
    assert seen["faith_steps"] == 0 and seen["seeds"] == (0,) and seen["scores"] == "reuse"


@pytest.mark.parametrize("table", ["methods", "extractors", "semseg", "semseg_rw"])
def test_the_comparisons_reuse_their_scored_reports_unless_rescore(tmp_path, monkeypatch, table) -> None:
    """Like its runs, a table's scored reports are reused (report/scores/); --rescore scores
    every one again, and the table's command (the manifest's) is the same either way."""
    monkeypatch.chdir(tmp_path)  # nothing is trained: the flags are caught before the command runs
    seen = []
    parse = publish._iou_args

    def caught(argv):
        args = parse(argv)
        seen.append(args.scores)
        raise CamlabError("stop here")
    monkeypatch.setattr(publish, "_iou_args", caught)
    rescored = {t.name: t for t in publish.make_plan(publish.PlanSettings(scores="rescore"))}
    for plan in (publish.TABLES, rescored):
        with pytest.raises(CamlabError, match="stop here"):
            plan[table].write()
    assert seen == ["reuse", "rescore"] and rescored[table].command == publish.TABLES[table].command
    assert "--scores" not in publish.TABLES[table].command
    called = {}
    monkeypatch.setattr(publish, "publish", lambda names, plan: called.update(names=names, plan=plan))
    assert publish.cli(["--tables", table, "--rescore"]) == 0
    assert called["names"] == [table]
    with pytest.raises(CamlabError, match="stop here"):
        {t.name: t for t in called["plan"]}[table].write()
    assert seen[-1] == "rescore" and not any(tmp_path.iterdir())


def test_the_estimate_uses_this_machines_runs_of_the_same_kind() -> None:
    cam = publish.TABLES["methods"].runs()[0]
    assert publish.estimate(cam, {}) == pytest.approx(publish.COST_112["CAM"])
    assert publish.estimate(cam, {publish._kind(cam): [10.0, 30.0]}) == pytest.approx(20.0)
    lab = publish.TABLES["lab"].runs()[0]  # 224 px: four times the pixels
    assert publish.estimate(lab, {}) == pytest.approx(4 * publish.COST_112["CAM"])
    assert publish.estimate(lab, {}, speed=2.5) == pytest.approx(10 * publish.COST_112["CAM"])


def two_methods(plan: tuple[publish.Table, ...]) -> publish.Table:
    """The methods table cut to CAM and SEG (the tiny runs of its first seed): its files are
    written by the methods table's own writer (scores, intervals against CAM, figure)."""
    from research.wsol import wsol_report, write_methods_report
    runs = plan[2].runs()[:2]

    def write():
        write_methods_report([wsol_report(cfg.exp_id, 6, "cpu", faith_steps=2) for cfg in runs])
        return {name: publish.REPORT_DIR / name for name in ("methods.md", "methods.csv", "methods_grid.png",
                                                             "methods_intervals.png", "methods_faithful.png")}
    return publish.Table("methods", plan[2].command, lambda: runs, write)


def test_publish_twice_rewrites_every_file_byte_for_byte(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report" / "published"
    plan = tiny_plan(tiny_lab)
    plan = (plan[0], two_methods(plan))
    first = publish.publish(None, out, plan)
    log = capsys.readouterr().out
    assert "[publish 1/4] lab: training cam" in log and "[publish 4/4] methods: training methods_seg_s0" in log
    assert log.count("published ") == 2
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"iou.md", "iou_full.csv", "iou_threshold.png", "compare_cam_seg.png", "cam_curves.png", "seg_grid.png",
            "methods.md", "methods.csv", "methods_grid.png", "methods_intervals.png", "methods_faithful.png", "runs.md",
            "manifest.json"} <= set(files)
    for table in ("lab", "methods"):
        for name, sha in first["tables"][table]["files"].items():
            assert publish.digest(out / name) == sha
    assert first["tables"]["methods"]["runs"] == ["methods_cam_s0", "methods_seg_s0"]
    runs_md = files["runs.md"].decode()
    assert runs_md.count("| methods_") == 2 and "| lab | cam | CAM |" in runs_md
    total = sum(json.loads((tmp_path / "checkpoints" / r / "metrics.json").read_text())["seconds"]
                for r in ["cam", "seg", "methods_cam_s0", "methods_seg_s0"])
    assert first["train_seconds"] == round(total)

    second = publish.publish(None, out, plan)
    log = capsys.readouterr().out
    assert ": training " not in log and log.count("reusing checkpoints/") >= 4
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert second == first


def test_iou_py_hands_publish_to_its_command_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(iou.subprocess, "call", lambda argv, cwd: seen.append(argv) or 0)
    assert iou.main(["--publish", "--plan"]) == 0
    assert seen[0][1:] == ["-m", "research.publish", "--plan"]


def test_a_damaged_manifest_is_one_line(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CamlabError, match="manifest.json is not JSON"):
        publish.read_manifest(tmp_path)


def test_the_results_figures_draw_and_refuse_nothing(tmp_path) -> None:
    import cv2

    from camlab import figures
    figures.plot_intervals({"SEG": {"ΔIoU": [(0.05, 0.03, 0.07), (0.01, -0.01, 0.03)]},
                            "ACoL": {"ΔIoU": [(-0.08, -0.09, -0.06)], "ΔPxAP": [(0.0, -0.01, 0.01)]}},
                           tmp_path / "forest.png", "t")
    figures.plot_scatter({"CAM": ([0.6, 0.62], [0.3, 0.35]), "Grad-CAM": ([0.55], [0.4])}, tmp_path / "s.png", "x", "y")
    for name in ("forest.png", "s.png"):
        image = cv2.imread(str(tmp_path / name))
        assert image is not None and image.shape[2] == 3 and min(image.shape[:2]) > 100
    with pytest.raises(CamlabError, match="nothing to draw"):
        figures.plot_intervals({}, tmp_path / "none.png")
    with pytest.raises(CamlabError, match="nothing to draw"):
        figures.plot_scatter({}, tmp_path / "none.png", "x", "y")


def test_a_run_stopped_before_its_metrics_goes_on_from_its_last_epoch(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    """``trained`` resumes a run folder that holds a last.pth but no metrics.json (a publication
    stopped mid-run), instead of training it again from the first epoch."""
    import train
    from research.comparisons import trained
    monkeypatch.chdir(tmp_path)
    cfg = train.RunConfig(exp_id="r", epochs=2, img_size=32, batch_size=8, weights="none", data_root=str(tiny_lab),
                          device="cpu", progress=False)
    first = trained(cfg)
    assert "epoch 2/2" in capsys.readouterr().out  # what a trained epoch prints
    (tmp_path / "checkpoints" / "r" / "metrics.json").unlink()
    again = trained(cfg)
    out = capsys.readouterr().out
    assert "epoch 1/2" not in out and "epoch 2/2" not in out  # both epochs were in last.pth: none trained again
    assert again["test_acc"] == first["test_acc"] and again["best_epoch"] == first["best_epoch"]


def test_a_table_another_publication_wrote_meanwhile_stays_in_the_manifest(tmp_path) -> None:
    """Two publications of different tables (one pausing while the other runs a benchmark): each
    re-reads the manifest before adding its table, so neither drops the other's."""
    out = tmp_path / "published"
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    other = publish.Table("b", "make b", lambda: [], lambda: {"b.txt": tmp_path / "b.txt"})

    def write_a():  # while table a is written, another process publishes table b
        publish.publish(["b"], out, (other,))
        return {"a.txt": tmp_path / "a.txt"}
    mine = publish.Table("a", "make a", lambda: [], write_a)
    manifest = publish.publish(["a"], out, (mine, other))
    assert set(manifest["tables"]) == {"a", "b"}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["tables"]["b"]["files"] == {"b.txt": publish.digest(out / "b.txt")}
    assert on_disk["tables"]["a"]["command"] == "make a"
