"""The WSOL report of a finished run (mean IoU, PxAP, MaxBoxAccV2, top-1 and GT-known localisation, the faithfulness of its maps, the embedded benchmark's diagnostics) and the tables that compare runs over seeds with paired bootstrap intervals against plain CAM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import dataloader
import model
from camlab import figures, formats, stream, synthetic, tables
from camlab.boxes import BOX_FRACTION, DEFAULT_PROTOCOL, Box, get_protocol, localization_accuracy, mask_box, max_box_acc
from camlab.cams import minmax, select_class
from camlab.extractors import DEFAULT_EXTRACTOR, EXTRACTOR_NAMES
from camlab.faithfulness import FAITH_BATCH, FAITH_STEPS, faithfulness
from camlab.images import ImageSet
from camlab.scoremaps import Scorer
from camlab.wsolmeta import image_truth, read_split
from camlab.metrics import (BOOTSTRAP_RESAMPLES, CAM_CURVE_INTERVAL, mean_statistic, paired_bootstrap, pixel_histograms,
                            pxap_from_histograms, pxap_statistic)
from camlab.utils import CHECKPOINT_DIR, REPORT_DIR, CamlabError, atomic_write_text
from research.experiments import Experiment, _batched, _localization, mask_parts
from research.streamscore import protocol_batches


# ------------------------------------------------------------------ methods compared (WSOL)
# methods.csv / methods.md columns: (key in a wsol_report, header)
# The faithfulness of the maps (camlab.faithfulness; Average Drop and Increase in Confidence in
# percent, the AUCs in [0, 1]); ↓: lower is more faithful
FAITH_COLUMNS = (("avg_drop", "Avg Drop % ↓"), ("increase_conf", "Incr. Conf. %"),
                 ("deletion_auc", "deletion AUC ↓"), ("insertion_auc", "insertion AUC"))
# camlab's variant of the first two: the explanation image fades to the mean colour, not black
FAITH_MEAN_COLUMNS = (("avg_drop_mean", "Avg Drop % ↓ (mean colour)"),
                      ("increase_conf_mean", "Incr. Conf. % (mean colour)"))
METHOD_COLUMNS = (("test_acc", "test acc"), ("test_iou", "mean IoU"), ("pxap", "PxAP"),
                  ("max_box_acc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 loc"),
                  ("gt_known_loc", "GT-known loc")) + FAITH_COLUMNS + FAITH_MEAN_COLUMNS


# The embedded benchmark's diagnostics (only for runs on it): what the model looks at.
DIAGNOSTIC_COLUMNS = (("acc_body", "body-only acc"), ("acc_part", "part-only acc"), ("on_part", "part ≥0.5"),
                      ("on_body", "body ≥0.5"), ("on_background", "background ≥0.5"))


MAP_LEVEL = 0.5
BASELINE_MODE = "CAM"  # every comparison is against the lab's CAM (camlab.methods key)  # the diagnostics' pixel shares count pixels where the normalised map is >= this


def wsol_report(exp_id: "str | Experiment", n_threshold: int = 500, device: str = "auto",
                protocol: str = DEFAULT_PROTOCOL, extractor: str = DEFAULT_EXTRACTOR,
                diagnose: bool = True, interval: float = CAM_CURVE_INTERVAL, strict_boxes: bool = False,
                faith_steps: int = FAITH_STEPS, in_memory: str = "always", workers: int = 0) -> dict | None:
    """Every measure of the methods table for ``exp_id`` on its test split, as fractions; None
    when the test split has no ground truth (cifar10, folder, a lab tree without test_masks/).
    Measures that need what the dataset lacks are left out: boxes only (wsol's CUB and ILSVRC)
    give no mean IoU and PxAP; OpenImages' masks give no box measures (wsolevaluation scores it
    by PxAP alone).

    test_acc: the best checkpoint's accuracy. test_iou: mean IoU of the predicted class's CAM at
    the threshold chosen on the ``fit`` split's masks (training masks on the embedded benchmark,
    wsolevaluation's val; as :func:`localization_report`); it keeps the handout's definition.
    PxAP, MaxBoxAccV2, top-1 and GT-known localisation read the labelled class's map as
    ``protocol`` defines it (:class:`iou.Protocol`; wsolevaluation's by default), over every
    threshold of the test split as the benchmark defines them. Ground-truth boxes are wsol's
    metadata boxes as given, else the boxes of the object masks in the protocol's convention.
    On the embedded benchmark, the diagnostics (:func:`diagnostics`; ``diagnose``: with the
    rendering accuracies, which depend on the model alone) join the report. The per-image values
    that the paired bootstrap resamples are kept under ``per_image``. Every map comes from
    ``extractor`` (``EXTRACTORS``; camlab's CAM by default), named in ``method`` when it is
    another. ``exp_id`` may be a loaded :class:`Experiment`: its test split, ground truth and
    extractor maps are then read once for every report on it. The faithfulness of the same maps
    (:func:`map_faithfulness`, deletion and insertion in ``faith_steps`` steps; 0 leaves them
    out): ``avg_drop`` and ``increase_conf`` (percent), ``deletion_auc`` and ``insertion_auc``.
    A test split that ``in_memory`` (``--data_in_memory``, ``workers`` processes) streams is scored
    in chunks (:func:`streamed_report`).
    """
    exp = exp_id if isinstance(exp_id, Experiment) else Experiment.load(exp_id, device)
    found = exp.read_test(in_memory, workers)
    if isinstance(found, stream.StreamSet):
        return streamed_report(exp, found, protocol, extractor, interval, faith_steps)
    test_set, truth = exp.test
    if truth is None:
        return None
    truth.check_boxes(strict_boxes, f"{exp.exp_id}'s test split")
    report = _localization(exp, "class", n_threshold, extractor) or {"exp_id": exp.exp_id}
    preds, cams = exp.protocol_cams(test_set, protocol, extractor)
    labels = test_set.labels.cpu().numpy()
    meta = synthetic.read_meta(exp.root, "lab")  # the single-object embedded benchmark, else None
    per_image = {"iou": report.pop("test_ious")} if "test_ious" in report else {}
    report.update(test_acc=float(np.mean(preds == labels)),
                  **_identity(exp, extractor, protocol, interval, truth.box_faults, len(test_set), meta))
    masks = None
    if truth.masks is not None:
        masks, valid = mask_parts(truth.masks)
        fg, bg = pixel_histograms(cams, masks, interval, valid=valid)
        report.update(pxap=pxap_from_histograms(fg.sum(0), bg.sum(0)),
                      mean_mask_area=float(masks.mean() if valid is None else masks[valid].mean()))
        per_image.update(fg=fg, bg=bg)
    boxes, metadata_boxes = truth.boxes, truth.boxes is not None
    if boxes is None and masks is not None and formats.get(exp.cfg.dataset).boxes_from_masks:
        boxes = [[box] if (box := mask_box(m, protocol)) is not None else [] for m in masks]
    if boxes is not None:
        report.update(max_box_acc_v2=max_box_acc(cams, boxes, interval=interval, protocol=protocol)["mean"],
                      **localization_accuracy(cams, preds, labels, boxes, protocol=protocol))
    if faith_steps:
        faith = map_faithfulness(exp.net, test_set, cams, exp.cfg.img_size, faith_steps)
        per_image.update(faith)
        report.update(faith_means(faith, faith_steps))
    report["per_image"] = per_image
    if meta is not None and meta.get("version") == synthetic.SYNTHETIC_VERSION and masks is not None:
        report.update(diagnostics(exp, cams, masks, meta, with_accuracy=diagnose))
    report["examples"] = _examples(test_set, cams, boxes or [[]] * len(test_set), protocol, metadata_boxes)
    return report


def _identity(exp: Experiment, extractor: str, protocol: str, interval: float, box_faults, n_test: int,
              meta: dict | None) -> dict:
    """What a report says of its run and scoring (method, seed, test set ...), either path."""
    method = exp.cfg.method.label(exp.cfg) + ("" if extractor == DEFAULT_EXTRACTOR
                                              else f" · {EXTRACTOR_NAMES[extractor]}")
    return dict(method=method, mode=exp.cfg.mode, protocol=protocol, cam_curve_interval=interval,
                box_faults=box_faults, extractor=extractor, seed=exp.cfg.seed, data_root=str(exp.root.resolve()),
                metadata=exp.cfg.metadata, n_test=n_test, body_evidence=(meta or {}).get("body_evidence"))


def map_faithfulness(net: "model.CAMModel", data: ImageSet, maps: np.ndarray, img_size: int,
                     steps: int = FAITH_STEPS, batch: int = FAITH_BATCH) -> dict[str, np.ndarray]:
    """:func:`camlab.faithfulness.faithfulness` of ``maps`` (N×H×W in [0, 1], each of its
    image's labelled class) on ``net``'s inputs of ``data`` (``dataloader.to_model_input``, the
    maps resized to ``img_size`` where the stored images differ), ``batch`` images at a time:
    per image ``y``, ``o``, ``drop``, ``increase``, ``deletion``, ``insertion`` (float64 N each)."""
    parts, maps = [], torch.from_numpy(np.ascontiguousarray(maps))
    for idx in torch.arange(len(data), device=data.images.device).split(batch):
        with torch.inference_mode():
            inputs = dataloader.to_model_input(data.images[idx], img_size)
        parts.append(faithfulness(lambda x: net(x)[0], inputs, maps[idx.cpu()].to(inputs.device), data.labels[idx],
                                  steps, batch))
    return _joined(parts)


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The per-image arrays of each batch of :func:`camlab.faithfulness.faithfulness`, joined."""
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def faith_means(faith: dict[str, np.ndarray], steps: int) -> dict:
    """A report's faithfulness columns: the means of the per-image values, and the steps."""
    return dict(avg_drop=float(faith["drop"].mean()), increase_conf=float(faith["increase"].mean()),
                deletion_auc=float(faith["deletion"].mean()), insertion_auc=float(faith["insertion"].mean()),
                avg_drop_mean=float(faith["drop_mean"].mean()), increase_conf_mean=float(faith["increase_mean"].mean()),
                faith_steps=steps)


def _examples(data: ImageSet, cams: np.ndarray, boxes: list, protocol: str,
              inclusive_truth: bool = False, n: int = 8) -> list[dict]:
    """The first ``n`` test images with their maps, the protocol's 20% box and the (first)
    ground-truth box, both inclusive for drawing, for the report figure (:func:`_example`)."""
    return [_example(data.images[i].permute(1, 2, 0).cpu().numpy(), cams[i], boxes[i], data.names[i], protocol,
                     inclusive_truth) for i in range(min(n, len(data)))]


def _example(image: np.ndarray, cam: np.ndarray, boxes, name: str, protocol: str, inclusive_truth: bool) -> dict:
    """One image of the report figure (uint8 H×W×3, its map, its ground-truth boxes). Boxes found
    by the protocol take its ends; ``inclusive_truth``: the ground truth's are inclusive already
    (wsol's metadata boxes)."""
    rule = get_protocol(protocol)

    def drawn(found: np.ndarray | list, ends=rule.inclusive) -> Box | None:
        return ends(found[0]) if len(found) else None

    def as_given(box: Sequence[int]) -> Box:
        return int(box[0]), int(box[1]), int(box[2]), int(box[3])
    return {"image": image, "cam": cam, "box": drawn(rule.box_at(cam, BOX_FRACTION)),
            "gt_box": drawn(boxes, as_given if inclusive_truth else rule.inclusive), "name": name}


def streamed_report(exp: Experiment, data: "stream.StreamSet", protocol: str = DEFAULT_PROTOCOL,
                    extractor: str = DEFAULT_EXTRACTOR, interval: float = CAM_CURVE_INTERVAL,
                    faith_steps: int = FAITH_STEPS, n_examples: int = 8) -> dict:
    """:func:`wsol_report` of a test split read in chunks (``camlab.stream.StreamSet``,
    ``--data_in_memory``): each batch's maps (``research.streamscore.protocol_batches``) are scored
    into wsolevaluation's accumulators (``camlab.scoremaps.Scorer``) and their faithfulness
    computed, then dropped; what is kept grows only by a few numbers per image (PxAP's histograms
    on a split with masks, the four faithfulness values) and ``n_examples`` maps for the figure.
    The same measures as the whole-split path and the same per-image values for the paired
    bootstrap, but for mean IoU and the embedded benchmark's diagnostics, which need every map of
    two splits at once; it serves the wsol format (its metadata gives each image's truth) under
    wsolevaluation's protocol."""
    if exp.cfg.dataset != "wsol" or get_protocol(protocol).form != "raw":
        raise CamlabError(f"{exp.exp_id}: its test split is streamed (--data_in_memory), and a streamed split is "
                          f"scored only for --dataset wsol under --protocol {DEFAULT_PROTOCOL}; use "
                          f"--data_in_memory always")
    info = read_split(exp.root, exp.cfg.metadata, exp._split_name("test"))
    scorer = Scorer(info, exp.root, interval, keep_histograms=True)
    parts, examples, correct = [], [], 0
    for idx, stored, inputs, labels, preds, maps in protocol_batches(exp.net, data, exp.cfg.img_size, extractor,
                                                                     device=exp.device):
        for j, i in enumerate(idx.tolist()):
            scorer.add(data.names[i], maps[j], int(labels[j]), int(preds[j]))
            if len(examples) < n_examples:
                truth = image_truth(info, exp.root, data.names[i], maps[j].shape) if info.kind == "boxes" else []
                examples.append(_example(stored[j].permute(1, 2, 0).cpu().numpy().copy(), maps[j].copy(), truth,
                                         data.names[i], protocol, True))  # copies: a view keeps the whole batch
        correct += int((preds == labels.cpu()).sum())
        if faith_steps:
            parts.append(faithfulness(lambda x: exp.net(x)[0], inputs, torch.from_numpy(maps).to(inputs.device),
                                      labels, faith_steps, FAITH_BATCH))
    scored = scorer.report("test", top1=True)
    report = {"exp_id": exp.exp_id, "test_acc": correct / max(len(data), 1), "streamed": True,
              **{k: scored[k] for k in ("pxap", "top1_loc", "gt_known_loc") if k in scored}}
    if "max_box_acc_v2" in scored:
        report["max_box_acc_v2"] = scored["max_box_acc_v2"]["mean"]
    per_image = {}
    if info.kind != "boxes":
        per_image.update(fg=np.stack(scorer.image_fg), bg=np.stack(scorer.image_bg))
    if parts:
        faith = _joined(parts)
        per_image.update(faith)
        report.update(faith_means(faith, faith_steps))
    report.update(_identity(exp, extractor, protocol, interval, info.box_faults, len(data), None),
                  per_image=per_image, examples=examples)
    return report


# ------------------------------------------------------------------------- the diagnostics
def map_shares(maps: np.ndarray, masks: np.ndarray, part_masks: np.ndarray,
               level: float = MAP_LEVEL) -> dict[str, float]:
    """The share of the part's, the body's (object minus part) and the background's pixels,
    pooled over the images, where the normalised map (N×H×W in [0, 1]) is >= ``level``."""
    on = np.asarray(maps) >= level
    masks, part_masks = np.asarray(masks, bool), np.asarray(part_masks, bool)
    regions = {"on_part": part_masks, "on_body": masks & ~part_masks, "on_background": ~masks}
    return {key: float(on[region].mean()) if region.any() else float("nan") for key, region in regions.items()}


def rendering_accuracy(net: "model.CAMModel", meta: dict, img_size: int, device: torch.device,
                       split: str = "test") -> dict[str, float]:
    """Accuracy of ``net`` on the split drawn again from its seeds as each of
    ``synthetic.RENDERINGS``: normal (the files on disk), body only (the part not painted) and
    part only (the body not painted)."""
    accuracy = {}
    for render in synthetic.RENDERINGS:
        images, _, labels = synthetic.redraw(meta, split, render)
        data = ImageSet(torch.from_numpy(images.copy()).permute(0, 3, 1, 2).contiguous(),
                                   torch.from_numpy(labels), [str(i) for i in range(len(labels))],
                                   list(meta["classes"])).to(device)
        preds, _ = _batched(net, data, img_size, 64, False, _scores_only(net))
        accuracy[f"acc_{render}"] = float(np.mean(preds == labels))
    return accuracy


def _scores_only(net: "model.CAMModel"):
    """``maps_of`` for :func:`_batched` when only the predictions are wanted: the scores stand in
    for the maps."""
    def scores(inputs: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            out = net(inputs)[0]
        return out, out
    return scores


def head_maps(net: "model.CAMModel", data: ImageSet,
              img_size: int) -> tuple[list[np.ndarray], list[float]]:
    """Each ``p`` head's min-max normalised map of the labelled class at the image size (ACoL
    has two: the first head's and the one that saw the erased features), N×H×W each, and each
    head's accuracy (a later head's on the features the earlier heads' maps of the label erased:
    how much evidence the erasing left)."""
    out_size = tuple(data.images.shape[-2:])
    maps, hits = [], []
    with torch.inference_mode():
        for idx in torch.arange(len(data), device=data.images.device).split(64):
            inputs, labels = dataloader.to_model_input(data.images[idx], img_size), data.labels[idx]
            outputs = [out for out in net.run_heads(net.forward_features(inputs), labels) if out.kind == "p"]
            hits.append([(out.scores.argmax(dim=1) == labels).sum().item() for out in outputs])
            maps.append([minmax(torch.nn.functional.interpolate(
                select_class(out.cams, labels).unsqueeze(1).float(), size=out_size,
                mode="bilinear", align_corners=False)[:, 0]).cpu().numpy() for out in outputs])
    return [np.concatenate(per_head) for per_head in zip(*maps)], [sum(h) / len(data) for h in zip(*hits)]


def diagnostics(exp: Experiment, cams: np.ndarray, masks: np.ndarray, meta: dict,
                with_accuracy: bool = True) -> dict:
    """What a run on the embedded benchmark looks at: accuracy on its test set as drawn
    normally, body only and part only (:func:`rendering_accuracy`), and where its evaluation map
    of the labelled class is >= MAP_LEVEL (:func:`map_shares`); for ACoL, each ``p`` head's
    map too (``heads``), to see whether the second lies on the body or on the background."""
    _, part_masks, _ = synthetic.redraw(meta, "test", "normal")
    out = rendering_accuracy(exp.net, meta, exp.cfg.img_size, exp.device) if with_accuracy else {}
    out.update(map_shares(cams, masks, part_masks))
    if exp.net.config.recipe.count("p") > 1:
        maps, accuracy = head_maps(exp.net, exp.test[0], exp.cfg.img_size)
        out["heads"] = [{**map_shares(m, masks, part_masks), "acc": acc} for m, acc in zip(maps, accuracy)]
    return out


def _cell(report: dict, key: str) -> str:
    value = report.get(key)
    return "-" if value is None or value != value else f"{value:.4f}"


def methods_table(reports: list[dict]) -> tuple[str, str]:
    """(csv, markdown): one row per run, its exp_id, method and seed first, then the measures of
    METHOD_COLUMNS and the diagnostics of DIAGNOSTIC_COLUMNS ("-" off the embedded benchmark)."""
    columns = METHOD_COLUMNS + DIAGNOSTIC_COLUMNS
    values = [[_cell(r, key) for key, _ in columns] for r in reports]
    csv_text = tables.csv_text(["experiment", "method", "seed", "body_evidence"] + [key for key, _ in columns],
                               [[r["exp_id"], r["method"], r["seed"], r.get("body_evidence", "")] + v
                                for r, v in zip(reports, values)])
    md = tables.markdown(["experiment", "method", "seed"] + [h for _, h in columns],
                         [[r["exp_id"], r["method"], r["seed"]] + v for r, v in zip(reports, values)],
                         [tables.LEFT] * 2 + [tables.RIGHT] * (1 + len(columns)))
    return csv_text, md


def is_baseline(report: dict) -> bool:
    """Whether ``report`` is plain CAM: the lab's CAM method read through camlab's own CAM (the
    method and extractor keys, not the table labels)."""
    return report.get("mode") == BASELINE_MODE and report.get("extractor", DEFAULT_EXTRACTOR) == DEFAULT_EXTRACTOR


def _reference(report: dict, reports: list[dict]) -> dict | None:
    """The plain CAM run that ``report`` is paired with: same test set (data root) and seed."""
    return next((r for r in reports if is_baseline(r) and r["seed"] == report["seed"]
                 and r["data_root"] == report["data_root"] and r.get("metadata") == report.get("metadata")), None)


def _mean_of(key: str):
    return lambda per_image: mean_statistic(per_image[key]) if key in per_image else None


# The measures compared with CAM by the paired bootstrap: name -> (label, the statistic of a
# report's per-image values (None where the report lacks them), whether higher is better)
COMPARED = {"iou": ("IoU", _mean_of("iou"), True),
            "pxap": ("PxAP", lambda p: pxap_statistic(p["fg"], p["bg"]) if "fg" in p else None, True),
            "drop": ("Avg Drop", _mean_of("drop"), False), "increase": ("Incr. Conf.", _mean_of("increase"), True),
            "deletion": ("deletion AUC", _mean_of("deletion"), False),
            "insertion": ("insertion AUC", _mean_of("insertion"), True),
            "drop_mean": ("Avg Drop (mean colour)", _mean_of("drop_mean"), False),
            "increase_mean": ("Incr. Conf. (mean colour)", _mean_of("increase_mean"), True)}
LOCALISATION = ("iou", "pxap")
FAITHFULNESS = ("drop", "increase", "deletion", "insertion")
FAITH_MEAN = ("drop_mean", "increase_mean")


def versus_cam(report: dict, cam: dict, resamples: int = BOOTSTRAP_RESAMPLES,
               names: Sequence[str] = tuple(COMPARED)) -> dict[str, tuple[float, float, float]]:
    """The paired per-image bootstrap (:func:`iou.paired_bootstrap`) of ``report`` minus the CAM
    run ``cam`` on the same test images: each measure of ``COMPARED`` both have (mean IoU, PxAP,
    the faithfulness means; those of ``names``), each (difference, low, high)."""
    a, b = report["per_image"], cam["per_image"]
    if report["n_test"] != cam["n_test"]:
        raise CamlabError(f"{report['exp_id']} and {cam['exp_id']} were scored on different test sets")
    found = {}
    for name in names:
        statistic = COMPARED[name][1]
        ours, theirs = statistic(a), statistic(b)
        if ours is not None and theirs is not None:
            found[name] = paired_bootstrap(ours, theirs, report["n_test"], resamples)
    return found


def _verdict(intervals: list[tuple[float, float, float]], higher_is_better: bool = True) -> str:
    """"better" / "worse" when every seed's interval lies above / below 0 (below / above where
    lower is better), else "no clear difference"."""
    above = intervals and all(low > 0 for _, low, _ in intervals)
    below = intervals and all(high < 0 for _, _, high in intervals)
    if above or below:
        return "better" if bool(above) == higher_is_better else "worse"
    return "no clear difference"


SUMMARY_KEYS = (("test_iou", "mean IoU"), ("pxap", "PxAP"), ("max_box_acc_v2", "MaxBoxAccV2"),
                ("acc_body", "body-only acc"), ("on_body", "body ≥0.5"), ("on_background", "background ≥0.5"))


def summary_table(reports: list[dict], keys: Sequence[tuple[str, str]] = SUMMARY_KEYS,
                  compared: Sequence[str] = LOCALISATION) -> str:
    """Markdown: one row per (dataset, method), each measure of ``keys`` as mean ± std over its
    seeds, and per seed the paired bootstrap 95% interval of each ``compared`` measure
    (``COMPARED``; mean IoU and PxAP by default) minus the same seed's plain CAM; the verdict
    counts only where every seed's interval excludes 0, and "better" is the measure's better side."""
    groups: dict[tuple, list[dict]] = {}
    for r in reports:
        groups.setdefault((r["data_root"], r.get("metadata"), r.get("body_evidence"), r["method"]), []).append(r)
    header = (["body evidence", "method", "seeds"] + [h for _, h in keys]
              + [f"Δ{COMPARED[name][0]} vs CAM, 95% CI per seed" for name in compared] + ["beats CAM?"])
    rows = []
    for (_, _, dial, method), group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        cells = []
        for key, _ in keys:
            values = np.array([r.get(key, np.nan) for r in group], dtype=np.float64)
            cells.append("-" if np.isnan(values).all() else
                         f"{np.nanmean(values):.4f} ± {np.nanstd(values, ddof=1) if len(values) > 1 else 0:.4f}")
        found: dict[str, list] = {name: [] for name in compared}
        for r in group:
            cam = _reference(r, reports)
            if cam is not None and cam is not r:
                versus = versus_cam(r, cam, names=compared)  # only the measures this table shows
                for name in compared:
                    found[name] += [versus[name]] if name in versus else []
        verdict = "; ".join(f"{COMPARED[name][0]}: {_verdict(found[name], COMPARED[name][2])}"
                            for name in compared if found[name]) or "-"
        rows.append(["-" if dial is None else f"{dial:g}", method, ", ".join(str(r["seed"]) for r in group)]
                    + cells + [_intervals(found[name]) for name in compared] + [verdict])
    return tables.markdown(header, rows, [tables.RIGHT] + [tables.LEFT] * 2 + [tables.RIGHT] * len(keys)
                           + [tables.LEFT] * (len(compared) + 1))


def faithfulness_section(reports: list[dict]) -> str:
    """Markdown: the faithfulness summary (:func:`summary_table` of ``FAITH_COLUMNS`` and
    ``FAITHFULNESS``) under its heading and note, or "" when no report measured it."""
    measured = [r for r in reports if "avg_drop" in r]
    if not measured:
        return ""
    steps = ", ".join(str(s) for s in sorted({r["faith_steps"] for r in measured}))
    note = ("Faithfulness of the same maps to the model (docs/methods.md, \"Faithfulness\"), the labelled "
            "class's softmax probability: Average Drop (%) = 100 · mean of max(0, Y − O)/Y and Increase in "
            "Confidence (%) = 100 · share of O > Y (Chattopadhay et al. 2018), Y on the image, O on the 0–1 image "
            "times the min-max normalised map; deletion and insertion AUC (Petsiuk et al. 2018, RISE) of the "
            f"probability as the most salient pixels are replaced, in {steps} equal steps (--faith_steps): deletion "
            "replaces them with the mean colour (RISE's zeros of the normalised input), insertion starts from the "
            "image blurred (RISE's kernel 11, sigma 5) and puts them back. Lower is better for Average Drop and "
            "deletion (↓), higher for Increase in Confidence and insertion; \"better\" means more faithful than CAM "
            "on every seed's paired bootstrap interval.\n\n")
    text = "\n### Faithfulness\n\n" + note + summary_table(measured, FAITH_COLUMNS, FAITHFULNESS)
    variant = [r for r in measured if "avg_drop_mean" in r]
    if variant:
        text += ("\n### Average Drop and Increase in Confidence with the mean colour (camlab's variant)\n\n"
                 "The same two measures with the explanation image faded to the mean colour where the map is 0 "
                 "(the normalised input times the map, torchcam's masking), not to black: where a black image is "
                 "read as one class, the paper's form measures that class's share of the test split rather than "
                 "the maps. Intervals and verdicts as above.\n\n"
                 + summary_table(variant, FAITH_MEAN_COLUMNS, FAITH_MEAN))
    return text


def _intervals(found: list[tuple[float, float, float]]) -> str:
    """Each seed's (difference [low, high]), joined by "; ", or "-" when there is none."""
    return "; ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in found) or "-"


def heads_table(reports: list[dict]) -> str:
    """Markdown: for runs with several ``p`` heads (ACoL), where each head's map is >= 0.5."""
    rows = [r for r in reports if r.get("heads")]
    if not rows:
        return ""
    body = [[r["exp_id"], i, f"{shares['acc']:.4f}", f"{shares['on_part']:.4f}", f"{shares['on_body']:.4f}",
             f"{shares['on_background']:.4f}"] for r in rows for i, shares in enumerate(r["heads"], start=1)]
    return tables.markdown(["experiment", "head", "accuracy (head 2: on erased features)", "part ≥0.5", "body ≥0.5",
                            "background ≥0.5"], body, [tables.LEFT] + [tables.RIGHT] * 5)


def _steps(reports: list[dict]) -> str:
    """The CAM threshold steps the reports were scored at (one, unless tables were mixed)."""
    return ", ".join(f"{v:g}" for v in sorted({r.get("cam_curve_interval", 0.01) for r in reports}))


def write_methods_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``methods.csv``, ``methods.md`` (the summary over seeds with intervals, then every run
    with its diagnostics) and the figure ``methods_grid.png`` (the first seed's runs); returns
    the markdown."""
    if not reports:
        raise CamlabError(f"no experiment under {CHECKPOINT_DIR}/ has a best.pth on a dataset with "
                          f"boxes or masks; train one first (python main.py --mode CAM)")
    protocols = sorted({r["protocol"] for r in reports})
    seeds = sorted({r["seed"] for r in reports})
    extractors = sorted({EXTRACTOR_NAMES[r.get("extractor", "cam")] for r in reports})
    note = (f"Protocol: {', '.join(protocols)} (iou.py --protocol), CAM threshold step {_steps(reports)} "
            f"(--cam_curve_interval); maps: {', '.join(extractors)}. Mean IoU at each "
            f"run's threshold chosen on the masks of the split that chooses (training masks on the embedded "
            f"benchmark, val on wsol; the handout's IoU); PxAP, MaxBoxAccV2 (IoU 0.3/0.5/0.7, every contour) and top-1 / "
            f"GT-known localisation (the 20% box) read the labelled class's map; "
            f"{reports[0]['n_test']} test images.\n\n"
            f"Seeds: {', '.join(map(str, seeds))}. Each measure is the mean ± sample std over seeds. Each seed's run "
            f"is compared with the plain CAM run of the same seed on the same test images: a paired bootstrap "
            f"({BOOTSTRAP_RESAMPLES} resamples of the test images, the same resample for both runs; 95% percentile "
            f"interval) of the difference in mean IoU and in PxAP. A method beats CAM only where every seed's "
            f"interval lies above 0. Diagnostics: accuracy on the test set drawn again with the part unpainted "
            f"(body-only) and with the body unpainted (part-only); the share of part, body and background pixels "
            f"where the labelled class's evaluation map is >= {MAP_LEVEL}.\n\n")
    heads = heads_table(reports)
    first = min(r["seed"] for r in reports)
    return _write_comparison(reports, Path(report_dir), "methods", note, "Every run",
                             f"\n### Each ACoL head's map\n\n{heads}" if heads else "", lambda r: r["method"],
                             title=f"seed {first}: each method's CAM of the labelled class; boxes: CAM (red, 20% rule), "
                                   f"ground truth (green)")


def _by_method(reports: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in reports:
        groups.setdefault(r["method"], []).append(r)
    return groups


def intervals_by_method(reports: list[dict]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """method -> "Δ<measure>" -> each seed's (difference, low, high) against the same seed's
    plain CAM (:func:`versus_cam`), for every method but CAM itself."""
    rows: dict[str, dict[str, list]] = {}
    for method, group in _by_method(reports).items():
        for r in sorted(group, key=lambda r: r["seed"]):
            cam = _reference(r, reports)
            if cam is None or cam is r:
                continue
            for name, found in versus_cam(r, cam).items():
                rows.setdefault(method, {}).setdefault(f"Δ{COMPARED[name][0]}", []).append(found)
    return rows


def sweep_intervals(reports: list[dict], names: Sequence[str] = ("iou", "pxap")) -> dict[str, dict[str, list]]:
    """method -> "Δ<measure>" -> [(body-evidence setting, each seed's (difference, low, high)
    against the same seed's plain CAM on that setting's test set), ...] in increasing setting,
    for :func:`camlab.figures.plot_sweep_intervals` (every method but CAM)."""
    found: dict[str, dict[str, dict[float, list]]] = {}
    for r in sorted(reports, key=lambda r: (r["body_evidence"], r["seed"])):
        cam = _reference(r, reports)
        if cam is None or cam is r:
            continue
        for name, interval in versus_cam(r, cam, names=names).items():
            found.setdefault(r["method"], {}).setdefault(f"Δ{COMPARED[name][0]}", {}).setdefault(
                r["body_evidence"], []).append(interval)
    return {method: {measure: sorted(points.items()) for measure, points in per.items()}
            for method, per in found.items()}


def grid_labels(reports: list[dict], row_label) -> list[str]:
    """Each report's row label in a grid figure: ``row_label(report)``, with its run's name added
    where two reports share a label (so that no row replaces another)."""
    labels = [row_label(r) for r in reports]
    return [f"{label} ({r['exp_id']})" if labels.count(label) > 1 else label for label, r in zip(labels, reports)]


def _write_comparison(reports: list[dict], report_dir: Path, stem: str, note: str, rows_heading: str, extra: str,
                      row_label, title: str = "") -> str:
    """``<stem>.csv`` (every report), ``<stem>.md`` (``note``, the summary over seeds with
    intervals against CAM, every report, ``extra``) and ``<stem>_grid.png`` (the first seed's
    reports, one row each, labelled ``row_label(report)``); returns the markdown."""
    csv_text, md = methods_table(reports)
    text = note + summary_table(reports) + faithfulness_section(reports) + f"\n### {rows_heading}\n\n" + md + extra
    atomic_write_text(report_dir / f"{stem}.csv", csv_text)
    atomic_write_text(report_dir / f"{stem}.md", text)
    first_seed = min(r["seed"] for r in reports)
    first = [r for r in reports if r["seed"] == first_seed]
    figures.plot_methods({label: r["examples"] for label, r in zip(grid_labels(first, row_label), first)},
                         report_dir / f"{stem}_grid.png", title)
    rows = intervals_by_method(reports)
    if rows:
        figures.plot_intervals(rows, report_dir / f"{stem}_intervals.png",
                               f"{stem}: each seed's paired bootstrap difference from plain CAM on the same test images "
                               f"(solid: the interval excludes 0; Avg Drop and deletion: lower is more faithful)")
    points = {m: ([r["pxap"] for r in rs], [r["insertion_auc"] for r in rs]) for m, rs in _by_method(reports).items()
              if all("pxap" in r and "insertion_auc" in r for r in rs)}
    if points:
        figures.plot_scatter(points, report_dir / f"{stem}_faithful.png", "PxAP (localises: higher is better)",
                             "insertion AUC (faithful: higher is better)",
                             f"{stem}: localisation against faithfulness, mean over seeds (bars: min to max)")
    return text


def write_extractors_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``extractors.csv``, ``extractors.md`` (the summary over seeds with intervals against CAM,
    then every (run, extractor)) and ``extractors_grid.png`` (rows: extractors; columns: the
    first test images of the first seed's model); returns the markdown."""
    if not reports:
        raise CamlabError("no CAM run with masks to compare extractors on; train one first (python main.py --mode CAM)")
    seeds = sorted({r["seed"] for r in reports})
    runs = sorted({r["exp_id"] for r in reports})
    note = (f"Extractors on one trained CAM model per seed ({', '.join(runs)}), protocol {reports[0]['protocol']}, "
            f"CAM threshold step {_steps(reports)}: "
            f"each extractor's map of the labelled class (PxAP, MaxBoxAccV2, localisation) and of the predicted class "
            f"(mean IoU at the threshold chosen on training masks, per extractor); {reports[0]['n_test']} test images. "
            f"Seeds {', '.join(map(str, seeds))}: mean ± sample std; intervals are paired bootstraps "
            f"({BOOTSTRAP_RESAMPLES} resamples) of each extractor minus camlab's CAM on the same model and images; "
            f"\"better\" only where every seed's interval lies above 0. Body-only accuracy is the model's "
            f"(the same for every extractor).\n\n")
    return _write_comparison(reports, Path(report_dir), "extractors", note, "Every run and extractor", "",
                             lambda r: r["method"], title=f"{runs[0]}: each extractor's map of the labelled class; "
                                                          f"boxes: 20% rule (red), ground truth (green)")
