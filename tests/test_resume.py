"""Reliability: a run killed with SIGKILL and resumed ends exactly as one never stopped; resume
refuses other settings; a non-finite loss keeps the last good checkpoints; checkpoints that
need code to unpickle, or are cut short, are refused without a traceback."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import model
import train
from camlab import methods
from camlab.runtime import random_states, restore_random_states, seed_everything
from camlab.utils import CamlabError
from conftest import ROOT, write_lab_layout

ARGS = ["--img_size", "32", "--batch_size", "8", "--weights", "none", "--device", "cpu", "--quiet",
        "--deterministic", "--epochs", "3"]


def _main_process(cwd: Path, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _epochs_logged(run: Path) -> int:
    try:
        return len((run / "log.csv").read_text().splitlines()) - 1
    except OSError:
        return 0


# the uninterrupted run's data path, then the killed and resumed run's
PATHS = {"in memory": (["--data_in_memory", "always"], ["--data_in_memory", "always"], ["--data_in_memory", "always"]),
         "streamed": (["--data_in_memory", "always"], ["--data_in_memory", "never", "--workers", "1"],
                      ["--data_in_memory", "never", "--workers", "2"])}


@pytest.mark.parametrize("path", PATHS)
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, path) -> None:
    """A streamed run (one worker process, resumed with two) killed after an epoch ends exactly as an
    uninterrupted run of the in-memory path."""
    data = write_lab_layout(tmp_path / "data", n_train=40, n_test=9, size=16)
    whole_path, cut_path, resumed_path = PATHS[path]
    common = ["--data_root", str(data), *ARGS]
    reference = _main_process(tmp_path, *common, *whole_path, "--exp_id", "whole")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    killed = _main_process(tmp_path, *common, *cut_path, "--exp_id", "cut")
    run = tmp_path / "checkpoints" / "cut"
    deadline = time.monotonic() + 300
    while _epochs_logged(run) < 1 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "metrics.json").exists()
    stopped_after = _epochs_logged(run)
    assert 1 <= stopped_after < 3

    again = _main_process(tmp_path, *common, *cut_path, "--exp_id", "cut")  # without --resume: refused, kept
    assert again.wait(timeout=120) == 2 and "--resume" in again.stderr.read()
    resumed = _main_process(tmp_path, *common, *resumed_path, "--exp_id", "cut", "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    whole = tmp_path / "checkpoints" / "whole"
    assert (run / "log.csv").read_text() == (whole / "log.csv").read_text()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole, run)]
    assert metrics[0]["test_acc"] == metrics[1]["test_acc"]
    assert metrics[0]["best_epoch"] == metrics[1]["best_epoch"]
    a, b = (torch.load(d / "best.pth", weights_only=True)["model"] for d in (whole, run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, *extra: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    code = main.main(["--data_root", str(tiny_lab), "--img_size", "32", "--batch_size", "8",
                      "--weights", "none", "--device", "cpu", "--quiet", *extra])
    return code, capsys.readouterr().err


def test_resume_refuses_other_settings(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    assert _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, "--epochs", "1", "--exp_id", "r")[0] == 0
    before = (tmp_path / "checkpoints" / "r" / "last.pth").read_bytes()
    code, err = _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, "--epochs", "1", "--exp_id", "r",
                                "--resume", "--lr", "0.01", "--cut", "layer1")
    assert code == 2 and err.count("\n") == 1
    assert "--lr" in err and "--cut" in err and "other settings" in err
    assert (tmp_path / "checkpoints" / "r" / "last.pth").read_bytes() == before
    code, err = _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, "--exp_id", "nothing", "--resume")
    assert code == 2 and "no run to continue" in err


def test_resume_of_a_finished_run_changes_nothing(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    args = ("--epochs", "2", "--exp_id", "f")
    assert _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, *args)[0] == 0
    run = tmp_path / "checkpoints" / "f"
    log, best = (run / "log.csv").read_text(), (run / "best.pth").read_bytes()
    acc = json.loads((run / "metrics.json").read_text())["test_acc"]
    assert _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, *args, "--resume")[0] == 0
    assert (run / "log.csv").read_text() == log and (run / "best.pth").read_bytes() == best
    assert json.loads((run / "metrics.json").read_text())["test_acc"] == acc


def test_cv_resume_skips_finished_folds(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    args = ("--epochs", "1", "--cv", "2", "--exp_id", "cv")
    assert _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, *args)[0] == 0
    fold1 = (tmp_path / "checkpoints" / "cv" / "fold1" / "best.pth").read_bytes()
    (tmp_path / "checkpoints" / "cv" / "fold2" / "metrics.json").unlink()  # as if killed in fold 2
    monkeypatch.chdir(tmp_path)
    assert main.main(["--data_root", str(tiny_lab), "--img_size", "32", "--batch_size", "8", "--weights",
                      "none", "--device", "cpu", "--quiet", *args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "fold 1/2: finished before" in out and "fold 2/2" in out
    assert (tmp_path / "checkpoints" / "cv" / "fold1" / "best.pth").read_bytes() == fold1
    assert len(json.loads((tmp_path / "checkpoints" / "cv" / "cv.json").read_text())["folds"]) == 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoints(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    def poisoned(cfg, classes):
        def objective(net, images, labels, generator=None, epoch=1):
            step = train.cam_objective(net, images, labels)
            return step._replace(loss=step.loss * (float("nan") if epoch == 2 else 1.0))
        return objective
    monkeypatch.setitem(methods.METHODS, "CAM", dataclasses.replace(
        methods.METHODS["CAM"], objective=lambda cfg, classes, teacher: poisoned(cfg, classes)))
    code, err = _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, "--epochs", "3", "--exp_id", "nan")
    assert code == 2 and err.count("\n") == 1 and "nan" in err and "epoch 2" in err
    run = tmp_path / "checkpoints" / "nan"
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    _, best = model.load_checkpoint(run / "best.pth")
    assert best["epoch"] == 1 and _epochs_logged(run) == 1
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())


def test_random_states_round_trip_through_a_safe_checkpoint(tmp_path) -> None:
    seed_everything(3)
    states = random_states()
    torch.save({"random": states}, tmp_path / "s.pth")
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(99)
    restore_random_states(torch.load(tmp_path / "s.pth", weights_only=True)["random"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


class _Payload:
    """Unpickling this runs code: it would create the file named."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoints_that_need_code_or_are_cut_short_are_refused(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    assert _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, "--epochs", "1", "--exp_id", "v")[0] == 0
    run = tmp_path / "checkpoints" / "v"
    good = run / "last.pth"
    evil_marker = tmp_path / "pwned"
    ckpt = torch.load(good, weights_only=True)
    ckpt["extra"] = _Payload(evil_marker)
    torch.save(ckpt, good)  # pickles _Payload: loading it with full unpickling would run code
    code, err = _run_in_process(tiny_lab, tmp_path, monkeypatch, capsys, "--epochs", "1", "--exp_id", "v",
                                "--resume")
    assert code == 2 and err.count("\n") == 1 and "would run code when loaded" in err
    assert not evil_marker.exists()
    data = (run / "best.pth").read_bytes()
    (run / "best.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CamlabError, match="cannot be read safely: it is not a complete PyTorch checkpoint .truncated or damaged"):
        model.load_checkpoint(run / "best.pth")
    import visualize
    assert visualize.main(["--exp_id", "v", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
