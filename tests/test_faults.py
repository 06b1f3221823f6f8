"""Faults as a hostile user or a full disk brings them: every write of a run failing in turn, a
read-only folder, paths that are files or symbolic-link loops, two processes on one run, images
that declare 30000×30000 pixels, checkpoints full of NaN or of another class count, metrics.json
that is not camlab's, wsolevaluation boxes outside their image, names with spaces and control
characters, a data root that vanished. Each ends in exit 2 with one line naming the file, flag or
path and no traceback (or, for what only costs time, a warning), and every file written before
stays loadable."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import camlab.runs
import camlab.utils
import dataloader
import main
import train
import visualize
from camlab.formats import FORMATS
from camlab.runs import RunLock, lock_holder, lock_path
from camlab.utils import CamlabError
from conftest import ROOT, write_lab_layout
from research.comparisons import trained

TINY = ["--img_size", "32", "--batch_size", "8", "--weights", "none", "--device", "cpu", "--quiet"]


def _main(capsys, *argv: str) -> tuple[int, str]:
    code = main.main([*map(str, argv)])
    return code, capsys.readouterr().err


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err and err.startswith("main.py: error: ")


def _loadable(run: Path) -> None:
    """Every file a run has written reads back: checkpoints safely, the log and metrics as text."""
    for path in run.iterdir() if run.is_dir() else []:
        if path.suffix == ".pth":
            torch.load(path, weights_only=True)
        elif path.name == "metrics.json":
            json.loads(path.read_text())
        elif path.name == "log.csv":
            assert path.read_text().startswith("epoch,")
        assert not path.name.endswith(".tmp"), f"a temporary file was left: {path}"


# ------------------------------------------------------------------- every write failing in turn
def test_every_write_of_a_run_can_fail_and_leaves_what_was_written(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    """os.replace (the last step of every atomic write) raises 'no space left' at the k-th write,
    for every k of a run: exit 2 and one line naming the file (a data cache write only
    warns: it saves time, nothing more), and every file already there still loads."""
    monkeypatch.chdir(tmp_path)
    real, seen = os.replace, []

    def counting(src, dst, *a, **k):
        seen.append(str(dst))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(camlab.utils.os, "replace", counting)
    argv = ["--data_root", tiny_lab, "--epochs", "1", *TINY]
    assert _main(capsys, *argv, "--exp_id", "count")[0] == 0
    writes = list(seen)
    assert any(w.endswith("best.pth") for w in writes) and writes[-1].endswith("metrics.json")
    for k, target in enumerate(writes):
        shutil.rmtree(tmp_path / "data" / "cache", ignore_errors=True)
        calls = iter(range(len(writes) + 10))

        def failing(src, dst, *a, _k=k, **kw):
            if next(calls) == _k:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            return real(src, dst, *a, **kw)
        monkeypatch.setattr(camlab.utils.os, "replace", failing)
        code, err = _main(capsys, *argv, "--exp_id", f"fail{k}")
        if "/cache/" in target:
            assert code == 0 and "warning: the data cache was not written" in err, (k, target, err)
        else:
            assert code == 2 and _one_line(err), (k, target, err)
            assert "no space left on the device" in err and Path(target).name in err, (k, err)
        _loadable(tmp_path / "checkpoints" / f"fail{k}")


def test_torch_save_failing_mid_file_is_one_line(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    """A full disk inside torch.save's zip writer is a RuntimeError there: named as a write failure."""
    monkeypatch.chdir(tmp_path)
    real = torch.save

    def full(obj, f, *a, **k):
        if isinstance(obj, dict) and "progress" in obj:  # last.pth: the one checkpoint with the progress
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full)
    code, err = _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", "zip")
    assert code == 2 and _one_line(err) and "last.pth" in err and "the write failed (is the disk full?)" in err
    _loadable(tmp_path / "checkpoints" / "zip")


