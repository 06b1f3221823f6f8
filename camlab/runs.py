"""A run's folder on disk: made or refused before any work (never written over unless asked), the per-epoch log, and the progress a resumed run goes on from.
"""
from __future__ import annotations

import io
import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from camlab.utils import CamlabError, atomic_write_text


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
    if resume:
        if not run_dir.is_dir():
            raise CamlabError(f"--resume: {run_dir} holds no run to continue; leave --resume out to start it")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise CamlabError(f"{run_dir} already holds a run; pass --resume to continue it, choose "
                              f"another --exp_id, or pass --overwrite to replace it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


@dataclass
class Progress:
    """How far a run has come; saved in ``last.pth`` so that ``--resume`` goes on exactly."""

    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    rows: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
