"""The publication: every table and figure under ``report/published/`` from one command (``python iou.py --publish``), each table's runs trained or reused, its files copied whole as soon as its runs are done, a progress line per run with what is left, and a manifest of where each file came from.

A table is its runs (the ``RunConfig`` s the command behind it trains) and the command that
writes its files from them. The plan below is the publication, in the order the tables are
made: cheap and most-cited first, so that a stopped publication has published what it finished.
Runs are reused when ``checkpoints/<exp_id>`` holds a finished run with the same settings, and a
run stopped mid-way goes on from its last epoch (:func:`research.comparisons.trained`), so a
stopped process loses at most the epoch in progress. Nothing in a published file depends on
when it was written: a pass with every run reused rewrites every file byte for byte.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import bench
import iou
import main
import train
import visualize
from camlab import tables
from camlab.runs import read_metrics
from camlab.utils import CHECKPOINT_DIR, REPORT_DIR, VISUALIZE_DIR, CamlabError, OneLineParser, atomic_write_text, run_cli
from research import comparisons
from research.comparisons import (base_run, digest, method_configs, run_prefix, semseg_configs, sweep_bases,
                                  sweep_prefix, trained)

PUBLISHED_DIR = REPORT_DIR / "published"
MANIFEST = "manifest.json"

# The comparisons' settings, as the README's commands give them: 112 px, random init, three seeds.
RESEARCH = ("--img_size", "112", "--weights", "none")
SEEDS = (0, 1, 2)
# The body-evidence sweep: the ends at every seed, the intermediate settings at one (the issue's
# allowance; their runs are the slowest part of the publication). The default setting (0.85) is
# the methods table's own runs.
SWEEP_VALUES = (0.0, 0.25, 0.5, 0.75, 0.85, 1.0)
SWEEP_SEEDS = {0.0: SEEDS, 0.85: SEEDS, 1.0: SEEDS}
# The sweep tables localisation alone (sweep.md, both figures): its 72 reports skip the
# faithfulness measures, nine tenths of a report's scoring on this CPU (the methods and extractors
# tables measure them), so sweep.csv's faithfulness columns read "-".
SWEEP_FAITH_STEPS = 0

# Seconds one run takes on this project's build machine (2 CPU cores), per mode, at 112 px, 4
# epochs of the embedded benchmark's 1,800 training images: the metrics.json ``seconds`` of the
# runs measured for the fidelity issue (CAM 46, SEG 98, ACoL 76-79, CSE 201). The estimate of
# what is left scales them by pixels and epochs, and uses this machine's own finished runs of
# the same kind instead wherever there are some.
COST_112 = {"CAM": 46.0, "SEG": 98.0, "ACOL": 78.0, "CSE": 201.0}


@dataclass(frozen=True)
class Table:
    """One published table: ``name``, the command that makes it alone, its runs, and ``write``,
    which (its runs done) writes its files and returns {published name: the file written}."""

    name: str
    command: str
    runs: Callable[[], list["train.RunConfig"]]
    write: Callable[[], dict[str, Path]]


def _iou_args(argv: Sequence[str]) -> argparse.Namespace:
    return iou.build_parser().parse_args(list(argv))


def _main_config(argv: Sequence[str]) -> "train.RunConfig":
    argv = list(argv)
    return main.config_from_args(main.apply_preset(main.build_parser().parse_args(argv), argv))


def _files(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    return {published: Path(folder) / written for published, written in names.items()}


def _quote(argv: Sequence[str], script: str = "iou.py") -> str:
    return f"python {script} " + " ".join(argv)


def trained_cv(cfg: "train.RunConfig") -> dict:
    """``cv.json`` of a finished cross-validation with these settings, reused; else the folds
    trained (finished folds kept: ``--resume``)."""
    path = cfg.run_dir() / "cv.json"
    if path.is_file():
        found = json.loads(path.read_text())
        differ = train.differing(cfg, found.get("args", {}))
        if differ:
            raise CamlabError(f"{cfg.run_dir()} holds a cross-validation with other settings ({', '.join(differ)}); "
                              "move it away")
        print(f"reusing {cfg.run_dir()} (same settings)")
        return found
    return train.train_CV(dataclasses.replace(cfg, resume=cfg.run_dir().is_dir()))


def _measured(argv: Sequence[str]) -> Callable[[], dict[str, Path]]:
    """A benchmark: measured once (its JSON under report/ is its run, reused like one)."""
    out = Path(argv[argv.index("--out") + 1])

    def write() -> dict[str, Path]:
        if out.is_file():
            print(f"reusing {out} (measured before)")
        elif bench.main(list(argv)) != 0:
            raise CamlabError(f"python bench.py {' '.join(argv)} failed (see above)")
        return {out.name: out}
    return write


# ------------------------------------------------------------------------------- the tables
@dataclass(frozen=True)
class PlanSettings:
    """What the plan's commands share: the comparisons' flags and seeds, and ``extra``, flags
    appended to every command (the tests' tiny data and sizes; empty for the publication)."""

    research: tuple[str, ...] = RESEARCH
    seeds: tuple[int, ...] = SEEDS
    extra: tuple[str, ...] = ()  # main.py's and iou.py's
    extra_iou: tuple[str, ...] = ()  # iou.py's alone
    # how the comparisons' scored reports are reused (iou.py --scores): like runs, by default
    # (report/scores/); ``--rescore`` scores every one again and replaces what was kept
    scores: str = "reuse"


def make_plan(ps: PlanSettings = PlanSettings()) -> tuple[Table, ...]:
    """The publication's tables, in the order they are made."""
    seeds = tuple(map(str, ps.seeds))
    more = (*ps.extra, *ps.extra_iou)
    lab_runs = [("--mode", "CAM", *ps.extra), ("--mode", "SEG", "--exp_id", "seg", *ps.extra)]
    cv_args = ("--mode", "CAM", "--cv", "5", "--exp_id", "cv5", *ps.extra)
    ablation = ("--ablation", "--img_size", "112", *more)
    methods = ("--methods", "--seeds", *seeds, *ps.research, *more)
    extractors = ("--extractors", "--seeds", *seeds, *ps.research, *more)
    semseg = ("--semseg", "--crf", "--both_scales", "--seeds", *seeds, *ps.research, *more)
    rw_run = ("--dataset", "multi", "--multi_label", *ps.research, "--exp_id", "rw_cam_ml", *ps.extra)
    rw = ("--semseg", "--crf", "affinitynet", "--refine", "rw", "--runs", "rw_cam_ml", "--no_msf", "--aff_epochs", "3",
          "--aff_init", "run", *more)
    bench_cpu = ("--device", "cpu", "--quick", "--out", str(REPORT_DIR / "bench_cpu.json"))
    bench_data = ("--device", "cpu", "--tasks", "data", "--out", str(REPORT_DIR / "bench_data_cpu.json"))
    bench_eval = ("--device", "cpu", "--tasks", "wsol_eval", "--rounds", "3",
                  "--out", str(REPORT_DIR / "bench_wsol_eval_cpu.json"))
    sweep_seeds = {0.0: ps.seeds, 0.85: ps.seeds, 1.0: ps.seeds}

    def write_lab() -> dict[str, Path]:
        """The handout's section 3.4 for the default CAM and SEG runs: visualize.py for each,
        Fig. 3, and ``iou.py --runs cam seg``."""
        for exp_id in ("cam", "seg"):
            visualize.visualize_run(exp_id)
        compare = visualize.compare_runs(["cam", "seg"])
        iou._report(_iou_args(["--runs", "cam", "seg", *ps.extra_iou]))
        return {**_files(REPORT_DIR, {name: name for name in ("iou.md", "iou.csv", "iou_full.csv", "iou_threshold.png")}),
                "compare_cam_seg.png": compare,
                **{f"{e}_curves.png": CHECKPOINT_DIR / e / "curves.png" for e in ("cam", "seg")},
                **{f"{e}_grid.png": VISUALIZE_DIR / e / "grid.png" for e in ("cam", "seg")}}

    def ablation_runs() -> list["train.RunConfig"]:
        args = _iou_args(ablation)
        return comparisons.table_runs(base_run(args), run_prefix(args, "ablation"), iou.ABLATION, args.cam)

    def write_ablation() -> dict[str, Path]:
        iou.ablation_command(_iou_args(ablation))
        return {"ablation.md": REPORT_DIR / "ablation.md",
                **{f"ablation_{n}_grid.png": VISUALIZE_DIR / f"ablation_{n}" / "grid.png" for n, _ in iou.ABLATION}}

    def methods_runs() -> list["train.RunConfig"]:
        args = _iou_args(methods)
        return method_configs(base_run(args), run_prefix(args, "methods"), args.seeds)

    def scoring(argv: Sequence[str]) -> argparse.Namespace:
        """A comparison's flags as its command gives them, its reports reused as ``ps.scores`` says."""
        return _iou_args([*argv, "--scores", ps.scores])

    def comparison(argv: Sequence[str], command: Callable, stem: str, *figures: str) -> Callable[[], dict]:
        def write() -> dict[str, Path]:
            command(scoring(argv))
            return _files(REPORT_DIR, {name: name for name in (f"{stem}.csv", f"{stem}.md", *figures)})
        return write

    def sweep_runs() -> list["train.RunConfig"]:
        base = base_run(_iou_args(methods))
        return [cfg for value, cfg in sweep_bases(base, SWEEP_VALUES)
                for cfg in method_configs(cfg, sweep_prefix("methods", value), sweep_seeds.get(value, ps.seeds[:1]))]

    def write_sweep() -> dict[str, Path]:
        comparisons.run_sweep(base_run(_iou_args(methods)), SWEEP_VALUES, "methods", seeds=ps.seeds[:1],
                              seeds_at=sweep_seeds, faith_steps=SWEEP_FAITH_STEPS, scores=ps.scores)
        return _files(REPORT_DIR, {name: name for name in ("sweep.csv", "sweep.md", "sweep.png", "sweep_intervals.png")})

    def semseg_runs() -> list["train.RunConfig"]:
        args = _iou_args(semseg)
        return semseg_configs(base_run(args, args.dataset), run_prefix(args, "semseg"), args.seeds)

    def write_semseg() -> dict[str, Path]:
        comparisons.semseg_command(scoring(semseg))
        return _files(REPORT_DIR, {f"{stem}{ext}": f"{stem}{ext}" for stem in ("semseg", "semseg_1scale")
                                   for ext in (".csv", ".md", ".png", "_intervals.png")}
                      | {name: name for name in ("semseg_msf.md", "semseg_msf.png")})

    def write_rw() -> dict[str, Path]:
        comparisons.semseg_command(scoring(rw))
        return _files(REPORT_DIR, {f"semseg_rw{ext}": f"semseg{ext}"
                                   for ext in (".csv", ".md", ".png", "_intervals.png")})

    return (
        Table("lab", "python main.py --mode CAM; python main.py --mode SEG --exp_id seg; python visualize.py --exp_id "
              "cam (and seg); python visualize.py --compare cam seg; python iou.py --runs cam seg",
              lambda: [_main_config(argv) for argv in lab_runs], write_lab),
        Table("ablation", _quote(ablation), ablation_runs, write_ablation),
        Table("methods", _quote(methods), methods_runs,
              comparison(methods, comparisons.methods_command, "methods", "methods_grid.png", "methods_intervals.png",
                         "methods_faithful.png")),
        Table("extractors", _quote(extractors), lambda: [c for c in methods_runs() if c.mode == "CAM"],
              comparison(extractors, comparisons.extractors_command, "extractors", "extractors_grid.png",
                         "extractors_intervals.png", "extractors_faithful.png")),
        Table("bench_cpu", _quote(bench_cpu, "bench.py"), list, _measured(bench_cpu)),
        Table("bench_data_cpu", _quote(bench_data, "bench.py"), list, _measured(bench_data)),
        Table("semseg", _quote(semseg), semseg_runs, write_semseg),
        Table("sweep", "python iou.py --publish --tables sweep (body evidence "
              + ", ".join(f"{v:g}" for v in SWEEP_VALUES) + f"; seeds {' '.join(seeds)} at 0, 0.85 and 1, seed "
              f"{seeds[0]} elsewhere; " + " ".join(ps.research) + f"; --faith_steps {SWEEP_FAITH_STEPS})", sweep_runs,
              write_sweep),
        Table("cv", _quote(cv_args, "main.py"), lambda: [_main_config(cv_args)],
              lambda: _files(_main_config(cv_args).run_dir(), {"cv.md": "cv.md", "cv.json": "cv.json"})),
        Table("semseg_rw", _quote(rw_run, "main.py") + "; " + _quote(rw), lambda: [_main_config(rw_run)], write_rw),
        Table("bench_wsol_eval_cpu", _quote(bench_eval, "bench.py"), list, _measured(bench_eval)),
    )


PLAN = make_plan()
TABLES = {t.name: t for t in PLAN}


# ------------------------------------------------------------------------- runs and progress
def run_seconds(cfg: "train.RunConfig") -> float | None:
    """How long ``cfg``'s finished run took (metrics.json ``seconds``; a cross-validation: its
    folds' epochs), None when it has not finished."""
    if cfg.cv:
        path = cfg.run_dir() / "cv.json"
        if not path.is_file():
            return None
        folds = [read_metrics(p) for p in sorted(cfg.run_dir().glob("fold*/metrics.json"))]
        return float(sum(sum(m.get("epoch_seconds", [])) for m in folds))
    path = cfg.run_dir() / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = read_metrics(path)
    except CamlabError:
        return None
    return None if train.differing(cfg, metrics["args"]) else float(metrics.get("seconds", 0.0))


def _kind(cfg: "train.RunConfig") -> tuple:
    return cfg.mode, cfg.img_size, cfg.epochs, cfg.multi_label, cfg.dataset


def table_cost(cfg: "train.RunConfig") -> float:
    """COST_112 scaled by pixels and epochs (× 0.8 × folds for a cross-validation)."""
    base = COST_112.get(cfg.mode, max(COST_112.values()))
    return base * (cfg.img_size / 112) ** 2 * cfg.epochs / 4 * (cfg.cv * 0.8 if cfg.cv else 1)


def estimate(cfg: "train.RunConfig", measured: dict[tuple, list[float]], speed: float = 1.0) -> float:
    """Seconds ``cfg`` should take: the mean of this machine's finished runs of its kind (mode,
    size, epochs, labels, dataset), else :func:`table_cost` times ``speed`` (how much longer
    than that table this machine's finished runs took)."""
    same = measured.get(_kind(cfg))
    if same:
        return sum(same) / len(same)
    return table_cost(cfg) * speed


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class Progress:
    """The runs of the chosen tables (each once, in plan order), which of them are finished, and
    the line printed before each run."""

    runs: list["train.RunConfig"]
    done: dict[str, float]  # exp_id -> seconds, for the finished runs
    start: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, plan: Sequence[Table]) -> "Progress":
        runs = list({cfg.exp_id: cfg for table in plan for cfg in table.runs()}.values())
        done = {cfg.exp_id: s for cfg in runs if (s := run_seconds(cfg)) is not None}
        return cls(runs, done)

    def left(self) -> float:
        measured: dict[tuple, list[float]] = {}
        finished = [cfg for cfg in self.runs if cfg.exp_id in self.done and not cfg.cv]
        for cfg in finished:
            measured.setdefault(_kind(cfg), []).append(self.done[cfg.exp_id])
        speed = (sum(self.done[c.exp_id] for c in finished) / sum(table_cost(c) for c in finished)) if finished else 1.0
        return sum(estimate(cfg, measured, speed) for cfg in self.runs if cfg.exp_id not in self.done)

    def line(self, table: str, cfg: "train.RunConfig") -> str:
        n_done = len(self.done)
        what = "reusing" if cfg.exp_id in self.done else "training"
        return (f"[publish {n_done + (cfg.exp_id not in self.done)}/{len(self.runs)}] {table}: {what} {cfg.exp_id} "
                f"({cfg.mode}{' --cv ' + str(cfg.cv) if cfg.cv else ''}, {cfg.img_size} px, {cfg.epochs} epochs, seed "
                f"{cfg.seed}); {n_done} runs done, {len(self.runs) - n_done} to train, about "
                f"{_hours(self.left())} of training left; {_hours(time.perf_counter() - self.start)} so far")

    def finish(self, cfg: "train.RunConfig") -> None:
        seconds = run_seconds(cfg)
        if seconds is not None:
            self.done[cfg.exp_id] = seconds