def test_a_read_only_run_folder_is_refused_before_the_first_epoch(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", "ro")[0] == 0
    log = (tmp_path / "checkpoints" / "ro" / "log.csv").read_text()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "checkpoints" / "ro"))
    monkeypatch.setattr(camlab.runs.tempfile, "NamedTemporaryFile", read_only)
    for extra in (["--epochs", "2", "--resume"], ["--exp_id", "ro2"]):
        code, err = _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", "ro", *extra)
        assert code == 2 and _one_line(err) and "the file system is read-only" in err, err
    assert (tmp_path / "checkpoints" / "ro" / "log.csv").read_text() == log  # nothing trained, nothing touched
    assert not (tmp_path / "checkpoints" / "ro2" / "log.csv").exists()


# ------------------------------------------------------------------------ paths of the wrong shape
@pytest.mark.parametrize("shape", ["checkpoints is a file", "the run folder is a file",
                                   "checkpoints is a symlink loop", "the data root is a symlink loop"])
def test_paths_of_the_wrong_shape_are_one_line(tiny_lab, tmp_path, monkeypatch, capsys, shape) -> None:
    monkeypatch.chdir(tmp_path)
    root = tiny_lab
    if shape == "checkpoints is a file":
        (tmp_path / "checkpoints").write_text("not a folder")
    elif shape == "the run folder is a file":
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "x").write_text("not a folder")
    elif shape == "checkpoints is a symlink loop":
        os.symlink(tmp_path / "loop_b", tmp_path / "checkpoints")
        os.symlink(tmp_path / "checkpoints", tmp_path / "loop_b")
    else:
        root = tmp_path / "data_loop"
        os.symlink(tmp_path / "data_loop2", root)
        os.symlink(root, tmp_path / "data_loop2")
    code, err = _main(capsys, "--data_root", root, "--epochs", "1", *TINY, "--exp_id", "x")
    assert code == 2 and _one_line(err), err
    assert ("checkpoints" in err or "data_loop" in err), err


# ------------------------------------------------------------------------------------- the lock
def _contender(path: str, start, results) -> None:
    start.wait()
    try:
        with RunLock(Path(path)):
            results.put(("held", os.getpid()))
            time.sleep(0.3)
    except CamlabError as err:
        results.put(("refused", str(err)))


def test_two_processes_on_one_run_one_is_refused_naming_the_other(tmp_path) -> None:
    """30 times: two processes take the same run's lock at the same moment; exactly one holds it,
    the other is refused in one line naming the holder's PID."""
    ctx = multiprocessing.get_context("fork")
    run = tmp_path / "checkpoints" / "same"
    for attempt in range(30):
        start, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_contender, args=(str(run), start, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(20)
        got = sorted(results.get(timeout=5) for _ in range(2))
        assert [g[0] for g in got] == ["held", "refused"], (attempt, got)
        assert f"(PID {got[0][1]})" in got[1][1] and "is being written by another process" in got[1][1]
    assert lock_holder(run) is None  # both gone: nobody holds it


def _late_writer(path: str, locked, pid_written) -> None:
    """Takes the lock the way RunLock does, but waits before writing its PID."""
    import fcntl
    with open(path, "a+", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        locked.set()
        time.sleep(0.5)
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        pid_written.set()
        time.sleep(1.0)


def test_a_rival_never_names_a_dead_holders_pid(tmp_path) -> None:
    """Between a newcomer's flock and its PID write, the file may still hold a killed holder's
    PID: the refused rival waits for a live one rather than naming the dead one."""
    ctx = multiprocessing.get_context("fork")
    run = tmp_path / "checkpoints" / "late"
    run.parent.mkdir(parents=True)
    dead = ctx.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    lock_path(run).write_text(f"{dead.pid}\n")  # what a SIGKILLed holder leaves
    locked, pid_written = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_late_writer, args=(str(lock_path(run)), locked, pid_written))
    holder.start()
    assert locked.wait(20)
    with pytest.raises(CamlabError) as refused:
        RunLock(run).__enter__()
    assert pid_written.is_set() and f"(PID {holder.pid})" in str(refused.value), str(refused.value)
    holder.join(20)
    with RunLock(run):
        pass
    assert lock_path(run).read_text() == ""  # a clean release leaves no PID behind


def test_a_killed_holder_leaves_no_stale_lock(tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")
    run = tmp_path / "checkpoints" / "killed"

    def hold_and_die() -> None:
        RunLock(run).__enter__()
        os._exit(9)  # killed: no release
    p = ctx.Process(target=hold_and_die)
    p.start()
    p.join(20)
    assert lock_holder(run) is None
    with RunLock(run):
        assert lock_holder(run) is None  # our own lock: no other process holds it


def test_two_main_processes_with_one_exp_id(tiny_lab, tmp_path) -> None:
    """End to end: two main.py started together on one --exp_id; one trains, one is refused."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "main.py"), "--data_root", str(tiny_lab), "--epochs", "2", *TINY,
           "--exp_id", "same"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(300), p.stderr.read()) for p in procs)
    assert outcomes[0][0] == 0 and outcomes[1][0] == 2, outcomes
    err = outcomes[1][1]
    assert err.count("\n") == 1 and ("is being written by another process (PID" in err or "already holds a run" in err)
    _loadable(tmp_path / "checkpoints" / "same")


# ----------------------------------------------------------------------- decompression bombs
def _png_declaring(path: Path, width: int, height: int) -> None:
    """A ~100-byte PNG whose header declares width × height (its data is one tiny row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4))
                     + chunk(b"IEND", b""))


