"""Runs many command lines of camlab's entry points, each in a process of its own, cheaply.

``python tests/fork_cli.py cases.json results.json [jobs]``: imports the entry points once, then
forks one child per case. The child changes to the case's folder, sends stdout to /dev/null and
stderr to a file, and runs ``sys.exit(<module>.main(argv))`` as ``python <module>.py argv``
would; an exception that escapes prints its traceback there, as the interpreter would. The
parent records each child's exit code and stderr. Forking after the imports saves the 2 s that
every ``python main.py`` spends importing torch, which is what lets hundreds of cases run in a
minute.

A case: ``{"module": "main", "argv": [...], "cwd": "...", "timeout": 120}``. A result adds
``"rc"`` (-9 when the case ran past its timeout) and ``"stderr"``.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("main", "iou", "visualize", "bench")


def _child(module, case: dict, err_path: str) -> None:
    """In the forked process: never returns."""
    code = 1
    try:
        os.chdir(case["cwd"])
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        sys.argv = [f"{case['module']}.py", *case["argv"]]
        try:
            code = module.main(case["argv"])
        except SystemExit as stop:  # argparse, or sys.exit inside
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # what the interpreter would print for an escaping exception
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)


def run_cases(cases: list[dict], jobs: int, scratch: Path) -> list[dict]:
    modules = {name: importlib.import_module(name) for name in ENTRY_POINTS}
    results: list[dict | None] = [None] * len(cases)
    running: dict[int, tuple[int, float]] = {}  # pid -> (case index, deadline)
    todo = list(range(len(cases)))
    while todo or running:
        while todo and len(running) < jobs:
            i = todo.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(modules[cases[i]["module"]], cases[i], str(scratch / f"{i}.err"))
            running[pid] = (i, time.monotonic() + cases[i].get("timeout", 120))
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for other, (i, deadline) in list(running.items()):
                if time.monotonic() > deadline:
                    os.kill(other, signal.SIGKILL)
            time.sleep(0.005)
            continue
        i, _ = running.pop(pid)
        rc = os.waitstatus_to_exitcode(status)
        err = scratch / f"{i}.err"
        results[i] = {**cases[i], "rc": rc, "stderr": err.read_text(errors="replace") if err.exists() else ""}
    return results  # type: ignore[return-value]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    cases = json.loads(Path(sys.argv[1]).read_text())
    jobs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    scratch = Path(sys.argv[2]).parent / "stderr"
    scratch.mkdir(exist_ok=True)
    import model  # the shape check's backbone, built once here and inherited by every child
    model._meta_backbone("resnet18", "layer2")
    Path(sys.argv[2]).write_text(json.dumps(run_cases(cases, jobs, scratch)))


if __name__ == "__main__":
    main()
