"""The lab's IoU: how well each predicted mask covers the true one, the report tables (the ten images, the whole test set, the transform study of handout 3.5) and the research commands.

In plain words: lay the predicted mask P over the ground-truth mask G. The *intersection* is the
set of pixels both call foreground; the *union* is the set of pixels at least one of them calls
foreground. IoU is the size of the first divided by the size of the second,

    IoU(P, G) = |P ∩ G| / |P ∪ G|,

a number in [0, 1]: 1 when the masks are identical, 0 when they do not touch. Predicting too
much is punished (the union grows) as much as predicting too little (the intersection shrinks).
Both masks are compared at the ground truth's size. When both masks are empty the union is
empty too; we count that as 1.0 - nothing was predicted where there was nothing to find.

A CAM becomes a mask by min-max normalising it to [0, 1] and keeping the pixels at or above a
threshold (``camlab.cams.minmax``, ``camlab.metrics.threshold_masks``). The handout asks for one
threshold shared by the CAM and SEG modes; ``camlab.metrics.choose_threshold`` picks it from
*training* masks, never test ones, and ``DEFAULT_THRESHOLD`` is the value used until then. The
metrics beyond the lab (PxAP, MaxBoxAcc, mIoU) are in ``camlab.metrics`` and ``camlab.boxes``.

Ground-truth masks are read from ``test_seg/<stem>.png``; the masks that ``visualize.py`` writes
are ``visualize/<experiment>/<stem>_seg.png``. ``python iou.py`` tabulates every experiment's
IoUs into ``report/iou.csv`` and ``report/iou.md``; ``python iou.py --methods`` (``--sweep``,
``--extractors``, ``--wsol``, ``--semseg``) runs the comparisons of ``research.comparisons``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

import model
import train
import visualize
from camlab import formats, scoremaps, stream, tables
from camlab.affinity import PAIR_FORMS
from camlab.boxes import DEFAULT_PROTOCOL, PROTOCOLS
from camlab.crf import CRF_VARIANTS
from camlab.extractors import DEFAULT_EXTRACTOR, EXTRACTORS
from camlab.faithfulness import FAITH_STEPS
from camlab.images import read_mask, read_mask_dir
from camlab.metrics import THRESHOLD_GRID, as_bool, batch_iou
from camlab.scoremaps import WSOL_INTERVAL
from camlab.utils import (DEFAULT_DATA_ROOT, DEFAULT_THRESHOLD, DEVICES, PRED_SUFFIX, REPORT_DIR, VISUALIZE_DIR,
                          CamlabError, OneLineParser, SEED_MAX, atomic_write_text, check_range, run_cli, safe_subdir)
from research import comparisons
from research.affinitynet import AFFINITY_INITS, AffinitySettings
from research.comparisons import base_run, run_prefix, table_runs, trained
from research.experiments import localization_report, whole_test_reports, write_full_report


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool H×W mask resized to ``shape`` (H, W) by nearest neighbour (stays binary)."""
    if mask.shape == shape:
        return mask
    if not mask.size or not all(shape):
        raise CamlabError(f"cannot compare masks of shapes {mask.shape} and {shape}: an empty mask "
                          "cannot be resized to another size")
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU = |P ∩ G| / |P ∪ G| of one predicted mask and one ground-truth mask.

    pred, gt: H×W masks, bool or uint8 (uint8: foreground where > 127, as in 0/255 images).
    It is computed at the ground truth's size: a pred of another size is resized to gt's with
    nearest-neighbour interpolation. Both masks empty -> 1.0 (nothing predicted where there is
    nothing: perfect); exactly one empty -> 0.0.
    """
    pred, gt = as_bool(pred, "predicted"), as_bool(gt, "ground-truth")
    if pred.ndim != 2 or gt.ndim != 2:
        raise CamlabError(f"iou() takes two H×W masks, got shapes {pred.shape} and {gt.shape}")
    return float(batch_iou(_resize_nearest(pred, gt.shape), gt))


# ------------------------------------------------------------------------------ mask files
def _table_for(pred_dir: Path, gts: dict[str, np.ndarray]) -> dict[str, float]:
    table = {}
    for stem, gt in gts.items():
        pred_path = pred_dir / f"{stem}{PRED_SUFFIX}"
        if not pred_path.is_file():
            raise CamlabError(f"no predicted mask {pred_path} for ground truth {stem!r}: "
                              "run visualize.py for this experiment first")
        table[stem] = iou(read_mask(pred_path), gt)
    return table


def _read_gts(gt_dir: Path | str) -> dict[str, np.ndarray]:
    gts = read_mask_dir(gt_dir)
    if not gts:
        raise CamlabError(f"no ground-truth masks (*.png, *.jpg, *.bmp) in {gt_dir}")
    return gts


def iou_table(pred_dir: Path | str, gt_dir: Path | str) -> dict[str, float]:
    """stem -> IoU of ``pred_dir/<stem>_seg.png`` against ``gt_dir/<stem>.png`` (sorted by stem).

    Every ground-truth stem needs a prediction (else CamlabError naming the missing file);
    other files in ``pred_dir`` (``*_cam.png`` overlays, other stems) are ignored.
    """
    return _table_for(Path(pred_dir), _read_gts(gt_dir))


def _has_masks(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob(f"*{PRED_SUFFIX}"))


def _visualised(visualize_dir: Path, names: Sequence[str] | None = None) -> list[Path]:
    """The experiment folders under ``visualize_dir`` that hold ``*_seg.png`` masks: all of them
    (sorted), or those ``names`` (``--runs``), each of which must have masks."""
    if not visualize_dir.is_dir():
        raise CamlabError(f"{visualize_dir} does not exist: run visualize.py first")
    if names is not None:
        folders = [safe_subdir(visualize_dir, name, "--runs") for name in dict.fromkeys(names)]
        missing = next((d for d in folders if not _has_masks(d)), None)
        if missing is not None:
            raise CamlabError(f"--runs {missing.name}: no masks in {missing}/; run python visualize.py --exp_id "
                              f"{missing.name} first")
        return folders
    runs = sorted(d for d in visualize_dir.iterdir() if _has_masks(d))
    if not runs:
        raise CamlabError(f"no experiment folder with *{PRED_SUFFIX} masks under {visualize_dir}")
    return runs


def experiment_table(visualize_dir: Path | str, gt_dir: Path | str,
                     names: Sequence[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """IoU of every experiment folder under ``visualize_dir`` that holds ``*_seg.png`` files (or
    of the folders ``names``, in that order).

    Returns (stems sorted, experiment names, float64 matrix stems×experiments).
    """
    runs = _visualised(Path(visualize_dir), names)
    gts = _read_gts(gt_dir)
    tables = [_table_for(run, gts) for run in runs]
    matrix = np.array([[t[stem] for t in tables] for stem in gts], dtype=np.float64)
    return list(gts), [run.name for run in runs], matrix


# --------------------------------------------------------------------------------- report
def _check_matrix(stems: Sequence[str], experiments: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (len(stems), len(experiments)) or not len(stems):
        raise CamlabError(f"IoU matrix of shape {matrix.shape} does not match "
                          f"{len(stems)} images × {len(experiments)} experiments")
    return matrix


def format_table(stems: Sequence[str], experiments: Sequence[str], matrix: np.ndarray) -> tuple[str, str]:
    """(csv text, markdown text) of a stems×experiments IoU matrix.

    One row per stem, then a ``mean`` row (the mean over the stems); one column per experiment;
    values with 4 decimals.
    """
    matrix = _check_matrix(stems, experiments, matrix)
    header = ["image", *experiments]
    rows = [[s, *(f"{v:.4f}" for v in r)] for s, r in zip(stems, matrix)]
    rows.append(["mean", *(f"{v:.4f}" for v in matrix.mean(axis=0))])
    md = tables.markdown(header, rows, [tables.LEFT] + [tables.RIGHT] * len(experiments), spaced_rule=True)
    return tables.csv_text(header, rows), md


def write_report(stems: Sequence[str], experiments: Sequence[str], matrix: np.ndarray,
                 report_dir: Path | str = REPORT_DIR, extra_md: str = "") -> None:
    """``report_dir/iou.csv`` and ``report_dir/iou.md`` (see :func:`format_table`; ``extra_md``
    is appended to the markdown), atomically."""
    csv_text, md_text = format_table(stems, experiments, matrix)
    atomic_write_text(Path(report_dir) / "iou.csv", csv_text)
    atomic_write_text(Path(report_dir) / "iou.md", md_text + extra_md)


# --------------------------------------------------------------- the transform study (3.5)
# (name, settings over the base run): the comparison of handout section 3.5, one seed for all.
ABLATION: tuple[tuple[str, dict], ...] = (
    ("cam", dict(mode="CAM")), ("seg_scale", dict(mode="SEG", transform="scale")),
    ("seg_rotate", dict(mode="SEG", transform="rotate")), ("seg_hflip", dict(mode="SEG", transform="hflip")),
    ("seg_rotate_hflip", dict(mode="SEG", transform="rotate+hflip")))


def run_ablation(base: "train.RunConfig", prefix: str = "ablation", form: str = "class",
                 n_threshold: int = 500) -> str:
    """Train (or reuse) every ABLATION run under one seed, with ``form`` as the CAM that SEG's
    loss regularises and that every run is scored on; visualise the ten images at one shared
    threshold (the CAM run's, chosen on training masks) and tabulate accuracy, ten-image mean
    IoU and whole-test mean IoU (at the shared threshold, and at each run's own threshold
    chosen on training masks) into ``report/ablation.md``."""
    rows, shared = [], None
    for cfg in table_runs(base, prefix, ABLATION, form):
        metrics = trained(cfg)
        full = localization_report(cfg.exp_id, form, n_threshold, cfg.device)
        shared = shared if shared is not None else (full["threshold"] if full else DEFAULT_THRESHOLD)
        if full:
            full["shared_iou"] = float(full["test_curve"][1][THRESHOLD_GRID.index(shared)])
        out = visualize.visualize_run(cfg.exp_id, shared, form, cfg.data_root, cfg.device)
        settings = json.loads((out / "settings.json").read_text())
        ten = iou_table(out, Path(settings["data_root"]) / "test_seg")
        transforms = any(f.name == "transform" for f in cfg.method.flags)  # SEG's, not CAM's
        rows.append({"run": cfg.exp_id, "mode": cfg.mode, "transform": cfg.transform if transforms else "-",
                     "test_acc": metrics["test_acc"], "weights": metrics["weights"], "ten": float(np.mean(list(ten.values()))),
                     "full": full})
    table = ablation_table(rows, base, form, shared)
    atomic_write_text(REPORT_DIR / "ablation.md", table)
    return table


def ablation_table(rows: list[dict], base: "train.RunConfig", form: str, shared: float) -> str:
    """Markdown for report/ablation.md: the settings, then one row per run."""
    used = ", ".join(sorted({r["weights"] for r in rows}))
    head = (f"Settings: seed {base.seed}, {base.epochs} epochs, img_size {base.img_size}, batch {base.batch_size}, "
            f"lr {base.lr}, weights {base.weights} (used: {used}), ser_weight {base.ser_weight}; the {form} CAM is both "
            f"what SEG's L_ser regularises and what every run is scored on. Shared threshold {shared:.2f}: "
            + ("the CAM run's best on training masks. Own threshold: each run's best on training masks. "
               if rows and rows[0]["full"] else "the default, since this data has no training masks to choose one. ")
            + "Test masks choose nothing.\n\n")
    body = [[r["run"], r["mode"], r["transform"], f"{r['test_acc']:.4f}", f"{r['ten']:.4f}"]
            + ([f"{r['full']['shared_iou']:.4f}", f"{r['full']['test_iou']:.4f}", f"{r['full']['threshold']:.2f}"]
               if r["full"] else ["-", "-", "-"]) for r in rows]
    header = ["run", "mode", "transform", "test acc", "ten-image mean IoU (shared thr.)",
              "whole-test mean IoU (shared thr.)", "whole-test mean IoU (own thr.)", "own thr."]
    return head + tables.markdown(header, body, [tables.LEFT] * 3 + [tables.RIGHT] * 5)


def ablation_command(args) -> None:
    """``python iou.py --ablation``."""
    print(run_ablation(base_run(args), run_prefix(args, "ablation"), args.cam, args.n_threshold), end="")


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="iou.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gt_dir", type=Path, default=None,
                        help="ground-truth masks <stem>.png (default: test_seg/ of the data root the "
                             "experiments were visualised from, else data/synthetic/test_seg)")
    parser.add_argument("--cam", default="class", choices=list(model.CAM_FORMS),
                        help="CAM form for experiments visualize.py has not recorded one for")
    parser.add_argument("--n_threshold", type=int, default=500,
                        help="images whose masks choose each experiment's threshold, drawn from the split that "
                             "chooses (training masks on the embedded set, val on --dataset wsol; never test)")
    parser.add_argument("--no_full", action="store_true", help="only the ten-image table")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS),
                        help="how --wsol and --methods compute PxAP, MaxBoxAcc and localisation: "
                             "wsolevaluation (its evaluation map and box rule exactly) or camlab (ReLU'd map, "
                             "inclusive boxes, the earlier tables)")
    parser.add_argument("--wsol", action="store_true",
                        help="evaluate every experiment in checkpoints/ on its test split's boxes or masks "
                             "(IoU, PxAP, MaxBoxAccV2, top-1 and GT-known localisation) into report/methods.csv "
                             "and report/methods.md")
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR, choices=list(EXTRACTORS),
                        help="with --wsol: the map every measure reads: camlab's CAM, or one of torchcam's "
                             "gradient- and score-based extractors")
    parser.add_argument("--cam_curve_interval", type=float, default=WSOL_INTERVAL,
                        help="the CAM threshold step of PxAP and MaxBoxAcc (--wsol, --methods, --extractors, --sweep, "
                             "--scoremaps): arange(0, 1, step), wsolevaluation's default")
    parser.add_argument("--faith_steps", type=int, default=FAITH_STEPS,
                        help="the deletion and insertion AUC's equal steps over the image's pixels (--wsol, --methods, "
                             "--extractors, --sweep; RISE's curves, docs/methods.md \"Faithfulness\"); 0 leaves the "
                             "faithfulness measures out")
    parser.add_argument("--data_in_memory", default="auto", choices=list(stream.IN_MEMORY),
                        help=("how --wsol and --extractors read each run's test split: "
                              + "; ".join(f"{k}: {v}" for k, v in stream.IN_MEMORY.items())
                              + f" (auto's share: {stream.RAM_SHARE:.0%} of the available RAM). A streamed split is scored in "
                                "chunks, each batch's maps dropped once scored (every measure but mean IoU; "
                                "--dataset wsol)").replace("%", "%%"))
    parser.add_argument("--workers", type=int, default=4,
                        help="worker processes that decode a streamed test split (0: in the main process)")
    maps = parser.add_argument_group("score maps that any method brings (with --wsol; wsolevaluation's evaluation.py)")
    maps.add_argument("--scoremaps", type=Path, default=None, metavar="DIR",
                      help="score DIR/<image_id>.npy (one float map in [0, 1] per image, as wsolevaluation's "
                           "inference.py writes them) against --metadata -> report/scoremaps.{json,md}")
    maps.add_argument("--metadata", type=Path, default=None,
                      help="the metadata folder of one dataset (wsolevaluation/metadata/CUB, ILSVRC or OpenImages)")
    maps.add_argument("--split", default="test", choices=("val", "test"), help="the split the maps are of")
    maps.add_argument("--pred", type=Path, default=None,
                      help="<image id>,<predicted class> per line: adds top-1 localisation")
    maps.add_argument("--strict_boxes", action="store_true",
                      help="with --wsol: refuse metadata boxes outside their image or of zero area (by default: one "
                           "warning naming the first, and they are scored as given, as wsolevaluation does)")
    parser.add_argument("--publish", action="store_true",
                        help="every table and figure under report/published/ at today's defaults, each table's runs "
                             "trained or reused (research.publish; python iou.py --publish --help for its flags)")
    ab = parser.add_argument_group("comparisons (train, or reuse finished runs with the same settings, then compare)")
    ab.add_argument("--ablation", action="store_true",
                    help="CAM and SEG with scale, rotate, hflip and rotate+hflip -> report/ablation.md")
    ab.add_argument("--methods", action="store_true",
                    help="CAM, SEG rotate+hflip, ACoL pp and pn, CSE -> report/methods.md")
    ab.add_argument("--extractors", nargs="*", default=None, metavar="NAME", choices=list(EXTRACTORS),
                    help="every extractor (or those named) on the methods comparison's CAM run at each seed "
                         "-> report/extractors.{csv,md} and extractors_grid.png")
    ab.add_argument("--semseg", action="store_true",
                    help="semantic segmentation on the multi-object set: CAM, SEG rotate+hflip and CSE "
                         "(single-label), CAM, SEG rotate+hflip and OC-CSE (multi-label); mIoU at a background threshold chosen on training "
                         "masks, paired bootstrap intervals -> report/semseg.{csv,md,png}")
    ab.add_argument("--crf", nargs="*", default=None, choices=CRF_VARIANTS, metavar="VARIANT",
                    help="with --semseg: score every run after dense-CRF refinement too: affinitynet (AffinityNet's "
                         "settings in pixels, made for ~500 px images) and/or scaled (their spatial widths scaled to "
                         "the image), each with the references' (1 - max)^alpha background, alpha chosen on training "
                         "masks; -const: with camlab's earlier constant background; no value: affinitynet and scaled")
    ab.add_argument("--refine", nargs="+", default=None, choices=("rw",), metavar="REFINEMENT",
                    help="with --semseg: score every run after AffinityNet's random walk too (rw), without and with "
                         "each --crf: each run's affinity network is trained on its training split from its own maps "
                         "and CRF (or reused from checkpoints/<exp_id>/affinity.pth), beta, logt and alpha chosen on "
                         "training masks")
    ab.add_argument("--aff_epochs", type=int, default=AffinitySettings.epochs,
                    help="with --refine rw: the affinity network's epochs (psa: 8)")
    ab.add_argument("--aff_radius", type=int, default=AffinitySettings.radius,
                    help="with --refine rw: pairs closer than this on the feature grid (psa: 5)")
    ab.add_argument("--aff_pairs", default=AffinitySettings.pairs, choices=PAIR_FORMS,
                    help="with --refine rw: psa (its get_indices_of_pairs, which starts no pair within radius - 1 of "
                         "the left, right or bottom edge) or full (every pair within the radius)")
    ab.add_argument("--aff_init", default=AffinitySettings.init, choices=AFFINITY_INITS,
                    help="with --refine rw: the affinity backbone starts from the run's --weights (weights: psa's, "
                         "which starts from the ImageNet weights of its classifier) or from the CAM run's trained "
                         "backbone (run)")
    ab.add_argument("--no_msf", action="store_true",
                    help="with --semseg: the maps of one scale (the run's --img_size), not OC-CSE's multi-scale "
                         "inference with flips (scales 0.5, 1, 1.5, 2)")
    ab.add_argument("--both_scales", action="store_true",
                    help="with --semseg: score every run from both maps, multi-scale (report/semseg.*) and of one "
                         "scale (report/semseg_1scale.*), and write what each adds with paired intervals per seed "
                         "(report/semseg_msf.{md,png})")
    ab.add_argument("--runs", nargs="+", default=None, metavar="EXP_ID",
                    help="the IoU table of these visualised runs only (visualize/<exp_id>/), in this order; with "
                         "--semseg: score these finished runs (trained on --dataset multi or voc) instead of "
                         "training the comparison")
    ab.add_argument("--dataset", default="multi", choices=formats.multi_label_formats(),
                    help="--semseg's dataset, one whose images know every class present (voc: pass --data_root "
                         "VOCdevkit/VOC2012)")
    ab.add_argument("--sweep", nargs="+", metavar=("KNOB", "VALUE"), default=None,
                    help="every method of --methods at each VALUE of the embedded benchmark's KNOB "
                         "(body_evidence) -> report/sweep.{csv,md,png}; e.g. --sweep body_evidence 0 0.25 0.5 0.75 1")
    ab.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="--methods, --sweep and --extractors: train and compare at each seed (mean ± std, and paired "
                         "bootstrap intervals against CAM per seed); default: --seed")
    ab.add_argument("--body_evidence", type=float, default=None,
                    help="the embedded benchmark's body-evidence setting for --ablation and --methods "
                         "(default: the generator's default)")
    ab.add_argument("--scores", default="off", choices=list(comparisons.SCORE_MODES),
                    help="--methods, --sweep, --extractors and --semseg: reuse: keep each run's scored report under "
                         "report/scores/ and reuse it when the run, the scoring settings and the code are the same "
                         "(a stopped comparison loses at most the report in progress; the dataset's files are not "
                         "checked); rescore: score again and keep; off: neither (default)")
    ab.add_argument("--retrain_damaged", action="store_true",
                    help="train again a comparison's run whose metrics.json is not the one camlab writes (by default: "
                         "one line naming it)")
    ab.add_argument("--prefix", default=None,
                    help="the runs are checkpoints/<prefix>_<name>/ (default: ablation or methods)")
    for flag in ("epochs", "img_size", "seed", "batch_size"):
        ab.add_argument(f"--{flag}", type=int, default=getattr(train.RunConfig, flag))
    ab.add_argument("--weights", default=train.RunConfig.weights)
    ab.add_argument("--data_root", default=None,
                    help="the comparisons' dataset folder; with --scoremaps, the folder OpenImages' mask paths are "
                         "relative to")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python iou.py``: IoU of every experiment under visualize/, printed and written to report/."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--publish" in argv:  # research.publish's command line, a layer above this file: run, not imported
        rest = [a for a in argv if a != "--publish"]
        return subprocess.call([sys.executable, "-m", "research.publish", *rest], cwd=Path.cwd())
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum((args.ablation, args.methods, args.wsol, args.sweep is not None, args.extractors is not None,
            args.semseg)) > 1:
        parser.error("choose one of --ablation, --methods, --sweep, --extractors, --semseg and --wsol")
    semseg_only = [flag for flag, given in (("--crf", args.crf is not None), ("--refine", args.refine is not None),
                                            ("--no_msf", args.no_msf), ("--both_scales", args.both_scales)) if given]
    if semseg_only and not args.semseg:
        parser.error(f"{semseg_only[0]} applies to --semseg")
    if args.runs is not None and (args.ablation or args.methods or args.wsol or args.sweep is not None
                                  or args.extractors is not None):
        parser.error("--runs chooses the runs of the IoU table (python iou.py --runs a b) or of --semseg")
    moved = [f"--{k}" for k in AFFINITY_FLAGS if getattr(args, k) != getattr(AffinitySettings, k.removeprefix("aff_"))]
    if moved and not args.refine:
        parser.error(f"{moved[0]} applies to --semseg --refine rw")
    if args.sweep is not None:
        args.sweep_values = _sweep_values(parser, args.sweep)
    if args.scoremaps is not None and (not args.wsol or args.metadata is None):
        parser.error("--scoremaps is scored with --wsol against --metadata: iou.py --wsol --scoremaps DIR --metadata "
                     "metadata/CUB")
    if args.extractor != DEFAULT_EXTRACTOR and not args.wsol:
        parser.error("--extractor applies to --wsol (visualize.py takes it too); --extractors compares them all")

    def body() -> None:
        check_range("--n_threshold", args.n_threshold, 1, 1_000_000, why="training images that choose a threshold")
        check_range("--aff_epochs", args.aff_epochs, 1, 10_000, why="epochs of the affinity network")
        check_range("--aff_radius", args.aff_radius, 2, 64, why="a pair radius on the feature grid")
        check_range("--faith_steps", args.faith_steps, 0, 1_000_000, why="deletion/insertion steps (0: none)")
        check_range("--workers", args.workers, 0, 256, why="DataLoader worker processes")
        for seed in args.seeds or []:
            check_range("--seeds", seed, 0, SEED_MAX, why="a random seed")
        if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
            raise CamlabError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is named twice")
        if args.scoremaps is not None:
            scoremaps.run(argparse.Namespace(**{**vars(args), "data_root": args.data_root and Path(args.data_root)}),
                          REPORT_DIR / "scoremaps")
        elif args.ablation or args.methods or args.wsol or args.sweep is not None or args.extractors is not None \
                or args.semseg:
            command = (ablation_command if args.ablation else comparisons.methods_command if args.methods
                       else comparisons.semseg_command if args.semseg
                       else comparisons.sweep_command if args.sweep is not None
                       else comparisons.extractors_command if args.extractors is not None
                       else comparisons.wsol_command)
            command(args)
        else:
            _report(args)
    return run_cli("iou.py", body)


AFFINITY_FLAGS = ("aff_epochs", "aff_radius", "aff_pairs", "aff_init")  # --refine rw's settings (AffinitySettings)
SWEEP_KNOBS = ("body_evidence",)  # what --sweep can vary: settings of the embedded benchmark


def _sweep_values(parser: argparse.ArgumentParser, words: list[str]) -> list[float]:
    """``--sweep KNOB V1 V2 ...`` -> the values, each in [0, 1] and named once."""
    knob, *values = words
    if knob not in SWEEP_KNOBS:
        parser.error(f"argument --sweep: the first word names what to vary, one of {', '.join(SWEEP_KNOBS)}; "
                     f"got {knob!r}")
    if not values:
        parser.error(f"argument --sweep: give the values of {knob} after it, e.g. --sweep {knob} 0 0.5 1")
    found = []
    for word in values:
        try:
            value = float(word)
        except ValueError:
            parser.error(f"argument --sweep: {word!r} is not a number")
        if not 0.0 <= value <= 1.0 or value in found:
            parser.error(f"argument --sweep: {word} must lie in [0, 1] and be named once")
        found.append(value)
    return found


def _settings(folder: Path) -> dict:
    """What visualize.py recorded for the masks in ``folder`` ({} when nothing readable)."""
    try:
        found = json.loads((folder / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _default_gt_dir(names: Sequence[str] | None = None) -> Path:
    """``test_seg/`` of the one data root every visualised experiment (of ``names``) records."""
    roots = {}
    for folder in _visualised(VISUALIZE_DIR, names):
        if "data_root" in (found := _settings(folder)):
            roots.setdefault(found["data_root"], []).append(folder.name)
    if len(roots) > 1:
        listed = "; ".join(f"{root}: {', '.join(runs)}" for root, runs in sorted(roots.items()))
        raise CamlabError(f"experiments under {VISUALIZE_DIR}/ come from different data roots ({listed}); "
                          "choose runs of one with --runs, or pass --gt_dir")
    return Path(roots.popitem()[0]) / "test_seg" if roots else DEFAULT_DATA_ROOT / "test_seg"


def settings_table(experiments: Sequence[str], visualize_dir: Path = VISUALIZE_DIR) -> str:
    """Markdown: how each experiment's masks were made (visualize.py's settings.json): CAM form,
    extractor, threshold, the side the masks were written at, and the checkpoint."""
    rows = []
    for name in experiments:
        found = _settings(visualize_dir / name)
        threshold = found.get("threshold", "-")
        rows.append([name, str(found.get("cam", "-")), str(found.get("extractor", "-")),
                     f"{threshold:g}" if isinstance(threshold, float) else str(threshold),
                     str(found.get("fig_size", "-")), str(found.get("checkpoint", "-"))])
    header = ["experiment", "CAM form", "extractor", "threshold", "mask side (px)", "checkpoint"]
    return tables.markdown(header, rows, [tables.LEFT] * 3 + [tables.RIGHT] * 2 + [tables.LEFT])


def _report(args: argparse.Namespace) -> None:
    stems, experiments, matrix = experiment_table(VISUALIZE_DIR, args.gt_dir or _default_gt_dir(args.runs), args.runs)
    reports = [] if args.no_full else whole_test_reports(experiments, args.cam, args.n_threshold, args.device)
    extra = "\nHow each experiment's masks were made (visualize.py):\n\n" + settings_table(experiments)
    if reports:
        extra += ("\n## Whole test set\n\nThreshold chosen per experiment on training masks.\n\n"
                  + write_full_report(reports))
    write_report(stems, experiments, matrix, extra_md=extra)
    print(format_table(stems, experiments, matrix)[1] + extra, end="")


if __name__ == "__main__":
    sys.exit(main())
