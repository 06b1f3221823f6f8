"""Every flag of every entry point, given extreme or malformed values (0, negative, NaN, inf,
huge, empty, the wrong type, a path outside the project), ends with exit code 0 or 2 and never
prints a traceback. The flags are read from each entry point's parser, so a new flag is covered
without editing this file.

Each value is one command line (the entry point's tiny working command with that one flag
changed), run in a process of its own by ``tests/fork_cli.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench
import iou
import main
import visualize
from conftest import ROOT, write_lab_layout

INT_VALUES = ["0", "-1", "99999999999", "1.5", "", "abc"]
FLOAT_VALUES = ["0", "-1", "nan", "inf", "1e12", "", "abc"]
TEXT_VALUES = ["", "abc", "../outside", "/etc"]
CHOICE_VALUES = ["", "abc"]

# Flags that only act in one mode get that mode (main.py); a CSE run needs its frozen classifier.
MODE_OF_FLAG = {"scale": "SEG", "rot_deg": "SEG", "shift": "SEG", "transform": "SEG", "cam": "SEG",
                "ser_weight": "SEG", "recipe": "ACOL", "delta": "ACOL", "acol_head": "ACOL",
                "acol_width": "ACOL", "acol_grow": "ACOL", "oc_exp": "CSE",
                "erase_weight": "CSE", "erase_growth": "CSE", "area_weight": "CSE"}
TRANSFORM_OF_FLAG = {"rot_deg": "rotate", "shift": "translate"}
# Flags that only act on one dataset get that dataset (main.py); elsewhere they are refused outright.
DATASET_OF_FLAG = {"metadata": "wsol"}
# iou.py's comparison flags act under --methods; the others under the report of finished runs.
IOU_COMPARISON = {"ablation", "methods", "prefix", "epochs", "img_size", "seed", "batch_size", "weights",
                  "data_root", "seeds", "body_evidence", "sweep"}


def values_for(action: argparse.Action) -> list[list[str]]:
    """The argv tails to try for one flag: each malformed or extreme value, or for a switch,
    the switch alone and with a stray value."""
    flag = action.option_strings[-1]
    if action.nargs == 0:  # store_true
        return [[flag], [flag, "x"]]
    if action.choices is not None:
        pool = CHOICE_VALUES
    elif action.type is int:
        pool = INT_VALUES
    elif action.type is float:
        pool = FLOAT_VALUES
    else:
        pool = TEXT_VALUES
    tails = [[flag, v] for v in pool]
    if action.nargs == "+":
        tails.append([flag])
    return tails


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _fresh(base: Path, n: int) -> str:
    path = base / f"case{n}"
    path.mkdir()
    return str(path)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[list[dict], Path]:
    top = tmp_path_factory.mktemp("flags")
    data = write_lab_layout(top / "data", n_train=24, n_test=9)
    shared = top / "shared"  # a finished CAM run "oc", for visualize.py, iou.py and CSE
    shared.mkdir()
    tiny = ["--device", "cpu", "--weights", "none", "--quiet", "--img_size", "16", "--batch_size", "8",
            "--epochs", "1", "--data_root", str(data)]
    cwd = os.getcwd()
    try:
        os.chdir(shared)
        assert main.main([*tiny, "--exp_id", "oc"]) == 0
    finally:
        os.chdir(cwd)
    out: list[dict] = []

    def add(module: str, argv: list[str], where: str | None = None) -> None:
        out.append({"module": module, "argv": argv, "cwd": where or _fresh(top, len(out)), "timeout": 240})

    for action in flags(main.build_parser()):
        name = action.dest
        context = []
        if name in MODE_OF_FLAG:
            context = ["--mode", MODE_OF_FLAG[name], "--transform", TRANSFORM_OF_FLAG.get(name, "scale")]
            context += ["--oc_exp", "oc"] if MODE_OF_FLAG[name] == "CSE" else []
            context += ["--img_size", "32"] if MODE_OF_FLAG[name] == "SEG" else []
        if name in DATASET_OF_FLAG:
            context = ["--dataset", DATASET_OF_FLAG[name]]
        for tail in values_for(action):
            add("main", [*tiny, *context, *tail])
            if name in MODE_OF_FLAG and MODE_OF_FLAG[name] == "CSE":
                os.symlink(shared / "checkpoints", Path(out[-1]["cwd"]) / "checkpoints")

    methods = ["--methods", "--epochs", "1", "--img_size", "16", "--batch_size", "8", "--weights", "none",
               "--data_root", str(data), "--device", "cpu", "--n_threshold", "4"]
    for action in flags(iou.build_parser()):
        for tail in values_for(action):
            if action.dest in IOU_COMPARISON:
                add("iou", [*methods, *tail])
            else:
                add("iou", ["--wsol", "--device", "cpu", "--faith_steps", "2", *tail], str(shared))  # 2 steps: cheap

    for action in flags(visualize.build_parser()):
        for tail in values_for(action):
            add("visualize", ["--exp_id", "oc", "--device", "cpu", *tail], str(shared))

    quick = ["--device", "cpu", "--quick", "--img_size", "16", "--batch_size", "4", "--n_train", "4",
             "--n_infer", "4", "--rounds", "1", "--warmup_batches", "1", "--workers", "0",
             "--data_root", str(data), "--tasks", "cam_infer", "--out", "report/b.json"]
    for action in flags(bench.build_parser()):
        for tail in values_for(action):
            add("bench", [*quick, *tail])
    return out, top


def test_every_flag_value_exits_0_or_2_without_a_traceback(cases) -> None:
    todo, top = cases
    assert len({c["module"] for c in todo}) == 4 and len(todo) > 200
    (top / "cases.json").write_text(json.dumps(todo))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fork_cli.py"), str(top / "cases.json"),
                           str(top / "results.json"), "2"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((top / "results.json").read_text())
    assert len(results) == len(todo)
    bad = [f"{r['module']}.py {' '.join(map(repr, r['argv'][-2:]))}: rc {r['rc']}: {r['stderr'].strip()[-300:]}"
           for r in results if r["rc"] not in (0, 2) or "Traceback" in r["stderr"]]
    assert not bad, f"{len(bad)} of {len(results)} command lines failed:\n" + "\n".join(bad)
    refused = [r for r in results if r["rc"] == 2]
    assert all(r["stderr"].strip().count("\n") == 0 for r in refused), "an error took more than one line"
    assert len(refused) > len(results) // 2  # most of these values are bad: they must be refused


def test_the_harness_reports_tracebacks_and_exit_codes(tmp_path) -> None:
    """fork_cli itself: a refused flag shows as exit code 2 with its one line, an escaping
    exception as its traceback with exit code 1."""
    todo = [{"module": "main", "argv": ["--epochs", "abc"], "cwd": str(tmp_path)},
            {"module": "visualize", "argv": ["--exp_id", "missing", "--device", "cpu"], "cwd": str(tmp_path)},
            {"module": "main", "argv": [7], "cwd": str(tmp_path)}]  # argparse raises TypeError on an int
    (tmp_path / "cases.json").write_text(json.dumps(todo))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "tests" / "fork_cli.py"), str(tmp_path / "cases.json"),
                    str(tmp_path / "results.json")], env=env, check=True, timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results[0]["rc"] == 2 and "--epochs: invalid int value" in results[0]["stderr"]
    assert results[1]["rc"] == 2 and "Traceback" not in results[1]["stderr"]
    assert results[2]["rc"] == 1 and "Traceback (most recent call last)" in results[2]["stderr"]
