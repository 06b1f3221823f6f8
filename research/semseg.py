"""Semantic segmentation of a finished run's test split from its class maps (the VOC protocol, optionally after dense CRF) and the tables that compare runs over seeds with paired bootstrap intervals.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from camlab import affinity, figures, tables
from camlab.crf import CRF_ALPHA_GRID, CRF_REFERENCE_SIDE, background_grid, choose_background_threshold, crf_background, segment
from camlab.metrics import (BOOTSTRAP_RESAMPLES, THRESHOLD_GRID, class_ious, confusion_matrix, image_confusions, mean_iou,
                            miou_statistic, paired_bootstrap)
from camlab.runs import read_metrics
from camlab.utils import CHECKPOINT_DIR, REPORT_DIR, CamlabError, atomic_write_text, safe_subdir
from research.affinitynet import AffinitySettings, affinity_matrices, affinity_net, feature_grid
from research.experiments import Experiment, _present, _rgb, class_maps
from research.wsol import BASELINE_MODE, _cell, _intervals, _verdict


# --crf variant -> how the tables name it (None: no CRF)
CRF_NAMES = {None: "no", "affinitynet": "AffinityNet's (px), (1 − max)^α background",
             "scaled": "scaled to the image, (1 − max)^α background",
             "affinitynet-const": "AffinityNet's (px), constant background",
             "scaled-const": "scaled to the image, constant background"}
# --refine choice -> how the tables name it (None: the CAMs as they are)
REFINE_NAMES = {None: "-", "rw": "AffinityNet random walk"}
REFINEMENTS = ("rw",)


SEMSEG_CHUNK = 256  # test images whose class maps exist at once (a multiple of class_maps' batch of 64)


def semseg_report(exp: "str | Experiment", n_threshold: int = 500, crf: str | None = None, device: str = "auto",
                  n_examples: int = 6, msf: bool = True, refine: str | None = None,
                  aff: AffinitySettings | None = None) -> dict:
    """Semantic segmentation of ``exp``'s test split from its class maps and the images' labels
    (the classes present, as weakly supervised segmentation scores pseudo-masks): a label map by
    a background threshold (``camlab.crf.segment``; with ``crf``, a variant of
    ``camlab.crf.CRF_VARIANTS``, after dense CRF on the background score (1 - max)^α, or a constant
    one), the threshold or α chosen on ``n_threshold`` images of the split that chooses (training
    masks; never test), the maps multi-scale with flips (``msf``, OC-CSE's inference), then
    the VOC protocol's confusion matrix over the test split (255 ignored): mIoU over background
    and classes, per-class IoU, and the per-image confusions the paired bootstrap resamples.
    With ``refine="rw"``: the maps walked through the run's affinity network (:func:`walk_rule`),
    then, with ``crf``, the dense CRF of the walked scores. One variant of :func:`score_variants`."""
    exp = exp if isinstance(exp, Experiment) else Experiment.load(exp, device)
    return score_variants(exp, n_threshold, [(refine, crf)], msf, aff, n_examples)[0]


def score_variants(exp: Experiment, n_threshold: int, variants: Sequence[tuple[str | None, str | None]],
                   msf: bool = True, aff: AffinitySettings | None = None, n_examples: int = 6,
                   chunk: int = SEMSEG_CHUNK) -> list[dict]:
    """:func:`semseg_report` of each (refinement, CRF variant) of ``variants``, in one pass over
    the test split in chunks of ``chunk`` images: each chunk's class maps are computed once,
    labelled by every variant's rule (chosen first on the fit images), counted into per-image
    confusion matrices and dropped, so the maps (K floats per pixel) of only ``chunk`` images
    exist at once, whatever the split's size."""
    if n_threshold < 1:
        raise CamlabError(f"--n_threshold must be at least 1, got {n_threshold}")
    test_set, truth = exp.test
    if truth is None or truth.classes is None:
        raise CamlabError(f"{exp.exp_id}: its test split has no class masks (--dataset multi or voc)")
    for refine, _ in variants:
        if refine not in (None, *REFINEMENTS):
            raise CamlabError(f"--refine {refine}: choose one of {', '.join(REFINEMENTS)}")
    fit = exp.semseg_fit(n_threshold, msf)
    rules = [walk_rule(exp, fit, crf, aff or AffinitySettings(msf=msf)) if refine == "rw" else
             threshold_rule(fit, crf) for refine, crf in variants]
    num_classes = len(test_set.classes) + 1
    confusions: list[list[np.ndarray]] = [[] for _ in variants]
    examples = [{"images": [], "truth": [], "labels": [], "names": []} for _ in variants]
    for idx in torch.arange(len(test_set)).split(chunk):
        part = test_set.take(idx)
        maps, images, present = class_maps(exp, part, msf=msf), _rgb(part), _present(part).cpu().numpy()
        gt = truth.classes[idx.numpy()]
        for k, rule in enumerate(rules):
            labels = rule["labels"](part, maps, present, images)
            confusions[k].append(image_confusions(labels, gt, num_classes))
            room = n_examples - len(examples[k]["names"])  # the first n_examples test images, across chunks
            for name, values in (("images", images), ("truth", gt), ("labels", labels), ("names", part.names)):
                examples[k][name] += [v if name == "names" else np.array(v) for v in values[:max(room, 0)]]  # copies
    cfg = exp.cfg
    metrics = read_metrics(safe_subdir(CHECKPOINT_DIR, exp.exp_id) / "metrics.json")
    reports = []
    for (refine, crf), rule, found, shown in zip(variants, rules, confusions, examples):
        per_image = np.concatenate(found)
        pooled = per_image.sum(axis=0)
        ious = class_ious(pooled)
        reports.append({
            **{k: metrics.get(k) for k in ("test_acc", "test_map", "test_f1")},
            "exp_id": exp.exp_id, "method": semseg_method(cfg), "mode": cfg.mode, "crf": crf, "seed": cfg.seed,
            "multi_label": cfg.multi_label, "threshold": rule["threshold"], "fit_miou": rule["fit_miou"], "msf": msf,
            "refine": refine, "walk": rule["walk"],
            "background": "power" if refine else crf_background(crf) if crf else "constant",
            "miou": float(np.nanmean(ious)), "class_ious": ious.tolist(), "classes": ["background", *test_set.classes],
            **error_shares(pooled),
            "n_test": len(test_set), "n_threshold_images": len(fit[0]), "data_root": str(exp.root.resolve()),
            "per_image": {"confusions": per_image},
            "examples": {k: v if k == "names" else np.stack(v) for k, v in shown.items()}})
    return reports


def threshold_rule(fit: tuple, crf: str | None) -> dict:
    """The background threshold (or, with ``crf``, the power α) chosen on the ``fit`` images
    (their set, class masks and maps), and the test label maps it gives (``labels(part, maps,
    present, images)``)."""
    fit_set, fit_truth, fit_maps = fit
    grid = background_grid(crf) if crf else THRESHOLD_GRID
    fit_images = _rgb(fit_set) if crf else None
    threshold, fit_miou = choose_background_threshold(fit_maps, _present(fit_set).cpu().numpy(), fit_truth.classes,
                                                      grid, fit_images, crf or "affinitynet")

    def labels(part, maps, present, images):
        return segment(maps, present, threshold, images if crf else None, crf or "affinitynet")
    return {"threshold": threshold, "fit_miou": fit_miou, "walk": None, "labels": labels}


def walk_rule(exp: Experiment, fit: tuple, crf: str | None, settings: AffinitySettings) -> dict:
    """AffinityNet's random walk of ``exp``'s maps (``camlab.affinity``): its affinity network
    (``research.affinitynet.affinity_net``, trained on the training split or reused), each image's
    affinity matrix; β, logt and the background power α chosen together on the ``fit`` images'
    masks (``camlab.affinity.choose_walk``), then the test images' label maps (``labels``); with
    ``crf``, after the dense CRF of the walked scores, β and logt kept and α chosen again on the
    fit images after the CRF (as the CRF without the walk chooses its own). -> the rule: α
    (``threshold``), {beta, logt, alpha, the network's training record} (``walk``), the mIoU of
    the fit images' label maps as scored (``fit_miou``) and ``labels(part, maps, present, images)``."""
    fit_set, fit_truth, fit_maps = fit
    net, record = affinity_net(exp, settings)
    grid = feature_grid(exp.net.config, exp.cfg.img_size)
    fit_present = _present(fit_set).cpu().numpy()
    fit_mats = affinity_matrices(exp, net, fit_set, settings)
    key = ("walk choice", tuple(fit_set.names), dataclasses.astuple(settings))
    if key not in exp._raw:
        exp._raw[key] = affinity.choose_walk(fit_maps, fit_present, fit_truth.classes, fit_mats, grid,
                                             alphas=CRF_ALPHA_GRID)
    choice, fit_miou = exp._raw[key]
    beta, logt, alpha = choice["beta"], choice["logt"], choice["alpha"]

    def powers(mats: list) -> list:
        return [affinity.walk_powers(affinity.transition_matrix(m, beta), [logt])[logt] for m in mats]
    if crf:
        fit_powers, fit_images, num_classes = powers(fit_mats), _rgb(fit_set), fit_present.shape[1] + 1
        curve = [mean_iou(confusion_matrix(affinity.walk_crf_labels(fit_maps, fit_present, fit_powers, a, grid,
                                                                    fit_images, crf), fit_truth.classes, num_classes))
                 for a in CRF_ALPHA_GRID]
        alpha, fit_miou = CRF_ALPHA_GRID[int(np.argmax(curve))], float(np.max(curve))  # ties: the lowest α
        choice = {**choice, "alpha": alpha}

    def labels(part, maps, present, images):
        test_powers = powers(affinity_matrices(exp, net, part, settings, keep=False))
        if crf:
            return affinity.walk_crf_labels(maps, present, test_powers, alpha, grid, images, crf)
        return affinity.walk_labels(maps, present, test_powers, alpha, grid)
    last = record["epochs"][-1]
    walk = {**choice, "grid": list(grid), "affinity_loss": last["loss"], "affinity_epochs": len(record["epochs"]),
            "affinity_images": record["n_images"]}
    return {"threshold": alpha, "fit_miou": fit_miou, "walk": walk, "labels": labels}


# error_shares keys -> how the errors table names them
ERROR_COLUMNS = (("object_as_background", "object px → background"), ("object_as_other", "object px → another class"),
                 ("background_as_object", "background px → object"), ("predicted_object", "predicted object share"),
                 ("true_object", "true object share"))


def error_shares(confusion: np.ndarray) -> dict[str, float]:
    """Where a segmentation errs, from its confusion matrix (rows truth, label 0 background): the
    shares of object pixels labelled background and labelled another class, of background pixels
    labelled an object, and the shares of all counted pixels predicted and truly object."""
    c = np.asarray(confusion, np.float64)
    objects, total = c[1:].sum(), c.sum()
    return {"object_as_background": float(c[1:, 0].sum() / objects),
            "object_as_other": float((c[1:, 1:].sum() - np.trace(c[1:, 1:])) / objects),
            "background_as_object": float(c[0, 1:].sum() / c[0].sum()),
            "predicted_object": float(c[:, 1:].sum() / total), "true_object": float(objects / total)}


def semseg_method(cfg) -> str:
    """How a run reads in the segmentation table: its method (``Method.short_label``: OC-CSE for
    the multi-label CSE) and its label form."""
    name = cfg.method.table_label(cfg, short=True)
    return f"{name} ({'multi-label' if cfg.multi_label else 'single-label'})"


def semseg_variants(exp: Experiment, n_threshold: int, crf: Sequence[str | None], msf: bool = True,
                    refine: Sequence[str | None] = (None,), aff: AffinitySettings | None = None) -> list[dict]:
    """:func:`semseg_report` of ``exp`` under each refinement of ``refine`` (None: the maps as
    they are; ``rw``: AffinityNet's random walk) and each CRF setting of ``crf`` (None: without
    CRF), scored in one pass over the test split (:func:`score_variants`); each mIoU printed."""
    if any(refine):  # train (or read) the affinity network first: settings it refuses stop before any scoring
        affinity_net(exp, aff or AffinitySettings(msf=msf))
    reports = score_variants(exp, n_threshold, [(walk, variant) for walk in refine for variant in crf], msf, aff)
    for report in reports:
        walk, variant = report["refine"], report["crf"]
        print(f"{exp.exp_id}{' + random walk' if walk else ''}{f' + CRF {variant}' if variant else ''}: "
              f"mIoU {report['miou']:.4f} (background {background_text(report)}; the training images "
              f"{report['fit_miou']:.4f})", file=sys.stderr)
    return reports


def background_text(report: dict) -> str:
    """The chosen background: ``α=4`` for a (1 - max)^α score, the threshold otherwise; with the
    random walk, its β and logt too."""
    value, walk = report["threshold"], report.get("walk")
    if walk:
        return f"α={walk['alpha']:g} β={walk['beta']:g} logt={walk['logt']}"
    return f"α={value:g}" if report.get("background") == "power" else f"{value:.2f}"


def _semseg_reference(report: dict, reports: list[dict]) -> dict | None:
    """The CAM run of ``report``'s label form, seed, test set, refinement and CRF setting."""
    return next((r for r in reports if r["mode"] == BASELINE_MODE and r["multi_label"] == report["multi_label"]
                 and r["seed"] == report["seed"] and r["crf"] == report["crf"]
                 and r.get("refine") == report.get("refine") and r["data_root"] == report["data_root"]), None)


def _without_crf(report: dict, reports: list[dict]) -> dict | None:
    """The same run, same refinement, scored without CRF (None for a report without CRF)."""
    return next((r for r in reports if r["exp_id"] == report["exp_id"] and not r["crf"]
                 and r.get("refine") == report.get("refine")), None) if report["crf"] else None


def _without_walk(report: dict, reports: list[dict]) -> dict | None:
    """The same run at the same CRF setting without the random walk (None for a report without it)."""
    return next((r for r in reports if r["exp_id"] == report["exp_id"] and r["crf"] == report["crf"]
                 and not r.get("refine")), None) if report.get("refine") else None


def _miou_interval(a: dict, b: dict) -> tuple[float, float, float]:
    if a["n_test"] != b["n_test"]:
        raise CamlabError(f"{a['exp_id']} and {b['exp_id']} were scored on different test sets")
    return paired_bootstrap(miou_statistic(a["per_image"]["confusions"]), miou_statistic(b["per_image"]["confusions"]),
                            a["n_test"], BOOTSTRAP_RESAMPLES)


def semseg_tables(reports: list[dict], intervals: dict[tuple, tuple] | None = None) -> tuple[str, str]:
    """(csv of every report with its per-class IoUs, markdown summary over seeds): mIoU mean ±
    std on the test split and on the training images that chose the background, per seed the
    paired bootstrap interval against the same label form's CAM (same refinement and CRF
    setting), with CRF against the same run without it, and with the random walk against the
    same run without it (``intervals``: :func:`all_row_intervals` of ``reports``, computed here
    when not given)."""
    intervals = all_row_intervals(reports) if intervals is None else intervals
    classes = reports[0]["classes"]
    csv_text = tables.csv_text(
        ["experiment", "method", "refine", "crf", "seed", "threshold", "beta", "logt", "fit_miou", "miou", "test_acc",
         "test_map", "test_f1"]
        + [key for key, _ in ERROR_COLUMNS] + [f"iou_{c}" for c in classes],
        [[r["exp_id"], r["method"], r.get("refine") or "none", r["crf"] or "none", r["seed"], f"{r['threshold']:.2f}",
          *((f"{r['walk']['beta']:g}", str(r["walk"]["logt"])) if r.get("walk") else ("-", "-")),
          f"{r['fit_miou']:.4f}", f"{r['miou']:.4f}"] + [_cell(r, k) for k in ("test_acc", "test_map", "test_f1")]
         + [f"{r[key]:.4f}" for key, _ in ERROR_COLUMNS] + ["-" if v != v else f"{v:.4f}" for v in r["class_ious"]]
         for r in reports])
    rows = []
    for (method, refine, crf), group in _by_row(reports).items():
        group = sorted(group, key=lambda r: r["seed"])
        mious = np.array([r["miou"] for r in group])
        spread = mious.std(ddof=1) if len(mious) > 1 else 0.0
        fits = np.array([r["fit_miou"] for r in group])
        versus, from_crf, from_walk = intervals[(method, refine, crf)]
        key = "test_map" if group[0]["multi_label"] else "test_acc"
        accuracy = [r.get(key) for r in group if r.get(key) is not None]
        rows.append([method, REFINE_NAMES[refine], CRF_NAMES[crf], ", ".join(str(r["seed"]) for r in group),
                     f"{mious.mean():.4f} ± {spread:.4f}", f"{fits.mean():.4f}",
                     ", ".join(background_text(r) for r in group),
                     f"{np.mean(accuracy):.4f}", _intervals(versus), _verdict(versus) if versus else "-",
                     _intervals(from_crf), _verdict(from_crf) if from_crf else "-",
                     _intervals(from_walk), _verdict(from_walk) if from_walk else "-"])
    header = ["method", "refinement", "CRF", "seeds", "mIoU (test)", "mIoU (training images that chose)",
              "background (threshold, or α of (1 − max)^α; β, logt of the walk)", "classification (mAP / top-1)",
              "ΔmIoU vs CAM of its label form, 95% CI per seed", "vs CAM", "ΔmIoU from CRF, 95% CI per seed",
              "CRF helps?", "ΔmIoU from the random walk, 95% CI per seed", "walk helps?"]
    align = [tables.LEFT] * 4 + [tables.RIGHT, tables.RIGHT, tables.LEFT, tables.RIGHT] + [tables.LEFT] * 6
    return csv_text, tables.markdown(header, rows, align)


def row_intervals(group: list[dict], reports: list[dict]) -> tuple[list, list, list]:
    """Each seed's paired mIoU interval of a table row's reports: against the CAM of the same
    label form (same refinement and CRF), with CRF against the same run without it, and with
    the random walk against the same run without it."""
    versus = [_miou_interval(r, cam) for r in group
              if (cam := _semseg_reference(r, reports)) is not None and cam["exp_id"] != r["exp_id"]]
    from_crf = [_miou_interval(r, plain) for r in group if (plain := _without_crf(r, reports)) is not None]
    from_walk = [_miou_interval(r, plain) for r in group if (plain := _without_walk(r, reports)) is not None]
    return versus, from_crf, from_walk


def all_row_intervals(reports: list[dict]) -> dict[tuple, tuple[list, list, list]]:
    """:func:`row_intervals` of every table row (its reports in seed order), by (method,
    refinement, CRF variant)."""
    return {key: row_intervals(sorted(group, key=lambda r: r["seed"]), reports)
            for key, group in _by_row(reports).items()}


def interval_rows(reports: list[dict], intervals: dict[tuple, tuple] | None = None) -> dict[str, dict[str, list]]:
    """Row label -> "ΔmIoU vs CAM" / "ΔmIoU from CRF" / "ΔmIoU from the walk" -> each seed's
    interval, for :func:`camlab.figures.plot_intervals` (rows without any left out;
    ``intervals``: :func:`all_row_intervals` of ``reports``, computed here when not given)."""
    intervals = all_row_intervals(reports) if intervals is None else intervals
    rows = {}
    for key, group in _by_row(reports).items():
        found = dict(zip(("ΔmIoU vs CAM of its label form", "ΔmIoU from CRF", "ΔmIoU from the walk"), intervals[key]))
        found = {k: v for k, v in found.items() if v}
        if found:
            rows[_semseg_row(group[0])] = found
    return rows


def _by_row(reports: list[dict]) -> dict[tuple, list[dict]]:
    """The reports grouped by (method, refinement, CRF variant), in their order: one row of each table."""
    groups: dict[tuple, list[dict]] = {}
    for r in reports:
        groups.setdefault((r["method"], r.get("refine"), r["crf"]), []).append(r)
    return groups


def _semseg_row(report: dict) -> str:
    crf = report["crf"]
    return (report["method"] + (" + random walk" if report.get("refine") else "")
            + (f" + CRF {CRF_NAMES[crf]}" if crf else ""))


def errors_table(reports: list[dict]) -> str:
    """Markdown: per (method, refinement, CRF), the error shares of :func:`error_shares`, mean over seeds."""
    rows = [[method, REFINE_NAMES[refine], CRF_NAMES[crf]]
            + [f"{np.mean([r[key] for r in group]):.4f}" for key, _ in ERROR_COLUMNS]
            for (method, refine, crf), group in _by_row(reports).items()]
    return tables.markdown(["method", "refinement", "CRF"] + [h for _, h in ERROR_COLUMNS], rows,
                           [tables.LEFT] * 3 + [tables.RIGHT] * len(ERROR_COLUMNS))


def class_table(reports: list[dict]) -> str:
    """Markdown: per (method, refinement, CRF), each class's IoU, mean over seeds."""
    classes = reports[0]["classes"]
    rows = []
    for (method, refine, crf), group in _by_row(reports).items():
        with warnings.catch_warnings():  # a class in no test image and never predicted: NaN at every seed
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(np.array([r["class_ious"] for r in group], np.float64), axis=0)
        rows.append([method, REFINE_NAMES[refine], CRF_NAMES[crf]] + ["-" if v != v else f"{v:.3f}" for v in means])
    return tables.markdown(["method", "refinement", "CRF", *classes], rows,
                           [tables.LEFT] * 3 + [tables.RIGHT] * len(classes))


def _walk_note(reports: list[dict]) -> str:
    walk = next(r["walk"] for r in reports if r.get("walk"))
    h, w = walk["grid"]
    return (f"Random walk (AffinityNet, psa's `infer_aff.py`): each run's affinity network (its backbone and psa's "
            f"feature head, trained {walk['affinity_epochs']} epochs on {walk['affinity_images']} training images "
            f"with psa's loss, from the pairs of confident labels that the CRF of the run's own maps at α 4 and 32 "
            f"gives; image labels only), each image's affinity matrix on the {h}×{w} feature grid raised to β and "
            f"column-normalised, applied 2^logt times to the background (1 − max)^α and the present classes' maps "
            f"(average-pooled to the grid), upsampled bilinearly and argmaxed; with CRF, the walked scores are the "
            f"CRF's unary. β ∈ {{{', '.join(f'{b:g}' for b in affinity.BETA_GRID)}}}, logt ∈ "
            f"{{{', '.join(map(str, affinity.LOGT_GRID))}}} and α ∈ {{{', '.join(f'{a:g}' for a in CRF_ALPHA_GRID)}}} "
            f"are chosen together on the training images' masks for the walk; the walk with CRF keeps its β and "
            f"logt and chooses α again after the CRF. \"mIoU (training images that chose)\" is the pseudo-mask mIoU on those training images "
            f"(what weakly supervised segmentation papers report for this step), at the values they chose.\n\n")


def write_semseg_report(reports: list[dict], report_dir: Path = REPORT_DIR, stem: str = "semseg") -> str:
    """``<stem>.csv``, ``<stem>.md`` (the summary over seeds with intervals, then per-class IoU),
    ``<stem>_intervals.png`` and ``<stem>.png`` (the first seed's label maps, colour-coded);
    returns the markdown."""
    if not reports:
        raise CamlabError("no run to score; train one on --dataset multi first")
    seeds = sorted({r["seed"] for r in reports})
    intervals = all_row_intervals(reports)  # the bootstraps, once for the table and the figure
    csv_text, summary = semseg_tables(reports, intervals)
    first = reports[0]
    maps = ("multi-scale with flips (OC-CSE's inference: the image at 0.5, 1, 1.5 and 2 times the run's size and "
            "mirrored, each map upsampled, ReLU, summed, divided by its max)" if first.get("msf")
            else "of one scale (ReLU, upsampled, divided by the max)")
    note = (f"Semantic segmentation of the {first['n_test']} test images from each run's class maps, {maps}, and the "
            f"images' labels: without CRF each pixel takes the argmax of a constant background score (a threshold) "
            f"and the present classes' maps; with CRF, the argmax of the dense CRF with AffinityNet's pairwise "
            f"settings as they are (in pixels of ~500 px VOC images) or with their spatial widths scaled to the image "
            f"(x {max(first['examples']['images'].shape[1:3])}/{CRF_REFERENCE_SIDE}), on the background score "
            f"(1 − max_c cam)^α of the references (psa, OC-CSE) or, in a \"constant background\" variant, a "
            f"threshold. The threshold or α is chosen on {first['n_threshold_images']} training "
            f"images' masks (thresholds: {len(THRESHOLD_GRID)} values from 0.05 to 0.95, every other one with CRF; "
            f"α: {', '.join(f'{a:g}' for a in CRF_ALPHA_GRID)}); test masks "
            f"choose nothing. mIoU over background and {len(first['classes']) - 1} classes from one confusion matrix "
            f"over the split (the VOC protocol; 255 ignored). Seeds {', '.join(map(str, seeds))}: mean ± sample std. "
            f"Intervals: paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the test images, the same resample for "
            f"both runs, the confusion matrices pooled per resample; 95% percentile) of the run minus the CAM of its "
            f"label form and seed at the same CRF setting, and of the run with CRF minus itself without; \"better\" "
            f"only where every seed's interval lies above 0. Classification: test mAP for multi-label runs, top-1 "
            f"accuracy (of the largest class) for single-label ones.\n\n" + (_walk_note(reports) if any(
                r.get("refine") for r in reports) else ""))
    text = (note + summary + "\n### Where the errors are (pooled over the test split, mean over seeds)\n\n"
            + errors_table(reports) + "\n### IoU per class (mean over seeds)\n\n" + class_table(reports))
    report_dir = Path(report_dir)
    atomic_write_text(report_dir / f"{stem}.csv", csv_text)
    atomic_write_text(report_dir / f"{stem}.md", text)
    rows = interval_rows(reports, intervals)
    if rows:
        figures.plot_intervals(rows, report_dir / f"{stem}_intervals.png",
                               "semantic segmentation: each seed's paired bootstrap interval of mIoU (solid: excludes 0)",
                               reference="")
    first_seed = [r for r in reports if r["seed"] == seeds[0]]
    figures.plot_label_maps({_semseg_row(r): r["examples"]["labels"]
                               for r in first_seed}, first["examples"], first["classes"], report_dir / f"{stem}.png",
                              title=f"label maps, seed {seeds[0]} (black: background)")
    return text


def _one_scale(report: dict, single: list[dict]) -> dict | None:
    """The same run, refinement and CRF setting scored from the maps of one scale."""
    return next((r for r in single if r["exp_id"] == report["exp_id"] and r["crf"] == report["crf"]
                 and r.get("refine") == report.get("refine")), None)


def write_scales_report(multi: list[dict], single: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """What multi-scale inference and dense CRF add, side by side: ``semseg_msf.md`` (per
    method and CRF setting, the mIoU from the maps of one scale and from OC-CSE's multi-scale
    inference, each seed's paired interval of multi-scale minus one scale, and with CRF minus
    without at each scale) and ``semseg_msf.png`` (those intervals as a forest plot); returns the
    markdown. ``multi`` and ``single``: the same runs' reports at each (:func:`semseg_variants`)."""
    pairs = [(m, o) for m in multi if (o := _one_scale(m, single)) is not None]
    if not pairs:
        raise CamlabError("no run was scored both from multi-scale maps and from the maps of one scale")
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for m, o in pairs:
        groups.setdefault((m["method"], m.get("refine"), m["crf"]), []).append((m, o))
    rows, figure = [], {}
    for (method, refine, crf), group in groups.items():
        group = sorted(group, key=lambda pair: pair[0]["seed"])
        from_msf = [_miou_interval(m, o) for m, o in group]
        crf_multi = [_miou_interval(m, plain) for m, _ in group if (plain := _without_crf(m, multi)) is not None]
        crf_single = [_miou_interval(o, plain) for _, o in group if (plain := _without_crf(o, single)) is not None]
        mean_std = [(np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0)
                    for v in ([o["miou"] for _, o in group], [m["miou"] for m, _ in group])]
        rows.append([method, REFINE_NAMES[refine], CRF_NAMES[crf], ", ".join(str(m["seed"]) for m, _ in group),
                     *(f"{mean:.4f} ± {std:.4f}" for mean, std in mean_std), _intervals(from_msf), _verdict(from_msf),
                     _intervals(crf_single), _verdict(crf_single) if crf_single else "-",
                     _intervals(crf_multi), _verdict(crf_multi) if crf_multi else "-"])
        found = {"ΔmIoU from multi-scale": from_msf, "ΔmIoU from CRF, one scale": crf_single,
                 "ΔmIoU from CRF, multi-scale": crf_multi}
        figure[_semseg_row(group[0][0])] = {k: v for k, v in found.items() if v}
    header = ["method", "refinement", "CRF", "seeds", "mIoU, one scale", "mIoU, multi-scale",
              "ΔmIoU multi-scale − one scale, 95% CI per seed", "multi-scale helps?",
              "ΔmIoU from CRF at one scale, 95% CI per seed", "CRF helps (one scale)?",
              "ΔmIoU from CRF at multi-scale, 95% CI per seed", "CRF helps (multi-scale)?"]
    first = pairs[0][0]
    note = (f"What multi-scale inference and dense CRF add to semantic segmentation of the {first['n_test']} test "
            f"images: the same runs scored from the maps of one scale (the run's size) and from OC-CSE's multi-scale "
            f"inference with flips (0.5, 1, 1.5, 2), each with its own background threshold or α chosen on training "
            f"masks. Intervals: paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the test images, the same "
            f"resample for both, confusion matrices pooled per resample; 95% percentile), per seed; \"helps\" only "
            f"where every seed's interval lies above 0 (\"worse\" where every one lies below).\n\n")
    text = note + tables.markdown(header, rows, [tables.LEFT] * 4 + [tables.RIGHT] * 2 + [tables.LEFT] * 6)
    report_dir = Path(report_dir)
    atomic_write_text(report_dir / "semseg_msf.md", text)
    figures.plot_intervals(figure, report_dir / "semseg_msf.png",
                           "what multi-scale inference and dense CRF add: each seed's paired interval of mIoU "
                           "(solid: excludes 0)", reference="")
    return text