def test_a_huge_declared_image_is_refused_before_decoding(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _png_declaring(tiny_lab / "train" / "000.png", 30000, 30000)
    for extra in ([], ["--skip_bad"]):  # never skipped: the file is not damaged, it is too big
        started = time.perf_counter()
        code, err = _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", f"bomb{len(extra)}",
                          *extra)
        assert code == 2 and _one_line(err) and time.perf_counter() - started < 60
        assert "000.png declares 30000×30000 pixels (900 megapixels), over the limit of 50 (--max_pixels)" in err
    code, err = _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", "small",
                      "--max_pixels", "100")
    assert code == 2 and "over the limit of 0.0001 (--max_pixels)" in err


def test_a_huge_declared_mask_is_refused_too(tiny_lab, tmp_path) -> None:
    _png_declaring(tiny_lab / "test_seg" / "000.png", 30000, 30000)
    with pytest.raises(CamlabError, match=r"mask .*000\.png declares 30000×30000 pixels"):
        dataloader.read_mask(tiny_lab / "test_seg" / "000.png")


# ------------------------------------------------------------------------- checkpoints and runs
def test_nan_weights_and_another_class_count_are_refused(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", "ok")[0] == 0
    best = tmp_path / "checkpoints" / "ok" / "best.pth"
    ckpt = torch.load(best, weights_only=True)
    ten_classes = write_lab_layout(tmp_path / "ten")
    (ten_classes / "meta.json").write_text(json.dumps({"classes": [str(i) for i in range(10)]}))
    assert visualize.main(["--exp_id", "ok", "--data_root", str(ten_classes), "--device", "cpu"]) == 2
    assert "ok was trained on 3 classes, but" in capsys.readouterr().err
    ckpt["model"]["heads.0.weight"][0, 0] = float("nan")
    torch.save(ckpt, best)
    for call in (lambda: visualize.main(["--exp_id", "ok", "--device", "cpu"]),):
        assert call() == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds NaN or infinite weights (heads.0.weight)" in err
    last = torch.load(tmp_path / "checkpoints" / "ok" / "last.pth", weights_only=True)
    last["model"]["heads.0.bias"][0] = float("inf")
    torch.save(last, tmp_path / "checkpoints" / "ok" / "last.pth")
    code, err = _main(capsys, "--data_root", tiny_lab, "--epochs", "2", *TINY, "--exp_id", "ok", "--resume")
    assert code == 2 and _one_line(err) and "holds NaN or infinite weights (heads.0.bias)" in err


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"test_acc": 1}'])
def test_a_metrics_file_that_is_not_camlabs_is_named(tiny_lab, tmp_path, monkeypatch, content) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = train.RunConfig(exp_id="damaged", epochs=1, img_size=32, batch_size=8, weights="none", data_root=str(tiny_lab),
                          device="cpu", progress=False)
    trained(cfg)
    (tmp_path / "checkpoints" / "damaged" / "metrics.json").write_text(content)
    with pytest.raises(CamlabError, match=r"checkpoints/damaged/metrics\.json is not .*; pass --retrain_damaged"):
        trained(cfg)
    assert trained(train.RunConfig(**{**cfg.__dict__, "overwrite": True}))["args"]["exp_id"] == "damaged"