# -------------------------------------------------------------------------- writing the files


def publish_files(written: dict[str, Path], out_dir: Path) -> dict[str, str]:
    """Copy each written file to ``out_dir/<published name>`` (through a temporary file, so a
    reader never sees half a file); returns {published name: sha256}."""
    found = {}
    for name, source in sorted(written.items()):
        source = Path(source)
        if not source.is_file():
            raise CamlabError(f"the table's command did not write {source}")
        target = out_dir / name
        part = target.with_name(f".{name}.part")
        shutil.copyfile(source, part)
        part.replace(target)
        found[name] = digest(target)
    return found


def runs_table(plan: Sequence[Table]) -> tuple[str, float]:
    """Markdown: every finished run behind the chosen tables with its settings, test accuracy
    and training time, and the total training time in seconds."""
    rows, total, seen = [], 0.0, set()
    for table in plan:
        for cfg in table.runs():
            if cfg.exp_id in seen or (seconds := run_seconds(cfg)) is None:
                continue
            seen.add(cfg.exp_id)
            total += seconds
            path = cfg.run_dir() / ("cv.json" if cfg.cv else "metrics.json")
            found = json.loads(path.read_text())
            acc = found["mean"]["test_acc"] if cfg.cv else found["test_acc"]
            rows.append([table.name, cfg.exp_id, cfg.mode, cfg.dataset, str(cfg.img_size), str(cfg.epochs),
                         str(cfg.seed), "-" if cfg.body_evidence is None else f"{cfg.body_evidence:g}",
                         f"{acc:.4f}", f"{seconds:.0f}"])
    header = ["table", "run", "mode", "dataset", "px", "epochs", "seed", "body evidence", "test acc", "train s"]
    return tables.markdown(header, rows, [tables.LEFT] * 4 + [tables.RIGHT] * 6), total


