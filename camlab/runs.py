"""A run's folder on disk: made or refused before any work (never written over unless asked), locked while a process writes it, its metrics read back, the per-epoch log, and the progress a resumed run goes on from.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camlab import tables
from camlab.utils import CamlabError, atomic_write_text, os_fault

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None


# -------------------------------------------------------------------------------------- runs
def write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def log_row(epoch: int, train: dict, val: dict, lr: float) -> dict:
    """One log.csv row. Wall time is kept out (in metrics.json), so that a resumed run's log
    equals an uninterrupted one's."""
    row = {"epoch": epoch}
    row.update({f"train_{k}": round(v, 6) for k, v in train.items()})
    row.update({f"val_{k}": round(v, 6) for k, v in val.items()})
    row["lr"] = lr
    return row


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to write over an earlier run's files unless told to; with ``overwrite`` the old
    run is removed first, so no file of it (a fold, a cv.json) mixes with the new one; with
    ``resume`` the run goes on in place."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CamlabError(f"{run_dir} is a file, not a run folder; move it away or choose another --exp_id")
    if resume:
        if not run_dir.is_dir():
            raise CamlabError(f"--resume: {run_dir} holds no run to continue; leave --resume out to start it")
        return
    try:
        if run_dir.exists() and any(run_dir.iterdir()):
            if not overwrite:
                raise CamlabError(f"{run_dir} already holds a run; pass --resume to continue it, choose "
                                  f"another --exp_id, or pass --overwrite to replace it")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CamlabError(f"cannot make the run folder {run_dir}: {os_fault(err)}") from None


def check_writable(folder: Path) -> None:
    """Refuse a folder that cannot take a file (a read-only or full disk, no permission) before
    any work, so that a run does not train an epoch to fail at its first checkpoint."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable.", suffix=".tmp") as probe:
            probe.write(b"camlab")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise CamlabError(f"cannot write in {folder}: {os_fault(err)}") from None


def lock_path(run_dir: Path) -> Path:
    """Where a run's lock lives: beside its folder (``checkpoints/.<exp_id>.lock``), so that
    ``--overwrite`` can remove the folder while the lock is held."""
    return run_dir.parent / f".{run_dir.name}.lock"


class RunLock:
    """An exclusive lock on a run folder for as long as a process writes it (``fcntl.flock`` on
    :func:`lock_path`, which holds the holder's PID). The kernel releases it however the process
    ends, so a killed run leaves no stale lock: the next process takes it. A second process on
    the same run is refused in one line naming the holder's PID. A run folder this lock saw made
    and that is still empty when the holder stops (Ctrl-C in the first epoch) is taken away."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path, self.file = Path(run_dir), lock_path(Path(run_dir)), None
        self.new = not self.run_dir.exists()

    def __enter__(self) -> "RunLock":
        if fcntl is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+", encoding="utf-8")
        except OSError as err:
            raise CamlabError(f"cannot lock the run {self.run_dir}: {self.path}: {os_fault(err)}") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(self.file)
            self.file.close()
            self.file = None
            raise CamlabError(f"{self.run_dir} is being written by another process (PID {holder}); wait for it to "
                              f"finish, or choose another --exp_id") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        HELD_LOCKS.add(self.file.fileno())
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self.new and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()  # no PID left behind for a newcomer's rival to read as the holder's
            self.file.flush()
            fcntl.flock(self.file, fcntl.LOCK_UN)  # the file stays: removing it would race a newcomer
            HELD_LOCKS.discard(self.file.fileno())
            self.file.close()
            self.file = None


# the descriptors of the run locks this process holds: a forked child (a DataLoader worker) closes
# its copies (release_inherited_locks), so a killed holder's lock is free at once, not when its
# workers notice and exit
HELD_LOCKS: set[int] = set()


def release_inherited_locks() -> None:
    """In a forked child: close its copies of the parent's run-lock descriptors (the lock stays the parent's)."""
    for fd in list(HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    HELD_LOCKS.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number no process has: not ours to judge)
    return True


def _pid_in(file, wait_s: float = 5.0) -> str:
    """The holder's PID from the lock file. A holder that has just taken the lock may not have
    written it yet: the file is then empty (a holder empties it on release) or holds the PID of a
    killed holder, which no live process has; this waits up to ``wait_s`` for a live one."""
    deadline = time.monotonic() + wait_s
    while True:
        file.seek(0)
        text = file.read().strip()
        if text.isdigit() and _alive(int(text)):
            return text
        if time.monotonic() > deadline:
            return "unknown"
        time.sleep(0.02)


def lock_holder(run_dir: Path) -> str | None:
    """The PID of another process writing ``run_dir`` now (as text), or None when none is."""
    path = lock_path(Path(run_dir))
    if fcntl is None or not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _pid_in(file)
                return None if holder == str(os.getpid()) else holder  # this process's own lock
            fcntl.flock(file, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def read_metrics(path: Path) -> dict:
    """A finished run's ``metrics.json``, refused in one line naming the file when it is not the
    JSON object camlab writes (a test accuracy and the run's settings)."""
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise CamlabError(f"cannot read {path}: {os_fault(err)}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CamlabError(f"{path} is not readable JSON ({' '.join(str(err).split())[:80]}); it is not the "
                          f"metrics.json camlab writes") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("args"), dict) or "test_acc" not in metrics:
        raise CamlabError(f"{path} is not the metrics.json camlab writes (no test_acc and args)")
    return metrics


@dataclass
class Progress:
    """How far a run has come; saved in ``last.pth`` so that ``--resume`` goes on exactly."""

    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    rows: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


def cv_summary(folds: list[dict]) -> dict:
    """Mean and (population) standard deviation of each fold metric."""
    keys = ("val_acc", "test_acc")
    return {"folds": folds,
            "mean": {k: float(np.mean([f[k] for f in folds])) for k in keys},
            "std": {k: float(np.std([f[k] for f in folds])) for k in keys}}


def cv_table(summary: dict) -> str:
    """A Markdown table: one row per fold, then mean ± std."""
    rows = [[f["fold"], f["best_epoch"], f"{f['val_acc']:.4f}", f"{f['test_acc']:.4f}"] for f in summary["folds"]]
    m, s = summary["mean"], summary["std"]
    rows.append(["mean ± std", "", f"{m['val_acc']:.4f} ± {s['val_acc']:.4f}", f"{m['test_acc']:.4f} ± {s['test_acc']:.4f}"])
    return tables.markdown(["fold", "best epoch", "val acc", "test acc"], rows, [tables.RIGHT] * 4)