def test_a_vanished_data_root_is_named(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "moving"
    shutil.copytree(tiny_lab, copy)
    assert _main(capsys, "--data_root", copy, "--epochs", "1", *TINY, "--exp_id", "gone")[0] == 0
    shutil.rmtree(copy)
    assert visualize.main(["--exp_id", "gone", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"gone's data root {copy} no longer exists (moved or deleted?)" in err


# ----------------------------------------------------------------------------- annotation files
def test_lab_names_with_spaces_and_control_characters(tiny_lab, tmp_path, capsys) -> None:
    shutil.move(tiny_lab / "train" / "000.png", tiny_lab / "train" / "a b.png")
    lines = (tiny_lab / "train_cls.txt").read_text().splitlines()
    lines[0] = "a b.png 0"  # the last field is the label: the name keeps its space
    (tiny_lab / "train_cls.txt").write_text("\n".join(lines) + "\n")
    data = dataloader.load_split("lab", tiny_lab, "train", cache_dir=None, progress=False)
    assert data.names[0] == "a b.png"
    lines[0] = "a\x00b\x1b[2J.png 0"  # a NUL and a terminal escape from a hostile file
    (tiny_lab / "train_cls.txt").write_text("\n".join(lines) + "\n")
    code, err = _main(capsys, "--data_root", tiny_lab, "--epochs", "1", *TINY, "--exp_id", "ctl")
    assert code == 2 and _one_line(err) and "\x00" not in err and "\x1b" not in err
    assert "a\\x00b\\x1b[2J.png is missing" in err


def test_wsol_boxes_outside_their_image_warn_once_and_strict_refuses(tmp_path, capsys) -> None:
    from camlab import scoremaps
    from camlab.wsolmeta import read_split
    root, meta = FORMATS["wsol"].example(tmp_path / "data")
    loc = meta / "test" / "localization.txt"
    lines = loc.read_text().splitlines()
    first = lines[0].split(",")[0]
    lines[0] = f"{first},3,3,9999,9"  # x1 = 9999 on a 16-wide image
    lines[1] = lines[1].split(",")[0] + ",5,5,5,9"  # zero width: x1 = x0
    loc.write_text("\n".join(lines) + "\n")
    info = read_split(root, meta, "test")
    err = capsys.readouterr().err
    assert info.box_faults == 2 and err.count("\n") == 1 and err.startswith("warning: ")
    assert "2 boxes outside their images or of zero area (the first: line 1, box (3, 3, 9999, 9) outside the 16×16 image)" in err
    maps = tmp_path / "maps"
    for image_id in info.ids:
        (maps / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / image_id, np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16))
    assert scoremaps.evaluate(maps, meta, "test", progress=False)["box_faults"] == 2
    with pytest.raises(CamlabError, match="2 boxes outside their image or of zero area .* --strict_boxes refuses them"):
        scoremaps.evaluate(maps, meta, "test", progress=False, strict_boxes=True)


def test_an_interrupted_run_takes_away_only_the_empty_folder_it_made(tmp_path) -> None:
    run = tmp_path / "checkpoints" / "stopped"
    with pytest.raises(KeyboardInterrupt), RunLock(run):
        run.mkdir()
        raise KeyboardInterrupt  # Ctrl-C before the first checkpoint
    assert not run.exists()
    with pytest.raises(KeyboardInterrupt), RunLock(run):
        run.mkdir()
        (run / "epoch.pth").write_bytes(b"x")
        raise KeyboardInterrupt
    assert (run / "epoch.pth").exists()  # something was written: kept
    (run / "epoch.pth").unlink()
    with pytest.raises(KeyboardInterrupt), RunLock(run):
        raise KeyboardInterrupt
    assert run.is_dir()  # the folder was there before: not ours to remove
    with RunLock(tmp_path / "checkpoints" / "ok"):
        (tmp_path / "checkpoints" / "ok").mkdir()
    assert (tmp_path / "checkpoints" / "ok").is_dir()  # a normal end keeps it