def write_runs(manifest: dict, plan: Sequence[Table], out_dir: Path) -> None:
    """``runs.md`` (every run behind the published tables, with the training time in all) and
    ``manifest.json``, its ``train_seconds`` that total."""
    text, total = runs_table([t for t in plan if t.name in manifest["tables"]])
    atomic_write_text(out_dir / "runs.md", f"Every finished run behind the tables published in report/published/ "
                                           f"({', '.join(t.name for t in plan if t.name in manifest['tables'])}); "
                                           f"training time in all: {total:.0f} s ({total / 3600:.2f} h) on this "
                                           f"machine.\n\n" + text)
    manifest["train_seconds"] = round(total)
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    if not path.is_file():
        return {"tables": {}}
    try:
        found = json.loads(path.read_text())
    except ValueError as err:
        raise CamlabError(f"{path} is not JSON ({err}); move it away to publish again") from None
    return found if isinstance(found, dict) and isinstance(found.get("tables"), dict) else {"tables": {}}


def publish(names: Sequence[str] | None = None, out_dir: Path = PUBLISHED_DIR, plan: Sequence[Table] = PLAN) -> dict:
    """Make (or reuse) every run of the chosen tables (all by default), in plan order; write each
    table's files and copy them to ``out_dir`` as soon as its runs are done; then ``runs.md``
    (every run and the total training time) and ``manifest.json`` (each table's command, runs
    and files with their sha256). Returns the manifest."""
    every = plan
    plan = [t for t in every if names is None or t.name in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress.of(plan)
    print(f"publish: {len(plan)} tables, {len(progress.runs)} runs ({len(progress.done)} finished), about "
          f"{_hours(progress.left())} of training left on this machine", flush=True)
    manifest = read_manifest(out_dir)
    for table in plan:
        runs = table.runs()
        started = time.perf_counter()
        for cfg in runs:
            print(progress.line(table.name, cfg), flush=True)
            trained_cv(cfg) if cfg.cv else trained(cfg)
            progress.finish(cfg)
        files = publish_files(table.write(), out_dir)
        manifest = read_manifest(out_dir)  # again: another publication may have published a table meanwhile
        manifest["tables"][table.name] = {"command": table.command, "runs": [c.exp_id for c in runs], "files": files}
        write_runs(manifest, every, out_dir)
        print(f"published {table.name}: {', '.join(files)} ({_hours(time.perf_counter() - started)})", flush=True)
    total = manifest.get("train_seconds", 0)
    written = {name for entry in manifest["tables"].values() for name in entry["files"]} | {MANIFEST, "runs.md"}
    stale = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name not in written)
    if stale and names is None:
        print(f"warning: {out_dir}/ holds files no table wrote (left as they are): {', '.join(stale)}", file=sys.stderr)
    print(f"publish: done in {_hours(time.perf_counter() - progress.start)}; training time of every run: "
          f"{_hours(total)}", flush=True)
    return manifest


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="iou.py --publish", description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", choices=list(TABLES), default=None, metavar="TABLE",
                   help=f"only these tables, in plan order (default: all: {', '.join(TABLES)})")
    p.add_argument("--plan", action="store_true", help="list the tables, their commands and runs, and stop")
    p.add_argument("--rescore", action="store_true",
                   help="score every comparison's runs again instead of reusing the reports kept under "
                        "report/scores/ (same run, settings and code), and keep the new ones")
    p.add_argument("--quote", action="store_true",
                   help="only refresh the README's and docs/' quoted blocks (<!-- published: FILE [table N] -->) "
                        "from report/published/")
    return p


