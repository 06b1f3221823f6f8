"""The command line end to end on a tiny dataset, and its one-line errors (exit code 2)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

import main
from conftest import ROOT

FAST = ["--img_size", "32", "--weights", "none", "--batch_size", "8", "--quiet"]


def run_main(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main.main(list(argv))
    except SystemExit as exit_:  # argparse exits on bad flags
        code = exit_.code
    return code, capsys.readouterr().err


def test_cam_run_writes_every_output(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_main(capsys, "--mode", "CAM", "--data_root", str(tiny_lab), "--epochs", "2",
                         "--exp_id", "e2e", *FAST)
    assert code == 0, err
    run = tmp_path / "checkpoints" / "e2e"
    assert {p.name for p in run.iterdir()} == {"best.pth", "last.pth", "metrics.json", "log.csv", "curves.png"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["best_epoch"] in (1, 2)
    assert metrics["weights"] == "random init" and metrics["args"]["img_size"] == 32
    assert metrics["n_train"] + metrics["n_val"] == 24 and metrics["n_test"] == 9
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(rows[0])
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["epoch"] == metrics["best_epoch"] and best["classes"] == ["red", "green", "blue"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_validation_writes_folds(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_main(capsys, "--data_root", str(tiny_lab), "--cv", "3", "--epochs", "1",
                         "--exp_id", "cv", *FAST)
    assert code == 0, err
    run = tmp_path / "checkpoints" / "cv"
    cv = json.loads((run / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [1, 2, 3]
    accs = [f["test_acc"] for f in cv["folds"]]
    assert cv["mean"]["test_acc"] == pytest.approx(sum(accs) / 3)
    assert all((run / f"fold{k}" / "best.pth").is_file() for k in (1, 2, 3))
    assert "mean ± std" in (run / "cv.md").read_text()


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_unknown_mode_and_dataset(capsys) -> None:
    line = _one_line_error(*run_main(capsys, "--mode", "SEGG"))
    assert "--mode" in line and "'SEGG'" in line
    line = _one_line_error(*run_main(capsys, "--dataset", "imagenet"))
    assert "--dataset" in line
    line = _one_line_error(*run_main(capsys, "--mode", "SEG", "--transform", "rotate+zoom"))
    assert "--transform" in line and "'zoom'" in line and "scale, rotate, rot90, hflip, vflip, translate" in line


def test_missing_data_root(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(*run_main(capsys, "--data_root", "nowhere", *FAST))
    assert "nowhere" in line and "does not exist" in line
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("exp_id", ["../outside", "a/b", "..", ""])
def test_exp_id_cannot_escape_checkpoints(exp_id, tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(*run_main(capsys, "--data_root", str(tiny_lab), "--exp_id", exp_id, *FAST))
    assert "--exp_id" in line
    assert not (tmp_path / "outside").exists()


def test_bad_label_names_file_and_line(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    txt = tiny_lab / "train_cls.txt"
    lines = txt.read_text().splitlines()
    lines[2] = "002.png x"
    txt.write_text("\n".join(lines) + "\n")
    line = _one_line_error(*run_main(capsys, "--data_root", str(tiny_lab), *FAST))
    assert "train_cls.txt" in line and "line 3" in line
    lines[2] = "002.png 12"
    txt.write_text("\n".join(lines) + "\n")
    line = _one_line_error(*run_main(capsys, "--data_root", str(tiny_lab), *FAST))
    assert "train_cls.txt" in line and "line 3" in line and "12" in line


def test_unreadable_image_is_named(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tiny_lab / "test" / "004.png").write_bytes(b"\x89PNG broken")
    line = _one_line_error(*run_main(capsys, "--data_root", str(tiny_lab), *FAST))
    assert "004.png" in line


def test_existing_run_is_not_overwritten(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "checkpoints" / "keep"
    run.mkdir(parents=True)
    (run / "best.pth").write_bytes(b"precious")
    line = _one_line_error(*run_main(capsys, "--data_root", str(tiny_lab), "--exp_id", "keep", *FAST))
    assert "--overwrite" in line and "--exp_id" in line
    assert (run / "best.pth").read_bytes() == b"precious"


def test_bad_numbers_are_flag_errors(capsys) -> None:
    assert "--epochs" in _one_line_error(*run_main(capsys, "--epochs", "0"))
    assert "--lr" in _one_line_error(*run_main(capsys, "--lr", "-1"))
    assert "--epochs" in _one_line_error(*run_main(capsys, "--epochs", "two"))


def test_real_process_exits_2_without_traceback(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--data_root", str(tmp_path / "no")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
