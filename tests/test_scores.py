"""Scored reports kept and reused (``iou.py --scores reuse``; ``iou.py --publish`` by default):
a report is reused only for the same run, settings, device and code; a damaged file is scored
again; a file system fault keeps the report; off writes nothing."""
from __future__ import annotations

import json
import pickle

import pytest

import train
from camlab.utils import CamlabError
from research import comparisons


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A finished run's metrics.json under tmp_path/checkpoints/r (all the key reads of a run)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "r").mkdir(parents=True)
    (tmp_path / "checkpoints" / "r" / "metrics.json").write_text(json.dumps({"seconds": 1.0}))
    return tmp_path


class Counter:
    """A scoring function that counts its calls and returns a new report each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"miou": 0.5, "call": self.calls}


def test_a_report_is_reused_for_the_same_run_settings_and_code(run) -> None:
    score = Counter()
    first = comparisons.scored("r", "wsol_cam", {"n": 6}, "cpu", score, "reuse")
    again = comparisons.scored("r", "wsol_cam", {"n": 6}, "cpu", score, "reuse")
    assert score.calls == 1 and first == again == {"miou": 0.5, "call": 1}
    [path] = (run / "report" / "scores" / "r").iterdir()
    assert path.name.startswith("wsol_cam-") and path.suffix == ".pkl"
    with path.open("rb") as f:
        kept = pickle.load(f)
    assert kept["report"] == first and kept["key"] == comparisons.score_key("r", "wsol_cam", {"n": 6}, "cpu")
    assert kept["key"]["device"] == "cpu" and kept["key"]["code"] == comparisons.code_fingerprint()


def test_other_settings_a_retrained_run_or_other_code_score_again(run, monkeypatch) -> None:
    score = Counter()
    comparisons.scored("r", "wsol_cam", {"n": 6}, "cpu", score, "reuse")
    assert comparisons.scored("r", "wsol_cam", {"n": 7}, "cpu", score, "reuse")["call"] == 2
    (run / "checkpoints" / "r" / "metrics.json").write_text(json.dumps({"seconds": 2.0}))  # trained again
    assert comparisons.scored("r", "wsol_cam", {"n": 7}, "cpu", score, "reuse")["call"] == 3
    monkeypatch.setattr(comparisons, "code_fingerprint", lambda: "other code")
    assert comparisons.scored("r", "wsol_cam", {"n": 7}, "cpu", score, "reuse")["call"] == 4
    assert comparisons.scored("r", "wsol_cam", {"n": 7}, "cpu", score, "reuse")["call"] == 4  # the last one kept
    # each setting has its own file (the sweep and the methods table score one run two ways), and so
    # does another thing scored of the same run
    assert comparisons.scored("r", "wsol_cam", {"n": 6}, "cpu", score, "reuse")["call"] == 5
    assert comparisons.scored("r", "wsol_cam", {"n": 7}, "cpu", score, "reuse")["call"] == 4
    assert comparisons.scored("r", "wsol_gradcam", {"n": 7}, "cpu", score, "reuse")["call"] == 6
    names = sorted(p.name.split("-")[0] for p in (run / "report" / "scores" / "r").iterdir())
    assert names == ["wsol_cam", "wsol_cam", "wsol_gradcam"]


def test_off_neither_reads_nor_writes_and_rescore_always_scores(run) -> None:
    score = Counter()
    assert comparisons.scored("r", "wsol_cam", {}, "cpu", score, "off")["call"] == 1
    assert not (run / "report").exists()
    assert comparisons.scored("r", "wsol_cam", {}, "cpu", score, "rescore")["call"] == 2
    assert comparisons.scored("r", "wsol_cam", {}, "cpu", score, "rescore")["call"] == 3
    assert comparisons.scored("r", "wsol_cam", {}, "cpu", score, "reuse")["call"] == 3  # rescore's file is kept
    with pytest.raises(CamlabError, match="--scores 'sometimes': choose from off, reuse, rescore"):
        comparisons.scored("r", "wsol_cam", {}, "cpu", score, "sometimes")


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps([1, 2, 3])])
def test_a_damaged_or_foreign_file_is_scored_again_and_replaced(run, capsys, content) -> None:
    score = Counter()
    comparisons.scored("r", "wsol_cam", {}, "cpu", score, "rescore")
    [path] = (run / "report" / "scores" / "r").iterdir()
    path.write_bytes(content)
    assert comparisons.scored("r", "wsol_cam", {}, "cpu", score, "reuse")["call"] == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cannot read report/scores/r/{path.name} (") and err.endswith("); scoring again\n")
    assert comparisons.scored("r", "wsol_cam", {}, "cpu", score, "reuse")["call"] == 2


def test_a_folder_that_cannot_be_written_keeps_the_report_and_says_so(run, capsys) -> None:
    (run / "report").mkdir()
    (run / "report" / "scores").write_text("a file where the folder goes")  # mkdir fails, even as root
    report = comparisons.scored("r", "wsol_cam", {}, "cpu", Counter(), "reuse")
    assert report == {"miou": 0.5, "call": 1}
    err = capsys.readouterr().err
    assert err.startswith("warning: cannot write report/scores/r/wsol_cam-") and len(err.splitlines()) == 1
    assert (run / "report" / "scores").read_text() == "a file where the folder goes"


def test_the_methods_tables_cam_report_is_the_extractors_tables(run, monkeypatch) -> None:
    """The methods comparison's report of ``methods_cam_s0`` and the extractors comparison's CAM
    report of the same run, its test split read whole, are one file: the second table reads it
    without loading the run. Asked to stream the split, it scores again (a streamed report has no
    mean IoU)."""
    (run / "checkpoints" / "methods_cam_s0").mkdir()
    (run / "checkpoints" / "methods_cam_s0" / "metrics.json").write_text("{}")
    base = train.RunConfig(epochs=1, img_size=32, weights="none", device="cpu")
    cam = comparisons.method_configs(base)[0]
    assert cam.exp_id == "methods_cam_s0"
    monkeypatch.setattr(comparisons, "trained", lambda cfg: {})
    monkeypatch.setattr(comparisons, "method_configs", lambda *a, **k: [cam])
    monkeypatch.setattr(comparisons, "wsol_report", lambda *a, **k: {"method": "CAM", "acc_body": 0.25, "pxap": 0.75})
    [report] = comparisons.method_reports(base, n_threshold=6, faith_steps=2, scores="reuse")

    def refuse(*args, **kwargs):
        raise AssertionError("scored again")
    monkeypatch.setattr(comparisons, "wsol_report", refuse)
    monkeypatch.setattr(comparisons.Experiment, "load", refuse)
    [again] = comparisons.extractor_reports(base, n_threshold=6, extractors=("cam",), faith_steps=2, scores="reuse",
                                            in_memory="always")
    assert again == {**report, "method": "CAM"} and report["pxap"] == 0.75
    for other in (dict(n_threshold=7), dict(in_memory="never")):
        with pytest.raises(AssertionError, match="scored again"):
            comparisons.extractor_reports(base, **{"n_threshold": 6, "in_memory": "always", **other},
                                          extractors=("cam",), faith_steps=2, scores="reuse")


def test_a_file_the_scoring_makes_and_the_libraries_are_in_the_key(run, monkeypatch) -> None:
    """The random walk's affinity network (trained by the first scoring) keys its reports: the
    key is taken again after scoring, so the next pass reuses it, and a network trained again
    scores again; so does another version of a library."""
    net = run / "checkpoints" / "r" / "affinity.pth"
    calls = []

    def walk() -> dict:
        calls.append(1)
        if not net.exists():
            net.write_bytes(b"weights 1")
        return {"miou": 0.25}
    for _ in range(2):
        assert comparisons.scored("r", "semseg_1scale", {}, "cpu", walk, "reuse", depends=("affinity.pth",)) == {
            "miou": 0.25}
    assert len(calls) == 1
    net.write_bytes(b"weights 2")
    comparisons.scored("r", "semseg_1scale", {}, "cpu", walk, "reuse", depends=("affinity.pth",))
    assert len(calls) == 2
    real = comparisons._version
    monkeypatch.setattr(comparisons, "_version", lambda name: "0.0" if name == "torchcam" else real(name))
    comparisons.scored("r", "semseg_1scale", {}, "cpu", walk, "reuse", depends=("affinity.pth",))
    assert len(calls) == 3
    key = comparisons.score_key("r", "semseg_1scale", {}, "cpu", ("affinity.pth",))
    assert key["libraries"]["torchcam"] == "0.0" and key["libraries"]["numpy"] == __import__("numpy").__version__
    assert key["files"] == {"affinity.pth": __import__("hashlib").sha256(b"weights 2").hexdigest()}