def show_plan(names: Sequence[str] | None) -> None:
    plan = [t for t in PLAN if names is None or t.name in names]
    progress = Progress.of(plan)
    for table in plan:
        runs = table.runs()
        print(f"{table.name}: {table.command}\n  {len(runs)} runs, {sum(c.exp_id in progress.done for c in runs)} "
              f"finished: {' '.join(c.exp_id for c in runs) or '-'}")
    print(f"about {_hours(progress.left())} of training left on this machine")


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    def body() -> None:
        if args.plan:
            show_plan(args.tables)
        elif args.quote:
            changed = quote_files()
            print(f"refreshed the quotes in {', '.join(map(str, changed))}" if changed else "every quote is up to date")
        else:
            publish(args.tables, plan=make_plan(PlanSettings(scores="rescore")) if args.rescore else PLAN)
    return run_cli("iou.py --publish", body)


# --------------------------------------------------------------- the README quotes the files
QUOTE = re.compile(r"(?P<head><!-- published: (?P<file>[\w.-]+)(?: table (?P<n>\d+))? -->\n)(?P<body>.*?)"
                   r"<!-- /published -->", re.S)
LINK = re.compile(r"report/published/([\w.-]+)")
NUMBER = re.compile(r"(?<![\w.])[+-−]?\d+\.\d{3,}(?![\d])")
QUOTING = ("README.md", "docs/results.md", "docs/performance.md", "docs/lab.md", "docs/methods.md", "docs/data.md")


