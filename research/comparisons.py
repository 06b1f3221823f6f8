"""The comparisons: which runs each table needs (written as data), training them or reusing finished ones with the same settings, and the research commands of ``iou.py`` (``--methods``, ``--sweep``, ``--extractors``, ``--wsol``, ``--semseg``).

A finished run with the same settings is reused, so an interrupted comparison continues where
it stopped. Reports are written to ``report/``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import train
from camlab import figures, synthetic
from camlab.boxes import DEFAULT_PROTOCOL
from camlab.crf import CRF_DEFAULT_VARIANTS
from camlab.extractors import DEFAULT_EXTRACTOR, EXTRACTOR_NAMES, EXTRACTORS
from camlab.faithfulness import FAITH_STEPS
from camlab.metrics import CAM_CURVE_INTERVAL
from camlab.runs import read_metrics
from camlab.utils import (CHECKPOINT_DIR, REPORT_DIR, CamlabError, atomic_write, atomic_write_text, reason,
                          resolve_device)
from research.experiments import Experiment, finished_experiments
from research.affinitynet import AFFINITY_FILE, AffinitySettings
from research.semseg import semseg_variants, write_scales_report, write_semseg_report
from research.wsol import (methods_table, summary_table, sweep_intervals, write_extractors_report,
                           write_methods_report, wsol_report)


# ACoL's conv heads in the comparison: 256 hidden channels, twice the 128 that ResNet-18's layer2
# gives them (the paper's 1024 on VGG's 512). At 1024 one ACoL run costs about 9 CAM runs on a CPU.
ACOL_BENCH_WIDTH = 256


# The methods compared in the README, at each seed. SEG takes the transform whose ablation run
# was best on *training* masks (rotate+hflip); ACoL pp the paper's delta, pn the notes' 0.9; CSE's
# ordinary classifier is the CAM run of the same comparison and seed.
METHODS: tuple[tuple[str, dict], ...] = (
    ("cam", dict(mode="CAM")), ("seg", dict(mode="SEG", transform="rotate+hflip")),
    ("acol_pp", dict(mode="ACOL", recipe="pp", delta=(0.6,), acol_head="conv", acol_width=ACOL_BENCH_WIDTH)),
    ("acol_pp_grow1", dict(mode="ACOL", recipe="pp", delta=(0.6,), acol_head="conv", acol_width=ACOL_BENCH_WIDTH,
                           acol_grow=1)),
    ("acol_pn", dict(mode="ACOL", recipe="pn", delta=(0.9,), acol_head="conv", acol_width=ACOL_BENCH_WIDTH)),
    ("cse", dict(mode="CSE", oc_exp="{prefix}_cam{suffix}")))


def table_runs(base: "train.RunConfig", prefix: str, table: tuple[tuple[str, dict], ...],
          form: str, suffix: str = "") -> list["train.RunConfig"]:
    """The configs of ``table``'s runs: ``<prefix>_<name><suffix>``, ``form`` as SEG's
    regularised CAM ("{prefix}" and "{suffix}" in a setting are filled in)."""
    return [dataclasses.replace(base, exp_id=f"{prefix}_{name}{suffix}", cam=form,
                                **{k: (v.format(prefix=prefix, suffix=suffix) if isinstance(v, str) else v)
                                   for k, v in settings.items()})
            for name, settings in table]


def trained(cfg: "train.RunConfig") -> dict:
    """The run's metrics: reused when ``checkpoints/<exp_id>`` holds a finished run with the
    same settings (so an interrupted ablation continues where it stopped), trained otherwise; a
    run interrupted before its metrics.json goes on from its last finished epoch (``--resume``,
    exact) when its ``last.pth`` has these settings, else is trained again. Other settings in a
    finished run are an error, and so is a metrics.json that is not camlab's, unless
    ``cfg.overwrite`` (``--retrain_damaged``) asks to train that run again."""
    path = cfg.run_dir() / "metrics.json"
    if not path.is_file():  # never trained, or interrupted before it finished
        if (cfg.run_dir() / "last.pth").is_file():
            try:
                return train.train(dataclasses.replace(cfg, resume=True, overwrite=False))
            except CamlabError as err:
                print(f"cannot resume {cfg.run_dir()} ({err}); training it again", file=sys.stderr)
        return train.train(dataclasses.replace(cfg, overwrite=True, resume=False))
    try:
        metrics = read_metrics(path)
    except CamlabError as err:
        if not cfg.overwrite:
            raise CamlabError(f"{err}; pass --retrain_damaged to train that run again") from None
        print(f"retraining {cfg.run_dir()}: {err}", file=sys.stderr)
        return train.train(dataclasses.replace(cfg, overwrite=True))
    differ = train.differing(cfg, metrics["args"])
    if differ:
        raise CamlabError(f"{cfg.run_dir()} holds a run with other settings ({', '.join(differ)}); "
                          f"move it away or use another --prefix")
    print(f"reusing {cfg.run_dir()} (same settings)")
    return metrics


# ------------------------------------------------------------------ scored reports, reused
# Where ``scores="reuse"`` keeps each scored report (``<exp_id>/<what>-<tag>.pkl``): scoring a run
# takes minutes to hours (faithfulness, Score-CAM, CRF), so a stopped comparison loses at most
# the report in progress, like the run in progress. ``off`` (the commands' default) neither reads
# nor writes them; ``rescore`` scores again and writes.
SCORES_DIR = REPORT_DIR / "scores"
SCORE_MODES = ("off", "reuse", "rescore")
_CODE_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@functools.lru_cache(maxsize=None)
def code_fingerprint(root: Path = _CODE_ROOT) -> str:
    """sha256 of every Python file a score can depend on: the top-level files and the packages
    ``camlab`` and ``research`` (their paths and bytes, in sorted order)."""
    files = sorted([*root.glob("*.py"), *(root / "camlab").rglob("*.py"), *(root / "research").rglob("*.py")])
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


# the libraries whose versions a score depends on (torchcam's extractors, pydensecrf2's CRF ...)
SCORE_LIBRARIES = ("torch", "torchvision", "numpy", "opencv-python-headless", "scikit-learn", "torchcam", "pydensecrf2")


def digest(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digests(run: Path, names: Sequence[str]) -> dict[str, str | None]:
    """{name: :func:`digest` of ``run/name``, None where there is no such file}."""
    return {n: digest(run / n) if (run / n).is_file() else None for n in names}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def score_key(exp_id: str, what: str, settings: dict, device: str, depends: Sequence[str] = ()) -> dict:
    """What a scored report depends on: the run (its metrics.json's sha256: a run trained again
    has other epoch times) and the files of ``depends`` in its folder (an affinity network), what
    was scored and with which settings, the device, the working folder (reports name the
    resolved data root), the code and the libraries' versions. The dataset's files are not in it:
    the embedded benchmark is generated by the code; a dataset of yours that changes under a run
    calls for ``rescore``."""
    run = CHECKPOINT_DIR / exp_id
    return {"exp_id": exp_id, "run": _digests(run, ["metrics.json"])["metrics.json"], "files": _digests(run, depends),
            "what": what, "device": resolve_device(device).type, "cwd": str(Path.cwd().resolve()),
            "code": code_fingerprint(), "libraries": {n: _version(n) for n in SCORE_LIBRARIES},
            "settings": json.loads(json.dumps(settings, sort_keys=True, default=str))}


def lazy_run(exp_id: str, device: str) -> Callable[[], Experiment]:
    """``Experiment.load(exp_id, device)`` on the first call, the same run after: one model, test
    split and masks for every report of it, and none loaded when every report is reused."""
    return functools.cache(lambda: Experiment.load(exp_id, device))


def scored(exp_id: str, what: str, settings: dict, device: str, score: Callable[[], T], mode: str = "off",
           folder: Path | None = None, depends: Sequence[str] = ()) -> T:
    """``score()``, or (``mode`` "reuse") the report that ``folder/<exp_id>/<what>-<tag>.pkl``
    holds (the tag: a digest of the settings and device) when its :func:`score_key` is this
    one's. Under "reuse" and "rescore" a new report is written there with the key as it is after
    scoring (``depends``' files may be made by it; atomically; a file system fault is one line on
    stderr and the report is still returned). A file that cannot be read, or holds another key,
    is scored again and replaced."""
    if mode not in SCORE_MODES:
        raise CamlabError(f"--scores {mode!r}: choose from {', '.join(SCORE_MODES)}")
    if mode == "off":
        return score()
    key = score_key(exp_id, what, settings, device, depends)
    # one file per (what, settings, device): the methods table and the sweep score the same run
    # with other settings; a new run or new code replaces the file
    tag = hashlib.sha256(json.dumps([key["settings"], key["device"]], sort_keys=True).encode()).hexdigest()[:12]
    path = Path(folder or SCORES_DIR) / exp_id / f"{what}-{tag}.pkl"
    if mode == "reuse" and path.is_file():
        try:
            with path.open("rb") as f:
                found = pickle.load(f)
            if not (isinstance(found, dict) and isinstance(found.get("key"), dict) and "report" in found):
                raise ValueError("not a report camlab kept")
            if found["key"] == key:
                print(f"reusing {path} (scored before: same run, settings and code)", flush=True)
                return found["report"]
            print(f"{path} was scored with another run, settings or code; scoring again", flush=True)
        except Exception as err:  # a truncated or foreign file: the report is made again
            print(f"cannot read {path} ({reason(err)}); scoring again", file=sys.stderr)
    report = score()
    key["files"] = _digests(CHECKPOINT_DIR / exp_id, depends)  # what the scoring made (an affinity network)
    try:
        atomic_write(path, lambda f: pickle.dump({"key": key, "report": report}, f, protocol=pickle.HIGHEST_PROTOCOL))
    except CamlabError as err:
        print(f"warning: {err} (the report is not kept for reuse)", file=sys.stderr)
    return report


def method_configs(base: "train.RunConfig", prefix: str = "methods",
                   seeds: Sequence[int] = (0,)) -> list["train.RunConfig"]:
    """Every METHODS run at every seed: ``<prefix>_<name>_s<seed>``, seed by seed."""
    return [cfg for seed in seeds
            for cfg in table_runs(dataclasses.replace(base, seed=seed), prefix, METHODS, "class", f"_s{seed}")]


def method_reports(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                   protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,),
                   interval: float = CAM_CURVE_INTERVAL, faith_steps: int = FAITH_STEPS,
                   scores: str = "off") -> list[dict]:
    """Train (or reuse) every METHODS run at every seed (``<prefix>_<name>_s<seed>``), then
    score each with :func:`wsol_report` (each report reused as ``scores`` says: :func:`scored`)."""
    configs = method_configs(base, prefix, seeds)
    for cfg in configs:
        trained(cfg)
    reports, start = [], time.perf_counter()
    for k, cfg in enumerate(configs, start=1):
        print(f"scoring {cfg.exp_id} ({k}/{len(configs)}; {(time.perf_counter() - start) / 60:.1f} min so far)",
              flush=True)
        settings = dict(n_threshold=n_threshold, protocol=protocol, interval=interval, faith_steps=faith_steps,
                        diagnose=True, in_memory="always")
        reports.append(scored(cfg.exp_id, f"wsol_{DEFAULT_EXTRACTOR}", settings, cfg.device, lambda cfg=cfg: wsol_report(
            cfg.exp_id, n_threshold, cfg.device, protocol, interval=interval, faith_steps=faith_steps), scores))
    return [r for r in reports if r is not None]


def run_methods(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,),
                interval: float = CAM_CURVE_INTERVAL, faith_steps: int = FAITH_STEPS, scores: str = "off") -> str:
    """:func:`method_reports` into ``report/methods.{csv,md}`` and ``report/methods_grid.png``."""
    return write_methods_report(method_reports(base, prefix, n_threshold, protocol, seeds, interval, faith_steps,
                                               scores))


# ---------------------------------------------------------------------- extractors compared
def extractor_reports(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                      protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,),
                      extractors: Sequence[str] = tuple(EXTRACTORS), interval: float = CAM_CURVE_INTERVAL,
                      faith_steps: int = FAITH_STEPS, in_memory: str = "always", workers: int = 0,
                      scores: str = "off") -> list[dict]:
    """Every extractor on the plain CAM run of the methods comparison at each seed
    (``<prefix>_cam_s<seed>``, trained when missing): one :func:`wsol_report` per (seed,
    extractor), its ``method`` the extractor's name, so that the methods tables and their
    intervals (each against camlab's CAM on the same model) apply unchanged. The body-only and
    part-only accuracies are the model's, whatever reads its maps: measured once per seed. The test
    split is read as ``in_memory`` says (a streamed one is scored in chunks, once per extractor).
    Each report is reused as ``scores`` says (:func:`scored`)."""
    reports = []
    for seed in seeds:
        cfg = table_runs(dataclasses.replace(base, seed=seed), prefix, METHODS[:1], "class", f"_s{seed}")[0]
        trained(cfg)
        load = lazy_run(cfg.exp_id, cfg.device)

        def score(name: str, cfg=cfg, load=load) -> dict | None:
            return wsol_report(load(), n_threshold, cfg.device, protocol, extractor=name, diagnose=name == "cam",
                               interval=interval, faith_steps=faith_steps, in_memory=in_memory, workers=workers)
        model_measures: dict = {}
        for name in dict.fromkeys(("cam", *extractors)):  # CAM first: every other is compared with it
            print(f"scoring {cfg.exp_id} through {EXTRACTOR_NAMES[name]}", flush=True)
            settings = dict(n_threshold=n_threshold, protocol=protocol, interval=interval, faith_steps=faith_steps,
                            diagnose=name == "cam", in_memory=in_memory)  # a streamed report has no mean IoU
            report = scored(cfg.exp_id, f"wsol_{name}", settings, cfg.device, lambda name=name: score(name), scores)
            if report is None:
                continue
            if name == "cam":
                model_measures = {k: v for k, v in report.items() if k.startswith("acc_")}
            report.update({**model_measures, "method": EXTRACTOR_NAMES[name]})
            reports.append(report)
    return reports


def sweep_prefix(prefix: str, value: float) -> str:
    """The runs of a sweep point: the methods comparison's own runs at the default setting
    (reused, not trained again), ``<prefix>_be<value>_...`` at any other."""
    return prefix if value == synthetic.BODY_EVIDENCE else f"{prefix}_be{value:g}"


def sweep_bases(base: "train.RunConfig", values: Sequence[float]) -> list[tuple[float, "train.RunConfig"]]:
    """(setting, the base run on the embedded benchmark generated at that body-evidence setting)."""
    return [(float(value), dataclasses.replace(base, body_evidence=float(value), data_root=None)) for value in values]


def run_sweep(base: "train.RunConfig", values: Sequence[float], prefix: str = "methods",
              n_threshold: int = 500, protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,),
              report_dir: Path = REPORT_DIR, interval: float = CAM_CURVE_INTERVAL,
              faith_steps: int = FAITH_STEPS, seeds_at: dict[float, Sequence[int]] | None = None,
              scores: str = "off") -> str:
    """Every method at every body-evidence setting in ``values`` (each its own embedded
    dataset, generated on first use) into ``report/sweep.{csv,md}``, ``sweep.png`` (mean IoU and
    PxAP against the setting, one line per method, mean over seeds with the seeds' spread) and
    ``sweep_intervals.png`` (each method minus CAM at each setting, each seed's interval).
    ``seeds_at`` gives some settings other seeds than ``seeds`` (the publication's intermediate
    settings take one). Reports are reused as ``scores`` says (:func:`scored`)."""
    reports = []
    for value, cfg in sweep_bases(base, values):
        reports += method_reports(cfg, sweep_prefix(prefix, value), n_threshold, protocol,
                                  (seeds_at or {}).get(value, seeds), interval, faith_steps, scores)
    seeds = sorted({r["seed"] for r in reports})
    csv_text, _ = methods_table(reports)
    atomic_write_text(Path(report_dir) / "sweep.csv", csv_text)
    curves: dict[str, dict[str, list]] = {}
    for r in reports:
        curve = curves.setdefault(r["method"], {})
        curve.setdefault(r["body_evidence"], []).append(r)
    series = {method: {key: [(dial, [x[key] for x in rs]) for dial, rs in sorted(points.items())]
                       for key in ("test_iou", "pxap", "acc_body")}
              for method, points in curves.items()}
    figures.plot_sweep(series, Path(report_dir) / "sweep.png",
                         title=f"the body-evidence sweep ({protocol} protocol; seeds {', '.join(map(str, seeds))})")
    intervals = sweep_intervals(reports)
    if intervals:
        figures.plot_sweep_intervals(intervals, Path(report_dir) / "sweep_intervals.png",
                                     title=f"which method beats CAM, and where: each seed's paired interval against "
                                           f"CAM ({protocol} protocol; filled: excludes 0)")
    text = (f"Body-evidence sweep: every method at each setting of the embedded benchmark's dial (the share of "
            f"bodies whose stripes carry their class's period and hue); protocol {protocol}, CAM threshold step "
            f"{interval:g}; seeds "
            f"{', '.join(map(str, seeds))}; intervals as in methods.md.\n\n" + summary_table(reports))
    atomic_write_text(Path(report_dir) / "sweep.md", text)
    return text


# The runs of the segmentation table, on the multi-object set: each label form's CAM and SEG (the
# single-label form: equivariance of the largest class's map; the multi-label form: of every
# present class's map), the single-label CSE (the image's largest class, judged by the
# single-label CAM) and OC-CSE (multi-label, judged by the multi-label CAM). Each is compared with
# the CAM of its own label form and seed.
SEMSEG: tuple[tuple[str, dict], ...] = (
    ("cam", dict(mode="CAM")), ("seg", dict(mode="SEG", transform="rotate+hflip")),
    ("cse", dict(mode="CSE", oc_exp="{prefix}_cam{suffix}")),
    ("cam_ml", dict(mode="CAM", multi_label=True)),
    ("seg_ml", dict(mode="SEG", transform="rotate+hflip", multi_label=True)),
    ("occse_ml", dict(mode="CSE", oc_exp="{prefix}_cam_ml{suffix}", multi_label=True)))


def semseg_configs(base: "train.RunConfig", prefix: str = "semseg",
                   seeds: Sequence[int] = (0,)) -> list["train.RunConfig"]:
    """Every SEMSEG run at every seed: ``<prefix>_<name>_s<seed>``."""
    return [cfg for seed in seeds
            for cfg in table_runs(dataclasses.replace(base, seed=seed), prefix, SEMSEG, "class", f"_s{seed}")]


def semseg_reports(base: "train.RunConfig", prefix: str = "semseg", n_threshold: int = 500,
                   seeds: Sequence[int] = (0,), crf: Sequence[str | None] = (None, *CRF_DEFAULT_VARIANTS),
                   scales: Sequence[bool] = (True,), refine: Sequence[str | None] = (None,),
                   aff: AffinitySettings | None = None, scores: str = "off") -> list[list[dict]]:
    """Train (or reuse) every SEMSEG run at every seed on ``base``'s dataset (the multi-object
    set by default), then score each without and with dense CRF (and with ``refine``'s random
    walk, each run's affinity network trained or reused), from the maps of each msf setting of
    ``scales`` (True: multi-scale): one list of reports per setting, in that order; each run's
    reports at a setting reused as ``scores`` says (:func:`scored`)."""
    found: list[list[dict]] = [[] for _ in scales]
    for cfg in semseg_configs(base, prefix, seeds):
        trained(cfg)
        load = lazy_run(cfg.exp_id, cfg.device)
        for reports, setting in zip(found, scales):
            reports += scored_variants(cfg.exp_id, load, cfg.device, n_threshold, crf, setting, refine, aff, scores)
    return found


def scored_variants(exp_id: str, load: Callable[[], Experiment], device: str, n_threshold: int,
                    crf: Sequence[str | None], msf: bool, refine: Sequence[str | None],
                    aff: AffinitySettings | None, scores: str = "off") -> list[dict]:
    """:func:`semseg_variants` of one run (``load()`` gives it, called only when it is scored),
    reused as ``scores`` says (:func:`scored`; with the random walk, its affinity network's
    file is part of the key)."""
    settings = dict(n_threshold=n_threshold, crf=list(crf), refine=list(refine),
                    aff=None if aff is None else dataclasses.asdict(aff))
    return scored(exp_id, f"semseg_{'msf' if msf else '1scale'}", settings, device,
                  lambda: semseg_variants(load(), n_threshold, crf, msf, refine, aff), scores,
                  depends=(AFFINITY_FILE,) if any(refine) else ())


# ---------------------------------------------------------------------------- the commands
def run_prefix(args, default: str) -> str:
    """The runs' prefix: ``--prefix`` or ``default``; on the generated embedded benchmark at a
    setting other than the default, ``<prefix>_be<setting>`` (:func:`sweep_prefix`), so that runs
    at different settings never share a name."""
    prefix = args.prefix or default
    if args.data_root is None and args.body_evidence is not None:
        return sweep_prefix(prefix, args.body_evidence)
    return prefix


def base_run(args, dataset: str = "lab") -> "train.RunConfig":
    return train.RunConfig(epochs=args.epochs, img_size=args.img_size, seed=args.seed,
                           batch_size=args.batch_size, weights=args.weights, data_root=args.data_root,
                           device=args.device, body_evidence=args.body_evidence, dataset=dataset,
                           overwrite=getattr(args, "retrain_damaged", False)).checked()


def timed(what: str, work) -> str:
    start = time.perf_counter()
    text = work()
    print(f"{what}: {(time.perf_counter() - start) / 60:.1f} min wall time (training, or reusing, and scoring)",
          file=sys.stderr)
    return text


def methods_command(args) -> None:
    """``python iou.py --methods [--seeds ...]``."""
    seeds = args.seeds or [args.seed]
    print(timed("methods", lambda: run_methods(base_run(args), run_prefix(args, "methods"), args.n_threshold,
                                                args.protocol, seeds, args.cam_curve_interval,
                                                args.faith_steps, args.scores)), end="")


def sweep_command(args) -> None:
    """``python iou.py --sweep body_evidence 0 0.25 ...``."""
    seeds = args.seeds or [args.seed]
    values = args.sweep_values
    print(timed("sweep", lambda: run_sweep(base_run(args), values, args.prefix or "methods", args.n_threshold,
                                            args.protocol, seeds, interval=args.cam_curve_interval,
                                            faith_steps=args.faith_steps, scores=args.scores)), end="")


def extractors_command(args) -> None:
    """``python iou.py --extractors [--seeds ...]``."""
    seeds = args.seeds or [args.seed]
    print(timed("extractors", lambda: write_extractors_report(extractor_reports(
        base_run(args), run_prefix(args, "methods"), args.n_threshold, args.protocol, seeds,
        args.extractors or tuple(EXTRACTORS), args.cam_curve_interval, args.faith_steps, args.data_in_memory,
        args.workers, args.scores))), end="")


def wsol_command(args) -> None:
    """``python iou.py --wsol``: every finished run on a dataset with boxes or masks."""
    reports = []
    for exp_id in finished_experiments():
        report = wsol_report(exp_id, args.n_threshold, args.device, args.protocol, args.extractor,
                             interval=args.cam_curve_interval, strict_boxes=args.strict_boxes,
                             faith_steps=args.faith_steps, in_memory=args.data_in_memory, workers=args.workers)
        if report is None:
            print(f"skipping {exp_id}: its test split has no boxes or masks")
        else:
            reports.append(report)
    print(write_methods_report(reports), end="")


def semseg_command(args) -> None:
    """``python iou.py --semseg [--crf] [--refine rw] [--seeds ...] [--runs EXP ...] [--both_scales]``."""
    crf = (None, *(args.crf or CRF_DEFAULT_VARIANTS)) if args.crf is not None else (None,)
    msf = not args.no_msf
    both = getattr(args, "both_scales", False)
    if both and (args.no_msf or args.refine):
        raise CamlabError("--both_scales scores every run from multi-scale maps and from one scale's: drop "
                          + ("--no_msf" if args.no_msf else "--refine (the walk is scored at one setting at a time)"))
    refine = (None, *args.refine) if args.refine else (None,)
    aff = AffinitySettings(radius=args.aff_radius, pairs=args.aff_pairs, epochs=args.aff_epochs, init=args.aff_init,
                           msf=msf).checked()
    scales = (True, False) if both else (msf,)

    def written(found: Sequence[list[dict]]) -> str:
        text = write_semseg_report(found[0])
        if both:
            write_semseg_report(found[1], stem="semseg_1scale")
            write_scales_report(found[0], found[1])
        return text
    if args.runs:
        def work() -> str:
            exps = [Experiment.load(exp_id, args.device) for exp_id in args.runs]
            return written([[report for exp in exps for report in
                             scored_variants(exp.exp_id, lambda exp=exp: exp, args.device, args.n_threshold, crf,
                                             setting, refine, aff, args.scores)]
                            for setting in scales])
    else:
        seeds = args.seeds or [args.seed]
        base = base_run(args, args.dataset)
        work = lambda: written(semseg_reports(base, run_prefix(args, "semseg"), args.n_threshold,  # noqa: E731
                                              seeds, crf, scales, refine, aff, args.scores))
    print(timed("semseg", work), end="")
