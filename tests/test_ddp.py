"""DistributedDataParallel under torchrun on two CPU processes (gloo): one model, one set of
outputs written by rank 0, metrics over both shards, the loss falls; folds spread over ranks."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import dataloader
from conftest import ROOT, write_lab_layout

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")


def _torchrun(cwd, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "main.py"), "--device", "cpu", "--weights", "none", "--quiet", "--img_size", "32",
           "--batch_size", "8", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_cpu_processes_train_one_model(tmp_path) -> None:
    data = write_lab_layout(tmp_path / "data", n_train=48, n_test=9)
    proc = _torchrun(tmp_path, "--data_root", str(data), "--epochs", "3", "--lr", "0.003", "--exp_id", "ddp")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "checkpoints" / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "curves.png", "last.pth", "log.csv",
                                                     "metrics.json"]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 alone reports
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["n_test"] == 9
    # accuracy over both shards: a multiple of 1/9, not of a shard's 1/5 or 1/4
    assert round(metrics["test_acc"] * 9, 6) == round(metrics["test_acc"] * 9)


def test_each_process_keeps_its_shard() -> None:
    idx = torch.arange(10)
    train_shards = [torch.cat(dataloader.batch_indices(idx, 4, True, 0, 1, r, 2)) for r in range(2)]
    assert len(train_shards[0]) == len(train_shards[1]) == 5  # DDP needs equal step counts
    assert sorted(torch.cat(train_shards).tolist()) == list(range(10))
    whole = torch.cat(dataloader.batch_indices(idx, 4, True, 0, 1))
    assert torch.equal(train_shards[0], whole[0::2]) and torch.equal(train_shards[1], whole[1::2])
    eval_shards = [torch.cat(dataloader.batch_indices(torch.arange(5), 2, False, 0, 1, r, 2)) for r in range(2)]
    assert eval_shards[0].tolist() == [0, 2, 4] and eval_shards[1].tolist() == [1, 3]  # no image twice


def test_folds_spread_over_processes(tmp_path) -> None:
    data = write_lab_layout(tmp_path / "data", n_train=24, n_test=6)
    proc = _torchrun(tmp_path, "--data_root", str(data), "--epochs", "1", "--cv", "3", "--exp_id", "cv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "checkpoints" / "cv" / "cv.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [1, 2, 3]
    assert all((tmp_path / "checkpoints" / "cv" / f"fold{k}" / "metrics.json").is_file() for k in (1, 2, 3))