def _tables_of(text: str) -> list[str]:
    """The markdown tables of ``text``: each run of lines that start with "|", with its newline."""
    found, current = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("".join(current))
            current = []
    return found + (["".join(current)] if current else [])


def selection(out_dir: Path, name: str, n: int | None) -> str:
    """What a marker quotes: the published file ``name`` whole, or its ``n``-th table."""
    path = Path(out_dir) / name
    if not path.is_file():
        raise CamlabError(f"a quote names {path}, which does not exist: publish it first (python iou.py --publish)")
    text = path.read_text()
    if n is None:
        return text if text.endswith("\n") else text + "\n"
    found = _tables_of(text)
    if not 1 <= n <= len(found):
        raise CamlabError(f"a quote names table {n} of {path}, which has {len(found)}")
    return found[n - 1]


def quoted(text: str, out_dir: Path = PUBLISHED_DIR) -> str:
    """``text`` with every ``<!-- published: FILE [table N] -->`` ... ``<!-- /published -->``
    block holding what it names now."""
    def fill(m: re.Match) -> str:
        body = selection(out_dir, m.group("file"), int(m.group("n")) if m.group("n") else None)
        return m.group("head") + body + "<!-- /published -->"
    return QUOTE.sub(fill, text)


def unquoted_numbers(text: str, out_dir: Path = PUBLISHED_DIR) -> list[str]:
    """The numbers with three or more decimals in a paragraph of ``text`` that cites files under
    report/published/ and that none of those files holds (quoted blocks are checked whole by
    :func:`quoted` and skipped here): each "FILE(S): number"."""
    missing = []
    for paragraph in re.split(r"\n\s*\n", QUOTE.sub("", text)):
        cited = sorted(set(LINK.findall(paragraph)))
        if not cited:
            continue
        sources = "".join((Path(out_dir) / c).read_text(errors="replace") for c in cited
                          if (Path(out_dir) / c).is_file() and not c.endswith(".png"))
        for number in NUMBER.findall(paragraph):
            plain = number.replace("−", "-").lstrip("+")
            if plain not in sources and plain.lstrip("-") not in sources:
                missing.append(f"{', '.join(cited)}: {number}")
    return missing


def quote_files(root: Path = Path("."), out_dir: Path = PUBLISHED_DIR) -> list[Path]:
    """Refresh the quoted blocks of the README and docs/ from ``out_dir``; returns the files changed."""
    changed = []
    for name in QUOTING:
        path = Path(root) / name
        if path.is_file() and (text := path.read_text()) != (new := quoted(text, out_dir)):
            atomic_write_text(path, new)
            changed.append(path)
    return changed


if __name__ == "__main__":
    sys.exit(cli())
