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
    """On the multi-object scenes under --multi_label: the mAP needs every image's scores, so the
    two processes' scores are gathered, and the reported test mAP, F1 and exact match equal the
    best checkpoint's on the whole test split computed in one process. (Single-label DDP: the
    gradient-averaging and folds tests.)"""
    import train
    from camlab import synthetic
    from model import load_checkpoint
    synthetic.generate_multi(tmp_path / "m", n_train=48, n_val=9, size=32, progress=False)
    proc = _torchrun(tmp_path, "--dataset", "multi", "--multi_label", "--data_root", str(tmp_path / "m"),
                     "--epochs", "3", "--lr", "0.003", "--exp_id", "ddp")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "checkpoints" / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["best.pth", "curves.png", "last.pth", "log.csv",
                                                     "metrics.json"]
    assert proc.stdout.count("test mAP") == 1  # rank 0 alone reports
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["n_test"] == 9
    # exact match over both shards: a multiple of 1/9, not of a shard's 1/5 or 1/4
    assert round(metrics["test_acc"] * 9, 6) == round(metrics["test_acc"] * 9)
    net, _ = load_checkpoint(run / "best.pth")
    test = dataloader.load_split("multi", tmp_path / "m", "val", cache_dir=None, progress=False)
    alone = train.run_epoch(net, test, torch.arange(len(test)), objective=train.cam_objective, img_size=32,
                            batch_size=8, progress=False, multi_label=True)
    assert metrics["test_map"] == pytest.approx(alone["map"], abs=1e-6)
    assert metrics["test_f1"] == pytest.approx(alone["f1"], abs=1e-6)
    assert metrics["test_acc"] == pytest.approx(alone["acc"], abs=1e-6)


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


WORKER = '''
import json, sys
import torch, torch.distributed as dist
import train
from camlab import ddp
from model import CAMModel

def batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 1, 0]) if rank else torch.tensor([1, 1, 0, 0])

def fresh():
    torch.manual_seed(0)
    net = CAMModel(2, "none")
    return net, torch.optim.SGD(net.parameters(), lr=0.5)

with ddp.distributed("cpu") as world:  # main.py's own start and end: a barrier, then the group goes
    net, opt = fresh()
    objective = ddp.data_parallel(train.cam_objective, net, world)  # kept: DDP must outlive backward
    step = objective(net, *batch(world.rank), None, 1)
    step.loss.backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    everyone = [torch.zeros_like(flat) for _ in range(world.size)]
    dist.all_gather(everyone, flat)
    if world.rank == 0:  # the same step by hand: each rank's gradient, averaged, one SGD step
        ref, ref_opt = fresh()
        grads = []
        for r in range(world.size):
            ref.zero_grad()
            train.cam_objective(ref, *batch(r)).loss.backward()
            grads.append([p.grad.clone() for p in ref.parameters()])
        for p, *gs in zip(ref.parameters(), *grads):
            p.grad = sum(gs) / len(gs)
        ref_opt.step()
        expected = torch.cat([p.detach().flatten() for p in ref.parameters()])
        with open(sys.argv[1], "w") as out:  # closed here: exit_process skips finalisation
            json.dump({"ranks_equal": bool(torch.equal(everyone[0], everyone[1])),
                       "max_diff_to_average": float((everyone[0] - expected).abs().max()),
                       "moved": float((everyone[0] - torch.cat([p.detach().flatten() for p in fresh()[0].parameters()])).abs().max())},
                      out)
ddp.exit_process(0)  # as main.py ends a torchrun worker
'''


def test_ddp_averages_gradients_over_processes(tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "out.json")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["ranks_equal"] and out["moved"] > 1e-3  # different shards, one model
    assert out["max_diff_to_average"] < 1e-5  # the step of the averaged gradient

