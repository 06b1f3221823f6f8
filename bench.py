"""The throughput benchmark's command line: ``python bench.py --device cpu|cuda [--quick] --out report/bench.json``.

One run, one device, the same data, model, optimizer, batch size and resolution, three pipelines
for each task:

* ``naive`` - the handout's way: a ``Dataset`` that opens every PNG with PIL, per-sample
  ``Resize`` + ``ToTensor`` + ``Normalize``, a ``DataLoader`` with worker processes, fp32 NCHW,
  and a ``.item()`` per step as a typical student loop has;
* ``fast``  - the project's own path, the code ``main.py`` runs: :func:`train.run_epoch` on an
  :class:`dataloader.ImageSet` already on the device (training), :func:`research.experiments.dataset_cams` (the
  CAM extraction that evaluation runs);
* ``bound`` - the model alone on float batches already on the device at the final resolution,
  made once before timing: the ceiling any data path can reach.

``fast`` and ``bound`` share the numerics ``run_epoch`` uses (its autocast and, on a GPU,
channels-last batches) and ``torch.backends.cudnn.benchmark`` as ``main.py`` sets it; ``naive``
runs fp32 NCHW with cuDNN's default (no benchmark), as the handout does.

Tasks: ``cam_train`` (CAM mode, cross-entropy), ``seg_train`` (SEG mode, the equivariance
objective with its default scale-1/2 transform), ``cam_infer`` (the CAM of each image's top
class, upsampled to the stored image size, as evaluation computes it).

Per task and pipeline it reports images per second, achieved GFLOP/s (FLOPs per image counted
with ``torch.utils.flop_counter`` times images per second) and peak memory, and per task the
ratios fast/naive and fast/bound. Each pipeline runs a few timed epochs ("rounds") of the same
images, interleaved with the other pipelines' (the order rotating), and its best round counts:
on a shared machine, bursts of other work then hit all three alike. Timing never includes
loading or decoding the dataset into the ``ImageSet`` (``main.py`` does that once per run, and
caches it on disk), nor the untimed warm-up batches. The naive ``DataLoader``'s workers start
in the warm-up and persist through the rounds: in a real 2,000-image epoch their start-up is
spread thin, in a short round it would not be.

Output: the JSON written to ``--out`` (a file under report/; an existing file is replaced only
with ``--overwrite``) and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from camlab import tables, utils
from camlab.utils import CamlabError, OneLineParser, run_cli
from research.bench import (DEFAULT_TASKS, MODEL_TASKS, TASKS, BenchSettings, _ratio, resolve_settings,
                            run_bench)
from research.databench import data_table


# ---------------------------------------------------------------------------- the table
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _mem(entry: dict) -> float | None:
    for key in ("peak_cuda_alloc_mb", "peak_rss_mb", "process_max_rss_so_far_mb"):
        if key in entry:
            return entry[key]
    return None


def format_table(result: dict) -> str:
    """Markdown: one row per task (plus one per compiled variant)."""
    peak = result["settings"].get("peak_gflops")
    of = "matmul" if result["settings"].get("peak_source", "").startswith("measured") else "peak"
    header = ["task", "naive img/s", "fast img/s", "bound img/s", "fast/naive", "fast/bound", "GFLOP/img",
              f"fast GFLOP/s (% of {of})", "peak mem MB (naive/fast/bound)"]
    rows = []
    for task in MODEL_TASKS:
        if task not in result:
            continue
        r = result[task]
        variants = [("", "fast", "bound", "fast_over_bound")]
        if "fast_compiled" in r:
            variants.append((" (compiled)", "fast_compiled", "bound_compiled",
                             "fast_compiled_over_bound_compiled"))
        for label, fast, bound, over in variants:
            f, b, n = r[fast], r[bound], r["naive"]
            pct = f" ({_fmt(f.get('pct_of_peak'), '.0f')}%)" if peak else ""
            rows.append([f"{task}{label}", _fmt(n.get("img_per_s"), ".1f"), _fmt(f.get("img_per_s"), ".1f"),
                         _fmt(b.get("img_per_s"), ".1f"), _fmt(_ratio(f, n), ".2f"), _fmt(r[over], ".2f"),
                         f"{r['gflop_per_image']:.2f}", f"{_fmt(f.get('gflops_per_s'), '.1f')}{pct}",
                         "/".join(_fmt(_mem(e), ".0f") for e in (n, f, b))])
    text = tables.markdown(header, rows, [tables.LEFT] + [tables.RIGHT] * 8) if rows else ""
    if "wsol_eval" in result:
        evals = [[f"{r['interval']:g}", "every contour" if r["multi_contour"] else "largest contour",
                  r["n_maps"], f"{r['size']}×{r['size']}", f"{r['fast_maps_per_s']:.1f}",
                  f"{r['reference_maps_per_s']:.1f}", f"{r['ratio']:.1f}×"] for r in result["wsol_eval"]]
        text += ("\n" if text else "") + tables.markdown(
            ["CAM threshold step", "boxes", "maps", "map size", "fast maps/s", "reference maps/s", "fast/reference"],
            evals, [tables.RIGHT, tables.LEFT] + [tables.RIGHT] * 5)
    return text + ("\n" if text else "") + data_table(result["data"]) if "data" in result else text


# ------------------------------------------------------------------------------ the CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="bench.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="Images per second of the naive (handout), fast (main.py's) and "
                                  "bound (model alone) pipelines for CAM training, SEG training and "
                                  "CAM extraction; writes JSON to --out and prints a Markdown table.")
    p.add_argument("--device", default="auto", choices=utils.DEVICES)
    p.add_argument("--quick", action="store_true",
                   help="fewer images (CPU: 3 rounds of 32 per training pipeline, of 64 per "
                        "inference pipeline; about 1.5 minutes on an idle 2-core CPU)")
    p.add_argument("--out", default=str(utils.REPORT_DIR / "bench.json"),
                   help="JSON output, a file under report/; an existing file is kept unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive pipeline")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), choices=TASKS,
                   help="data (not run by default: minutes): the streaming and in-memory data paths (research.databench)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA only: also time fast and bound under torch.compile (both are reported)")
    p.add_argument("--peak_gflops", type=float, default=None,
                   help="the device's peak GFLOP/s for the %% column (CPU default: this machine's fp32 "
                        "matmul, measured at the start of the run; CUDA: none)")
    p.add_argument("--data_root", default=None,
                   help="a lab-layout dataset; None takes data/synthetic (generated when missing)")
    p.add_argument("--n_train", type=int, default=0,
                   help="timed images per round of a training pipeline (0: default)")
    p.add_argument("--n_infer", type=int, default=0,
                   help="timed images per round of an inference pipeline (0: default)")
    p.add_argument("--warmup_batches", type=int, default=0,
                   help="untimed batches per pipeline (0: default)")
    p.add_argument("--rounds", type=int, default=0,
                   help="timed epochs per pipeline, interleaved with the others'; the best counts (0: default)")
    p.add_argument("--wsol_maps", type=int, default=0,
                   help="maps per round of the wsol_eval task (0: default, 32; --quick 8)")
    p.add_argument("--seed", type=int, default=0)
    return p


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(device=args.device, img_size=args.img_size, batch_size=args.batch_size,
                         workers=args.workers, n_train=args.n_train, n_infer=args.n_infer,
                         warmup_batches=args.warmup_batches, rounds=args.rounds, quick=args.quick,
                         tasks=tuple(dict.fromkeys(args.tasks)), compile=args.compile, wsol_maps=args.wsol_maps,
                         peak_gflops=args.peak_gflops, data_root=args.data_root, seed=args.seed)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if not out.resolve().is_relative_to(utils.REPORT_DIR.resolve()) or out.resolve() == utils.REPORT_DIR.resolve():
        raise CamlabError(f"--out {out} would write outside {utils.REPORT_DIR}/; name a file there, "
                          f"e.g. {utils.REPORT_DIR / 'bench.json'}")
    if out.is_dir():
        raise CamlabError(f"--out {out} is a folder; name a file")
    if out.exists() and not args.overwrite:
        raise CamlabError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    s = settings_from_args(args)
    resolve_settings(s, utils.resolve_device(s.device))  # refuse bad numbers before any work
    result = run_bench(s)
    utils.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(format_table(result), end="")
    for note in result["settings"]["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("bench.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
