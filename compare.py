"""The comparison runner: trains (or reuses) runs, evaluates them on a whole split and compares
methods: the handout's ablation, the WSOL methods table over seeds with paired bootstrap
intervals, the benchmark's diagnostics and the body-evidence sweep.

``iou.py`` holds the metrics and stays the command (``python iou.py --methods``); this module is
what that command runs. It reads finished runs from ``checkpoints/`` and writes ``report/``.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import dataloader
import model
import train
import visualize
import synthetic
from iou import (BOOTSTRAP_RESAMPLES, BOX_FRACTION, CRF_REFERENCE_SIDE, CRF_THRESHOLD_GRID, CRF_VARIANTS, DEFAULT_PROTOCOL, THRESHOLD_GRID, Box,
                 _md_cell, _protocol, batch_iou, choose_background_threshold, class_ious, image_confusions, iou_curve,
                 iou_table, localization_accuracy, mask_box, max_box_acc, mean_statistic, miou_statistic,
                 paired_bootstrap, pick_threshold, pixel_histograms, pxap_from_histograms, pxap_statistic, segment,
                 threshold_masks, wsol_scoremaps)
from camlab.utils import (CHECKPOINT_DIR, DEFAULT_THRESHOLD, REPORT_DIR, VISUALIZE_DIR, CamlabError,
                   atomic_write_text, resolve_device, safe_subdir)

# ------------------------------------------------------------------- the whole test set
def dataset_cams(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, form: str,
                 batch_size: int = 64, of_labels: bool = False,
                 extractor: str = model.DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions int64 N, CAMs float32 N×H×W in [0, 1])`` for every image of ``data``, the
    maps at the stored image size, each of the image's top predicted class (``of_labels``: of
    its labelled class, as GT-known localisation asks), from ``extractor``
    (:func:`model.localization_maps`); batched."""
    out_size = tuple(data.images.shape[-2:])
    return _batched(net, data, img_size, batch_size, of_labels,
                    lambda inputs, classes: model.localization_maps(net, inputs, out_size, form, classes, extractor))


def protocol_cams(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, protocol: str,
                  of_labels: bool = True, extractor: str = model.DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, evaluation maps N×H×W in [0, 1])`` as ``protocol`` defines them
    (:class:`Protocol`): wsolevaluation's from the raw maps (:func:`wsol_scoremaps`), of
    camlab's CAM or of another ``extractor`` (its raw map, ReLU included where it defines one)."""
    rule = _protocol(protocol)
    if rule.form != "raw":
        return dataset_cams(net, data, img_size, rule.form, of_labels=of_labels, extractor=extractor)
    preds, raw = extractor_raw(net, data, img_size, extractor, of_labels)
    return preds, wsol_scoremaps(raw, tuple(data.images.shape[-2:]))


def extractor_raw(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, extractor: str,
                  of_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, raw maps N×h×w)`` of ``extractor`` for every image of ``data`` (of its
    labelled class, or of its top prediction)."""
    with model.open_extractor(net, extractor, img_size) as maps_of:
        return _batched(net, data, img_size, 64, of_labels, maps_of)


def _batched(net: "model.CAMModel", data: "dataloader.ImageSet", img_size: int, batch_size: int,
             of_labels: bool, maps_of) -> tuple[np.ndarray, np.ndarray]:
    """``maps_of(inputs, classes) -> (scores, maps)`` over ``data`` in batches (classes: the
    labels with ``of_labels``, else None for the top prediction), one host copy at the end (the
    GPU is never waited for batch by batch). ``maps_of`` chooses its own autograd mode (the
    gradient-based extractors need one), so the inputs are made under ``no_grad``: an
    inference-mode tensor could not enter their graph."""
    preds, maps = [], []
    for idx in torch.arange(len(data), device=data.images.device).split(batch_size):
        with torch.no_grad():
            inputs = dataloader.to_model_input(data.images[idx], img_size)
        scores, cams = maps_of(inputs, data.labels[idx] if of_labels else None)
        preds.append(scores.argmax(dim=1))
        maps.append(cams.float())
    return torch.cat(preds).cpu().numpy(), torch.cat(maps).cpu().numpy()


def mask_parts(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(foreground, valid)`` of ``dataloader.Truth`` masks (uint8: 1 foreground, 0 background,
    255 ignore): bool N×H×W each; ``valid`` is None when nothing is ignored (every pixel counts)."""
    masks = np.asarray(masks)
    ignored = masks == 255
    return masks == 1, (~ignored if ignored.any() else None)


def _subset(data: "dataloader.ImageSet", n: int, seed: int = 0) -> "dataloader.ImageSet":
    if n >= len(data):
        return data
    return data.take(torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False))))


@dataclasses.dataclass
class Experiment:
    """A finished run, ready to evaluate: its best model (eval mode), settings and data root."""

    exp_id: str
    net: "model.CAMModel"
    cfg: "train.RunConfig"
    root: Path
    device: torch.device
    # (image names, extractor) -> (predictions, raw maps of the labels): another extractor's maps
    # are computed once per split, whatever reads them (Score-CAM costs a forward pass per channel);
    # (image names, "every class") -> every class's map, ("semseg fit", n) -> the threshold-choosing
    # images, masks and maps (semantic segmentation)
    _raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, exp_id: str, device: str = "auto") -> "Experiment":
        dev = resolve_device(device)
        net, ckpt = model.load_checkpoint(safe_subdir(CHECKPOINT_DIR, exp_id) / "best.pth", dev)
        cfg = train.RunConfig.from_args(ckpt["args"])
        root = cfg.data_path()
        _check_trained_on(exp_id, root)
        return cls(exp_id, net.eval(), cfg, root, dev)

    def split(self, role: str, n: int | None = None) -> "dataloader.ImageSet":
        """The split that plays ``role`` (``dataloader.split_for``: ``fit`` chooses thresholds,
        ``test`` is reported), or ``n`` images of it drawn at random (seed 0)."""
        data = dataloader.load_split(self.cfg.dataset, self.root, self._split_name(role), img_size=self.cfg.img_size,
                                     progress=False, skip_bad=self.cfg.skip_bad, metadata=self.cfg.metadata)
        return (data if n is None else _subset(data, n)).to(self.device)

    def truth(self, role: str, data: "dataloader.ImageSet") -> "dataloader.Truth | None":
        """The boxes or masks of ``data`` (the ``role`` split or a subset of it), or None."""
        return dataloader.ground_truth(self.cfg.dataset, self.root, self._split_name(role), data, self.cfg.metadata)

    def _split_name(self, role: str) -> str:
        return dataloader.split_for(self.cfg.dataset, role, self.root)

    @functools.cached_property
    def test(self) -> tuple["dataloader.ImageSet", "dataloader.Truth | None"]:
        """The test split and its ground truth, read once however many measures use them."""
        data = self.split("test")
        return data, self.truth("test", data)

    def cams(self, data: "dataloader.ImageSet", form: str = "class", of_labels: bool = False,
             extractor: str = model.DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
        """:func:`dataset_cams`; another extractor's maps come from :meth:`raw_maps` (its maps of
        the labels, and of the predictions only where they differ), in ``model.class_form``."""
        if extractor == model.DEFAULT_EXTRACTOR:
            return dataset_cams(self.net, data, self.cfg.img_size, form, of_labels=of_labels)
        model.check_extractor_form(extractor, form)
        preds, raw = self.raw_maps(data, extractor)
        wrong = np.flatnonzero(preds != data.labels.cpu().numpy())
        if not of_labels and len(wrong):
            raw = raw.copy()
            raw[wrong] = extractor_raw(self.net, data.take(torch.from_numpy(wrong)), self.cfg.img_size, extractor,
                                       of_labels=False)[1]
        return preds, model.class_form(torch.from_numpy(raw), tuple(data.images.shape[-2:])).numpy()

    def protocol_cams(self, data: "dataloader.ImageSet", protocol: str,
                      extractor: str = model.DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
        """:func:`protocol_cams` of the labels; another extractor's from :meth:`raw_maps`."""
        form = _protocol(protocol).form
        if extractor == model.DEFAULT_EXTRACTOR:
            return protocol_cams(self.net, data, self.cfg.img_size, protocol)
        if form != "raw":
            return self.cams(data, form, of_labels=True, extractor=extractor)
        preds, raw = self.raw_maps(data, extractor)
        return preds, wsol_scoremaps(raw, tuple(data.images.shape[-2:]))

    def class_maps(self, data: "dataloader.ImageSet") -> np.ndarray:
        """:func:`class_maps` of ``data``, computed once per set of images."""
        key = (tuple(data.names), "every class")
        if key not in self._raw:
            self._raw[key] = class_maps(self, data)
        return self._raw[key]

    def semseg_fit(self, n: int) -> tuple["dataloader.ImageSet", "dataloader.Truth", np.ndarray]:
        """``n`` images of the split that chooses thresholds, their class masks and class maps,
        read once however many CRF variants choose a threshold on them."""
        key = ("semseg fit", n)
        if key not in self._raw:
            data = self.split("fit", n)
            truth = self.truth("fit", data)
            if truth is None or truth.classes is None:
                raise CamlabError(f"{self.exp_id}: the split that chooses thresholds has no class masks")
            self._raw[key] = (data, truth, self.class_maps(data))
        return self._raw[key]

    def raw_maps(self, data: "dataloader.ImageSet", extractor: str) -> tuple[np.ndarray, np.ndarray]:
        """:func:`extractor_raw` of the labels, computed once per (images, extractor)."""
        key = (tuple(data.names), extractor)
        if key not in self._raw:
            self._raw[key] = extractor_raw(self.net, data, self.cfg.img_size, extractor)
        return self._raw[key]


def _check_trained_on(exp_id: str, root: Path) -> None:
    """A run is scored on the embedded benchmark it was trained on: the body-evidence setting its
    metrics.json records must be the one the data root holds (a default that changed since, or a
    data root generated again at another setting, would otherwise score it on other images)."""
    try:
        trained = json.loads((safe_subdir(CHECKPOINT_DIR, exp_id) / "metrics.json").read_text())["benchmark"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not on the embedded benchmark, or a run from before it was recorded
    held = synthetic.read_meta(root, None) or {}
    if held.get("body_evidence") != trained.get("body_evidence"):
        raise CamlabError(f"{exp_id} was trained on the embedded benchmark at body evidence "
                          f"{trained.get('body_evidence')}, but {root}, where its settings point, holds "
                          f"{held.get('body_evidence')} (the run predates recording the setting, or the folder was "
                          f"generated again); retrain it, or generate {root} at {trained.get('body_evidence')} again")


def localization_report(exp_id: str, form: str = "class", n_threshold: int = 500,
                        device: str = "auto") -> dict | None:
    """Mean IoU of ``exp_id``'s best checkpoint over the whole test set, at the threshold that
    is best on ``n_threshold`` images of the split that chooses thresholds (training masks on the
    embedded benchmark, wsolevaluation's ``val``; never test masks). None when the dataset has
    no masks on both (boxes only, or none)."""
    return _localization(Experiment.load(exp_id, device), form, n_threshold)


def _localization(exp: Experiment, form: str, n_threshold: int,
                  extractor: str = model.DEFAULT_EXTRACTOR) -> dict | None:
    if n_threshold < 1:
        raise CamlabError(f"--n_threshold must be at least 1, got {n_threshold}")
    test_set, test_truth = exp.test
    if test_truth is None or test_truth.masks is None:
        return None
    fit_set = exp.split("fit", n_threshold)
    fit_truth = exp.truth("fit", fit_set)
    if fit_truth is None or fit_truth.masks is None:
        return None
    fit_masks, fit_valid = mask_parts(fit_truth.masks)
    curve = iou_curve(exp.cams(fit_set, form, extractor=extractor)[1], fit_masks, THRESHOLD_GRID, fit_valid)
    threshold, train_iou = pick_threshold(THRESHOLD_GRID, curve)
    test_masks, test_valid = mask_parts(test_truth.masks)
    test_cams = exp.cams(test_set, form, extractor=extractor)[1]
    test_curve = iou_curve(test_cams, test_masks, THRESHOLD_GRID, test_valid)
    return {"exp_id": exp.exp_id, "cam": form, "threshold": threshold, "train_iou": train_iou,
            "test_iou": float(test_curve[THRESHOLD_GRID.index(threshold)]),
            "test_ious": batch_iou(threshold_masks(test_cams, threshold), test_masks, test_valid),
            "n_threshold_images": len(fit_set), "n_test": len(test_set),
            "curve": (np.asarray(THRESHOLD_GRID), curve), "test_curve": (np.asarray(THRESHOLD_GRID), test_curve)}


def full_test_table(reports: list[dict]) -> str:
    """Markdown: per experiment, the CAM form, the threshold chosen on training masks, the mean
    IoU there and on the whole test set at that threshold."""
    lines = ["| experiment | CAM | threshold (chosen on train masks) | train mean IoU | test mean IoU | test images |",
             "|---|---|---:|---:|---:|---:|"]
    for r in reports:
        lines.append(f"| {_md_cell(r['exp_id'])} | {r['cam']} | {r['threshold']:.2f} | {r['train_iou']:.4f} "
                     f"| {r['test_iou']:.4f} | {r['n_test']} |")
    return "\n".join(lines) + "\n"


def _experiment_form(exp_id: str, default: str) -> str:
    """The CAM form visualize.py used for ``exp_id`` (its settings.json), else ``default``."""
    path = safe_subdir(VISUALIZE_DIR, exp_id) / "settings.json"
    try:
        return json.loads(path.read_text())["cam"]
    except (OSError, ValueError, KeyError):
        return default


def whole_test_reports(experiments: Sequence[str], form: str, n_threshold: int,
                       device: str) -> list[dict]:
    """localization_report for each experiment that has a checkpoint and masked data."""
    reports = []
    for exp_id in experiments:
        if (safe_subdir(CHECKPOINT_DIR, exp_id) / "best.pth").is_file():
            report = localization_report(exp_id, _experiment_form(exp_id, form), n_threshold, device)
            if report is not None:
                reports.append(report)
    return reports


def write_full_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``iou_full.csv``, the curves in ``iou_threshold.png``; returns the markdown table."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "cam", "threshold", "train_iou", "test_iou", "n_test"])
    for r in reports:
        writer.writerow([r["exp_id"], r["cam"], f"{r['threshold']:.2f}", f"{r['train_iou']:.4f}",
                         f"{r['test_iou']:.4f}", r["n_test"]])
    atomic_write_text(Path(report_dir) / "iou_full.csv", buf.getvalue())
    visualize.plot_iou_curves({r["exp_id"]: r["curve"] for r in reports}, Path(report_dir) / "iou_threshold.png",
                              chosen={r["exp_id"]: r["threshold"] for r in reports},
                              title="mean IoU on training masks (where the threshold is chosen)")
    return full_test_table(reports)



# ------------------------------------------------------------------ methods compared (WSOL)
# methods.csv / methods.md columns: (key in a wsol_report, header)
METHOD_COLUMNS = (("test_acc", "test acc"), ("test_iou", "mean IoU"), ("pxap", "PxAP"),
                  ("max_box_acc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 loc"), ("gt_known_loc", "GT-known loc"))
# The embedded benchmark's diagnostics (only for runs on it): what the model looks at.
DIAGNOSTIC_COLUMNS = (("acc_body", "body-only acc"), ("acc_part", "part-only acc"), ("on_part", "part ≥0.5"),
                      ("on_body", "body ≥0.5"), ("on_background", "background ≥0.5"))
MAP_LEVEL = 0.5  # the diagnostics' pixel shares count pixels where the normalised map is >= this


def wsol_report(exp_id: "str | Experiment", n_threshold: int = 500, device: str = "auto",
                protocol: str = DEFAULT_PROTOCOL, extractor: str = model.DEFAULT_EXTRACTOR,
                diagnose: bool = True) -> dict | None:
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
    ``extractor`` (``model.EXTRACTORS``; camlab's CAM by default), named in ``method`` when it is
    another. ``exp_id`` may be a loaded :class:`Experiment`: its test split, ground truth and
    extractor maps are then read once for every report on it.
    """
    exp = exp_id if isinstance(exp_id, Experiment) else Experiment.load(exp_id, device)
    test_set, truth = exp.test
    if truth is None:
        return None
    report = _localization(exp, "class", n_threshold, extractor) or {"exp_id": exp.exp_id}
    preds, cams = exp.protocol_cams(test_set, protocol, extractor)
    labels = test_set.labels.cpu().numpy()
    meta = synthetic.read_meta(exp.root) if exp.cfg.dataset == "lab" else None
    per_image = {"iou": report.pop("test_ious")} if "test_ious" in report else {}
    method = _method_name(exp.cfg) + ("" if extractor == model.DEFAULT_EXTRACTOR
                                      else f" · {model.EXTRACTOR_NAMES[extractor]}")
    report.update(test_acc=float(np.mean(preds == labels)), method=method, protocol=protocol, extractor=extractor,
                  seed=exp.cfg.seed, data_root=str(exp.root.resolve()), metadata=exp.cfg.metadata, n_test=len(test_set),
                  body_evidence=(meta or {}).get("body_evidence"))
    masks = None
    if truth.masks is not None:
        masks, valid = mask_parts(truth.masks)
        fg, bg = pixel_histograms(cams, masks, valid=valid)
        report.update(pxap=pxap_from_histograms(fg.sum(0), bg.sum(0)),
                      mean_mask_area=float(masks.mean() if valid is None else masks[valid].mean()))
        per_image.update(fg=fg, bg=bg)
    boxes, metadata_boxes = truth.boxes, truth.boxes is not None
    if boxes is None and masks is not None and exp.cfg.dataset != "wsol":  # wsolevaluation scores OpenImages by PxAP alone
        boxes = [[box] if (box := mask_box(m, protocol)) is not None else [] for m in masks]
    if boxes is not None:
        report.update(max_box_acc_v2=max_box_acc(cams, boxes, protocol=protocol)["mean"],
                      **localization_accuracy(cams, preds, labels, boxes, protocol=protocol))
    report["per_image"] = per_image
    if meta is not None and meta.get("version") == synthetic.SYNTHETIC_VERSION and masks is not None:
        report.update(diagnostics(exp, cams, masks, meta, with_accuracy=diagnose))
    report["examples"] = _examples(test_set, cams, boxes or [[]] * len(test_set), protocol, metadata_boxes)
    return report


def _method_name(cfg: "train.RunConfig") -> str:
    """How a run's method reads in a table: CAM, SEG rotate+hflip, ACoL pn δ=0.9, CSE."""
    if cfg.mode == "SEG":
        return f"SEG {cfg.transform}"
    if cfg.mode == "ACOL":
        head = cfg.acol_head if cfg.acol_head != "conv" or cfg.acol_width == model.ACOL_WIDTH \
            else f"conv{cfg.acol_width}"
        grow = f" grow {cfg.acol_grow}" if cfg.acol_grow else ""
        return f"ACoL {cfg.recipe} {head} δ={','.join(f'{d:g}' for d in cfg.delta)}{grow}"
    if cfg.mode == "CSE":
        return f"CSE (area weight {cfg.area_weight:g})"
    return cfg.mode


def _examples(data: "dataloader.ImageSet", cams: np.ndarray, boxes: list, protocol: str,
              inclusive_truth: bool = False, n: int = 8) -> list[dict]:
    """The first ``n`` test images with their maps, the protocol's 20% box and the (first)
    ground-truth box, both inclusive for drawing, for the report figure. Boxes found by the
    protocol take its ends; ``inclusive_truth``: the ground truth's are inclusive already (wsol's
    metadata boxes)."""
    rule = _protocol(protocol)

    def drawn(found: np.ndarray | list, ends=rule.inclusive) -> Box | None:
        return ends(found[0]) if len(found) else None

    def as_given(box: Sequence[int]) -> Box:
        return int(box[0]), int(box[1]), int(box[2]), int(box[3])
    return [{"image": data.images[i].permute(1, 2, 0).cpu().numpy(), "cam": cams[i],
             "box": drawn(rule.box_at(cams[i], BOX_FRACTION)),
             "gt_box": drawn(boxes[i], as_given if inclusive_truth else rule.inclusive), "name": data.names[i]}
            for i in range(min(n, len(data)))]


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
        data = dataloader.ImageSet(torch.from_numpy(images.copy()).permute(0, 3, 1, 2).contiguous(),
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


def head_maps(net: "model.CAMModel", data: "dataloader.ImageSet",
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
            maps.append([model.minmax(torch.nn.functional.interpolate(
                model.select_class(out.cams, labels).unsqueeze(1).float(), size=out_size,
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


# ----------------------------------------------------------------------- tables over seeds
def finished_experiments(checkpoint_dir: Path = CHECKPOINT_DIR) -> list[str]:
    """The exp_ids under ``checkpoints/`` with a best checkpoint (k-fold runs keep theirs per fold
    and are left out), sorted."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(d.name for d in checkpoint_dir.iterdir() if (d / "best.pth").is_file())


def _cell(report: dict, key: str) -> str:
    value = report.get(key)
    return "-" if value is None or value != value else f"{value:.4f}"


def methods_table(reports: list[dict]) -> tuple[str, str]:
    """(csv, markdown): one row per run, its exp_id, method and seed first, then the measures of
    METHOD_COLUMNS and the diagnostics of DIAGNOSTIC_COLUMNS ("-" off the embedded benchmark)."""
    columns = METHOD_COLUMNS + DIAGNOSTIC_COLUMNS
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "method", "seed", "body_evidence"] + [key for key, _ in columns])
    lines = ["| experiment | method | seed | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|---:|" + "---:|" * len(columns)]
    for r in reports:
        values = [_cell(r, key) for key, _ in columns]
        writer.writerow([r["exp_id"], r["method"], r["seed"], r.get("body_evidence", "")] + values)
        lines.append(f"| {_md_cell(r['exp_id'])} | {_md_cell(r['method'])} | {r['seed']} | " + " | ".join(values) + " |")
    return buf.getvalue(), "\n".join(lines) + "\n"


def _reference(report: dict, reports: list[dict]) -> dict | None:
    """The plain CAM run that ``report`` is paired with: same test set (data root) and seed."""
    return next((r for r in reports if r["method"] == "CAM" and r["seed"] == report["seed"]
                 and r["data_root"] == report["data_root"] and r.get("metadata") == report.get("metadata")), None)


def versus_cam(report: dict, cam: dict, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, tuple[float, float, float]]:
    """The paired per-image bootstrap (:func:`iou.paired_bootstrap`) of ``report`` minus the CAM
    run ``cam`` on the same test images: mean IoU and PxAP, each (difference, low, high)."""
    a, b = report["per_image"], cam["per_image"]
    if report["n_test"] != cam["n_test"]:
        raise CamlabError(f"{report['exp_id']} and {cam['exp_id']} were scored on different test sets")
    n, found = report["n_test"], {}
    if "iou" in a and "iou" in b:
        found["iou"] = paired_bootstrap(mean_statistic(a["iou"]), mean_statistic(b["iou"]), n, resamples)
    if "fg" in a and "fg" in b:
        found["pxap"] = paired_bootstrap(pxap_statistic(a["fg"], a["bg"]), pxap_statistic(b["fg"], b["bg"]), n,
                                         resamples)
    return found


def _verdict(intervals: list[tuple[float, float, float]]) -> str:
    """"better" / "worse" when every seed's interval lies above / below 0, else "no clear difference"."""
    if intervals and all(low > 0 for _, low, _ in intervals):
        return "better"
    if intervals and all(high < 0 for _, _, high in intervals):
        return "worse"
    return "no clear difference"


def summary_table(reports: list[dict]) -> str:
    """Markdown: one row per (dataset, method), each measure as mean ± std over its seeds, and
    per seed the paired bootstrap 95% interval of its mean IoU and PxAP minus the same seed's
    plain CAM; the verdict counts only where every seed's interval excludes 0."""
    groups: dict[tuple, list[dict]] = {}
    for r in reports:
        groups.setdefault((r["data_root"], r.get("metadata"), r.get("body_evidence"), r["method"]), []).append(r)
    keys = [("test_iou", "mean IoU"), ("pxap", "PxAP"), ("max_box_acc_v2", "MaxBoxAccV2"),
            ("acc_body", "body-only acc"), ("on_body", "body ≥0.5"), ("on_background", "background ≥0.5")]
    lines = ["| body evidence | method | seeds | " + " | ".join(h for _, h in keys)
             + " | ΔIoU vs CAM, 95% CI per seed | ΔPxAP vs CAM, 95% CI per seed | beats CAM? |",
             "|---:|---|---|" + "---:|" * len(keys) + "---|---|---|"]
    for (_, _, dial, method), group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        cells = []
        for key, _ in keys:
            values = np.array([r.get(key, np.nan) for r in group], dtype=np.float64)
            cells.append("-" if np.isnan(values).all() else
                         f"{np.nanmean(values):.4f} ± {np.nanstd(values, ddof=1) if len(values) > 1 else 0:.4f}")
        iou_ci, pxap_ci = [], []
        for r in group:
            cam = _reference(r, reports)
            if cam is not None and cam is not r:
                found = versus_cam(r, cam)
                iou_ci += [found["iou"]] if "iou" in found else []
                pxap_ci += [found["pxap"]] if "pxap" in found else []
        iou_text = "; ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in iou_ci) or "-"
        pxap_text = "; ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in pxap_ci) or "-"
        verdict = "; ".join(f"{what}: {_verdict(ci)}" for what, ci in (("IoU", iou_ci), ("PxAP", pxap_ci)) if ci) or "-"
        dial_text = "-" if dial is None else f"{dial:g}"
        lines.append(f"| {dial_text} | {_md_cell(method)} | {', '.join(str(r['seed']) for r in group)} | "
                     + " | ".join(cells) + f" | {iou_text} | {pxap_text} | {verdict} |")
    return "\n".join(lines) + "\n"


def heads_table(reports: list[dict]) -> str:
    """Markdown: for runs with several ``p`` heads (ACoL), where each head's map is >= 0.5."""
    rows = [r for r in reports if r.get("heads")]
    if not rows:
        return ""
    lines = ["| experiment | head | accuracy (head 2: on erased features) | part ≥0.5 | body ≥0.5 | background ≥0.5 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for i, shares in enumerate(r["heads"], start=1):
            lines.append(f"| {_md_cell(r['exp_id'])} | {i} | {shares['acc']:.4f} | {shares['on_part']:.4f} "
                         f"| {shares['on_body']:.4f} | {shares['on_background']:.4f} |")
    return "\n".join(lines) + "\n"


def write_methods_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``methods.csv``, ``methods.md`` (the summary over seeds with intervals, then every run
    with its diagnostics) and the figure ``methods_grid.png`` (the first seed's runs); returns
    the markdown."""
    if not reports:
        raise CamlabError(f"no experiment under {CHECKPOINT_DIR}/ has a best.pth on a dataset with "
                          f"boxes or masks; train one first (python main.py --mode CAM)")
    protocols = sorted({r["protocol"] for r in reports})
    seeds = sorted({r["seed"] for r in reports})
    extractors = sorted({model.EXTRACTOR_NAMES[r.get("extractor", "cam")] for r in reports})
    note = (f"Protocol: {', '.join(protocols)} (iou.py --protocol); maps: {', '.join(extractors)}. Mean IoU at each "
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
    return _write_comparison(reports, Path(report_dir), "methods", note, "Every run",
                             f"\n### Each ACoL head's map\n\n{heads}" if heads else "", lambda r: r["exp_id"])


def _write_comparison(reports: list[dict], report_dir: Path, stem: str, note: str, rows_heading: str, extra: str,
                      row_label, title: str = "") -> str:
    """``<stem>.csv`` (every report), ``<stem>.md`` (``note``, the summary over seeds with
    intervals against CAM, every report, ``extra``) and ``<stem>_grid.png`` (the first seed's
    reports, one row each, labelled ``row_label(report)``); returns the markdown."""
    csv_text, md = methods_table(reports)
    text = note + summary_table(reports) + f"\n### {rows_heading}\n\n" + md + extra
    atomic_write_text(report_dir / f"{stem}.csv", csv_text)
    atomic_write_text(report_dir / f"{stem}.md", text)
    first_seed = min(r["seed"] for r in reports)
    first = [r for r in reports if r["seed"] == first_seed]
    visualize.plot_methods({row_label(r): r["examples"] for r in first}, report_dir / f"{stem}_grid.png", title)
    return text


# ------------------------------------------------------------------------------- ablation
# (name, settings over the base run): the comparison of handout section 3.5, one seed for all.
ABLATION: tuple[tuple[str, dict], ...] = (
    ("cam", dict(mode="CAM")), ("seg_scale", dict(mode="SEG", transform="scale")),
    ("seg_rotate", dict(mode="SEG", transform="rotate")), ("seg_hflip", dict(mode="SEG", transform="hflip")),
    ("seg_rotate_hflip", dict(mode="SEG", transform="rotate+hflip")))
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


def _runs(base: "train.RunConfig", prefix: str, table: tuple[tuple[str, dict], ...],
          form: str, suffix: str = "") -> list["train.RunConfig"]:
    """The configs of ``table``'s runs: ``<prefix>_<name><suffix>``, ``form`` as SEG's
    regularised CAM ("{prefix}" and "{suffix}" in a setting are filled in)."""
    return [dataclasses.replace(base, exp_id=f"{prefix}_{name}{suffix}", cam=form,
                                **{k: (v.format(prefix=prefix, suffix=suffix) if isinstance(v, str) else v)
                                   for k, v in settings.items()})
            for name, settings in table]


def _trained(cfg: "train.RunConfig") -> dict:
    """The run's metrics: reused when ``checkpoints/<exp_id>`` holds a finished run with the
    same settings (so an interrupted ablation continues where it stopped), trained otherwise (a
    run interrupted before its metrics.json is retrained); other settings there are an error."""
    path = cfg.run_dir() / "metrics.json"
    if not path.is_file():  # never trained, or interrupted before it finished: (re)train it
        return train.train(dataclasses.replace(cfg, overwrite=True))
    metrics = json.loads(path.read_text())
    differ = train.differing(cfg, metrics.get("args", {}))
    if differ:
        raise CamlabError(f"{cfg.run_dir()} holds a run with other settings ({', '.join(differ)}); "
                          f"move it away or use another --prefix")
    print(f"reusing {cfg.run_dir()} (same settings)")
    return metrics


def run_ablation(base: "train.RunConfig", prefix: str = "ablation", form: str = "class",
                 n_threshold: int = 500) -> str:
    """Train (or reuse) every ABLATION run under one seed, with ``form`` as the CAM that SEG's
    loss regularises and that every run is scored on; visualise the ten images at one shared
    threshold (the CAM run's, chosen on training masks) and tabulate accuracy, ten-image mean
    IoU and whole-test mean IoU (at the shared threshold, and at each run's own threshold
    chosen on training masks) into ``report/ablation.md``."""
    rows, shared = [], None
    for cfg in _runs(base, prefix, ABLATION, form):
        metrics = _trained(cfg)
        full = localization_report(cfg.exp_id, form, n_threshold, cfg.device)
        shared = shared if shared is not None else (full["threshold"] if full else DEFAULT_THRESHOLD)
        if full:
            full["shared_iou"] = float(full["test_curve"][1][THRESHOLD_GRID.index(shared)])
        out = visualize.visualize_run(cfg.exp_id, shared, form, cfg.data_root, cfg.device)
        settings = json.loads((out / "settings.json").read_text())
        ten = iou_table(out, Path(settings["data_root"]) / "test_seg")
        rows.append({"run": cfg.exp_id, "mode": cfg.mode, "transform": "-" if cfg.mode == "CAM" else cfg.transform,
                     "test_acc": metrics["test_acc"], "weights": metrics["weights"], "ten": float(np.mean(list(ten.values()))),
                     "full": full})
    table = ablation_table(rows, base, form, shared)
    atomic_write_text(REPORT_DIR / "ablation.md", table)
    return table


def method_reports(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                   protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,)) -> list[dict]:
    """Train (or reuse) every METHODS run at every seed (``<prefix>_<name>_s<seed>``), then
    score each with :func:`wsol_report`."""
    configs = [cfg for seed in seeds
               for cfg in _runs(dataclasses.replace(base, seed=seed), prefix, METHODS, "class", f"_s{seed}")]
    for cfg in configs:
        _trained(cfg)
    reports = [wsol_report(cfg.exp_id, n_threshold, cfg.device, protocol) for cfg in configs]
    return [r for r in reports if r is not None]


def run_methods(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,)) -> str:
    """:func:`method_reports` into ``report/methods.{csv,md}`` and ``report/methods_grid.png``."""
    return write_methods_report(method_reports(base, prefix, n_threshold, protocol, seeds))



# ---------------------------------------------------------------------- extractors compared
def extractor_reports(base: "train.RunConfig", prefix: str = "methods", n_threshold: int = 500,
                      protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,),
                      extractors: Sequence[str] = tuple(model.EXTRACTORS)) -> list[dict]:
    """Every extractor on the plain CAM run of the methods comparison at each seed
    (``<prefix>_cam_s<seed>``, trained when missing): one :func:`wsol_report` per (seed,
    extractor), its ``method`` the extractor's name, so that the methods tables and their
    intervals (each against camlab's CAM on the same model) apply unchanged. The body-only and
    part-only accuracies are the model's, whatever reads its maps: measured once per seed."""
    reports = []
    for seed in seeds:
        cfg = _runs(dataclasses.replace(base, seed=seed), prefix, METHODS[:1], "class", f"_s{seed}")[0]
        _trained(cfg)
        exp = Experiment.load(cfg.exp_id, cfg.device)  # one model, test split and masks for every extractor
        model_measures: dict = {}
        for name in dict.fromkeys(("cam", *extractors)):  # CAM first: every other is compared with it
            report = wsol_report(exp, n_threshold, cfg.device, protocol, extractor=name, diagnose=name == "cam")
            if report is None:
                continue
            if name == "cam":
                model_measures = {k: v for k, v in report.items() if k.startswith("acc_")}
            report.update({**model_measures, "method": model.EXTRACTOR_NAMES[name]})
            reports.append(report)
    return reports


def write_extractors_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``extractors.csv``, ``extractors.md`` (the summary over seeds with intervals against CAM,
    then every (run, extractor)) and ``extractors_grid.png`` (rows: extractors; columns: the
    first test images of the first seed's model); returns the markdown."""
    if not reports:
        raise CamlabError("no CAM run with masks to compare extractors on; train one first (python main.py --mode CAM)")
    seeds = sorted({r["seed"] for r in reports})
    runs = sorted({r["exp_id"] for r in reports})
    note = (f"Extractors on one trained CAM model per seed ({', '.join(runs)}), protocol {reports[0]['protocol']}: "
            f"each extractor's map of the labelled class (PxAP, MaxBoxAccV2, localisation) and of the predicted class "
            f"(mean IoU at the threshold chosen on training masks, per extractor); {reports[0]['n_test']} test images. "
            f"Seeds {', '.join(map(str, seeds))}: mean ± sample std; intervals are paired bootstraps "
            f"({BOOTSTRAP_RESAMPLES} resamples) of each extractor minus camlab's CAM on the same model and images; "
            f"\"better\" only where every seed's interval lies above 0. Body-only accuracy is the model's "
            f"(the same for every extractor).\n\n")
    return _write_comparison(reports, Path(report_dir), "extractors", note, "Every run and extractor", "",
                             lambda r: r["method"], title=f"{runs[0]}: each extractor's map of the labelled class; "
                                                          f"boxes: 20% rule (red), ground truth (green)")


def sweep_prefix(prefix: str, value: float) -> str:
    """The runs of a sweep point: the methods comparison's own runs at the default setting
    (reused, not trained again), ``<prefix>_be<value>_...`` at any other."""
    return prefix if value == synthetic.BODY_EVIDENCE else f"{prefix}_be{value:g}"


def run_sweep(base: "train.RunConfig", values: Sequence[float], prefix: str = "methods",
              n_threshold: int = 500, protocol: str = DEFAULT_PROTOCOL, seeds: Sequence[int] = (0,),
              report_dir: Path = REPORT_DIR) -> str:
    """Every method at every body-evidence setting in ``values`` (each its own embedded
    dataset, generated on first use) into ``report/sweep.{csv,md}`` and ``sweep.png``: mean IoU
    and PxAP against the setting, one line per method, mean over seeds with the seeds' spread."""
    reports = []
    for value in values:
        cfg = dataclasses.replace(base, body_evidence=float(value), data_root=None)
        reports += method_reports(cfg, sweep_prefix(prefix, value), n_threshold, protocol, seeds)
    csv_text, _ = methods_table(reports)
    atomic_write_text(Path(report_dir) / "sweep.csv", csv_text)
    curves: dict[str, dict[str, list]] = {}
    for r in reports:
        curve = curves.setdefault(r["method"], {})
        curve.setdefault(r["body_evidence"], []).append(r)
    series = {method: {key: [(dial, [x[key] for x in rs]) for dial, rs in sorted(points.items())]
                       for key in ("test_iou", "pxap", "acc_body")}
              for method, points in curves.items()}
    visualize.plot_sweep(series, Path(report_dir) / "sweep.png",
                         title=f"the body-evidence sweep ({protocol} protocol; seeds {', '.join(map(str, seeds))})")
    text = (f"Body-evidence sweep: every method at each setting of the embedded benchmark's dial (the share of "
            f"bodies whose stripes carry their class's period and hue); protocol {protocol}; seeds "
            f"{', '.join(map(str, seeds))}; intervals as in methods.md.\n\n" + summary_table(reports))
    atomic_write_text(Path(report_dir) / "sweep.md", text)
    return text


def ablation_table(rows: list[dict], base: "train.RunConfig", form: str, shared: float) -> str:
    """Markdown for report/ablation.md: the settings, then one row per run."""
    used = ", ".join(sorted({r["weights"] for r in rows}))
    head = (f"Settings: seed {base.seed}, {base.epochs} epochs, img_size {base.img_size}, batch {base.batch_size}, "
            f"lr {base.lr}, weights {base.weights} (used: {used}), ser_weight {base.ser_weight}; the {form} CAM is both "
            f"what SEG's L_ser regularises and what every run is scored on. Shared threshold {shared:.2f}: "
            f"the CAM run's best on training masks. Own threshold: each run's best on training masks. "
            f"Test masks choose nothing.\n\n")
    lines = ["| run | mode | transform | test acc | ten-image mean IoU (shared thr.) "
             "| whole-test mean IoU (shared thr.) | whole-test mean IoU (own thr.) | own thr. |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        full = r["full"]
        cells = ([f"{full['shared_iou']:.4f}", f"{full['test_iou']:.4f}", f"{full['threshold']:.2f}"]
                 if full else ["-", "-", "-"])
        lines.append(f"| {r['run']} | {r['mode']} | {_md_cell(r['transform'])} | {r['test_acc']:.4f} "
                     f"| {r['ten']:.4f} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


# ------------------------------------------------------- semantic segmentation (several labels)
def class_maps(exp: Experiment, data: "dataloader.ImageSet", batch_size: int = 64) -> np.ndarray:
    """float32 N×K×H×W in [0, 1]: every class's map (``CAMModel.every_class_cam``, ACoL's heads
    erasing by the present classes) upsampled bilinearly to the stored frame, then ReLU'd and
    divided by its own maximum (OC-CSE's and SSENet's normalisation), per image and class. The
    maps of absent classes are computed too; :func:`iou.segment` reads only the present ones."""
    out_size, net, maps = tuple(data.images.shape[-2:]), exp.net, []
    present = _present(data)
    with torch.inference_mode():
        for idx in torch.arange(len(data), device=data.images.device).split(batch_size):
            inputs = dataloader.to_model_input(data.images[idx], exp.cfg.img_size)
            cams = net.every_class_cam(net.forward_features(inputs), present[idx].to(inputs.device).float())
            cams = torch.nn.functional.interpolate(cams.float(), size=out_size, mode="bilinear", align_corners=False)
            maps.append(model.normalize_cam(cams.flatten(0, 1)).clamp(0, 1).view_as(cams).cpu())
    return torch.cat(maps).numpy()


def _present(data: "dataloader.ImageSet") -> torch.Tensor:
    if data.present is None:
        raise CamlabError("semantic segmentation needs every class present in an image (--dataset multi or voc)")
    return data.present


# --crf variant -> how the tables name it (None: no CRF)
CRF_NAMES = {None: "no", "affinitynet": "AffinityNet's (px)", "scaled": "scaled to the image"}


def semseg_report(exp: "str | Experiment", n_threshold: int = 500, crf: str | None = None, device: str = "auto",
                  n_examples: int = 6) -> dict:
    """Semantic segmentation of ``exp``'s test split from its class maps and the images' labels
    (the classes present, as weakly supervised segmentation scores pseudo-masks): a label map by
    a background threshold (:func:`iou.segment`; with ``crf``, a variant of ``iou.CRF_VARIANTS``,
    after dense CRF), the threshold
    chosen on ``n_threshold`` images of the split that chooses (training masks; never test), then
    the VOC protocol's confusion matrix over the test split (255 ignored): mIoU over background
    and classes, per-class IoU, and the per-image confusions the paired bootstrap resamples."""
    exp = exp if isinstance(exp, Experiment) else Experiment.load(exp, device)
    if n_threshold < 1:
        raise CamlabError(f"--n_threshold must be at least 1, got {n_threshold}")
    test_set, truth = exp.test
    if truth is None or truth.classes is None:
        raise CamlabError(f"{exp.exp_id}: its test split has no class masks (--dataset multi or voc)")
    fit_set, fit_truth, fit_maps = exp.semseg_fit(n_threshold)
    grid = CRF_THRESHOLD_GRID if crf else THRESHOLD_GRID
    fit_images = _rgb(fit_set) if crf else None
    threshold, fit_miou = choose_background_threshold(fit_maps, _present(fit_set).cpu().numpy(),
                                                      fit_truth.classes, grid, fit_images, crf or "affinitynet")
    present = _present(test_set).cpu().numpy()
    maps, images = exp.class_maps(test_set), _rgb(test_set)
    labels = segment(maps, present, threshold, images if crf else None, crf or "affinitynet")
    num_classes = len(test_set.classes) + 1
    confusions = image_confusions(labels, truth.classes, num_classes)
    pooled = confusions.sum(axis=0)
    ious = class_ious(pooled)
    cfg = exp.cfg
    metrics = json.loads((safe_subdir(CHECKPOINT_DIR, exp.exp_id) / "metrics.json").read_text())
    return {**{k: metrics.get(k) for k in ("test_acc", "test_map", "test_f1")},
            "exp_id": exp.exp_id, "method": semseg_method(cfg), "crf": crf, "seed": cfg.seed,
            "multi_label": cfg.multi_label, "threshold": threshold, "fit_miou": fit_miou,
            "miou": float(np.nanmean(ious)), "class_ious": ious.tolist(), "classes": ["background", *test_set.classes],
            **error_shares(pooled),
            "n_test": len(test_set), "n_threshold_images": len(fit_set), "data_root": str(exp.root.resolve()),
            "per_image": {"confusions": confusions},
            "examples": {"images": images[:n_examples], "truth": truth.classes[:n_examples],
                         "labels": labels[:n_examples], "names": test_set.names[:n_examples]}}


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


def _rgb(data: "dataloader.ImageSet") -> np.ndarray:
    return data.images.permute(0, 2, 3, 1).cpu().numpy()


def semseg_method(cfg: "train.RunConfig") -> str:
    """How a run reads in the segmentation table: its method and its label form."""
    name = {"CSE": "OC-CSE" if cfg.multi_label else "CSE"}.get(cfg.mode, _method_name(cfg))
    return f"{name} ({'multi-label' if cfg.multi_label else 'single-label'})"


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


def semseg_reports(base: "train.RunConfig", prefix: str = "semseg", n_threshold: int = 500,
                   seeds: Sequence[int] = (0,), crf: Sequence[str | None] = (None, *CRF_VARIANTS)) -> list[dict]:
    """Train (or reuse) every SEMSEG run at every seed on ``base``'s dataset (the multi-object
    set by default), then score each without and with dense CRF."""
    configs = [cfg for seed in seeds
               for cfg in _runs(dataclasses.replace(base, seed=seed), prefix, SEMSEG, "class", f"_s{seed}")]
    reports = []
    for cfg in configs:
        _trained(cfg)
        reports += semseg_variants(Experiment.load(cfg.exp_id, cfg.device), n_threshold, crf)
    return reports


def semseg_variants(exp: Experiment, n_threshold: int, crf: Sequence[str | None]) -> list[dict]:
    """:func:`semseg_report` of ``exp`` under each CRF setting of ``crf`` (None: without CRF),
    each mIoU printed as it is found."""
    reports = []
    for refine in crf:
        report = semseg_report(exp, n_threshold, refine)
        reports.append(report)
        print(f"{exp.exp_id}{f' + CRF {refine}' if refine else ''}: mIoU {report['miou']:.4f} "
              f"(background threshold {report['threshold']:.2f})", file=sys.stderr)
    return reports


def _semseg_reference(report: dict, reports: list[dict]) -> dict | None:
    """The CAM run of ``report``'s label form, seed, test set and CRF setting."""
    return next((r for r in reports if r["method"].startswith("CAM (") and r["multi_label"] == report["multi_label"]
                 and r["seed"] == report["seed"] and r["crf"] == report["crf"]
                 and r["data_root"] == report["data_root"]), None)


def _without_crf(report: dict, reports: list[dict]) -> dict | None:
    """The same run scored without CRF (None for a report without CRF)."""
    return next((r for r in reports if r["exp_id"] == report["exp_id"] and not r["crf"]), None) if report["crf"] else None


def _miou_interval(a: dict, b: dict) -> tuple[float, float, float]:
    if a["n_test"] != b["n_test"]:
        raise CamlabError(f"{a['exp_id']} and {b['exp_id']} were scored on different test sets")
    return paired_bootstrap(miou_statistic(a["per_image"]["confusions"]), miou_statistic(b["per_image"]["confusions"]),
                            a["n_test"], BOOTSTRAP_RESAMPLES)


def semseg_tables(reports: list[dict]) -> tuple[str, str]:
    """(csv of every report with its per-class IoUs, markdown summary over seeds): mIoU mean ±
    std, per seed the paired bootstrap interval against the same label form's CAM (same CRF
    setting) and, with CRF, against the same run without it."""
    classes = reports[0]["classes"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "method", "crf", "seed", "threshold", "fit_miou", "miou", "test_acc", "test_map",
                     "test_f1"] + [key for key, _ in ERROR_COLUMNS] + [f"iou_{c}" for c in classes])
    for r in reports:
        writer.writerow([r["exp_id"], r["method"], r["crf"] or "none", r["seed"], f"{r['threshold']:.2f}",
                         f"{r['fit_miou']:.4f}", f"{r['miou']:.4f}"]
                        + [_cell(r, k) for k in ("test_acc", "test_map", "test_f1")]
                        + [f"{r[key]:.4f}" for key, _ in ERROR_COLUMNS]
                        + ["-" if v != v else f"{v:.4f}" for v in r["class_ious"]])
    groups = _by_method_and_crf(reports)
    lines = ["| method | CRF | seeds | mIoU | background thr. | classification (mAP / top-1) "
             "| ΔmIoU vs CAM of its label form, 95% CI per seed | vs CAM | ΔmIoU from CRF, 95% CI per seed | CRF helps? |",
             "|---|---|---|---:|---|---:|---|---|---|---|"]
    for (method, crf), group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        mious = np.array([r["miou"] for r in group])
        spread = mious.std(ddof=1) if len(mious) > 1 else 0.0
        versus = [_miou_interval(r, cam) for r in group
                  if (cam := _semseg_reference(r, reports)) is not None and cam["exp_id"] != r["exp_id"]]
        from_crf = [_miou_interval(r, plain) for r in group if (plain := _without_crf(r, reports)) is not None]
        key = "test_map" if group[0]["multi_label"] else "test_acc"
        accuracy = [r.get(key) for r in group if r.get(key) is not None]
        thresholds = ", ".join(f"{r['threshold']:.2f}" for r in group)
        lines.append(f"| {_md_cell(method)} | {CRF_NAMES[crf]} | {', '.join(str(r['seed']) for r in group)} "
                     f"| {mious.mean():.4f} ± {spread:.4f} | {thresholds} "
                     f"| {np.mean(accuracy):.4f} | {_intervals(versus)} | {_verdict(versus) if versus else '-'} "
                     f"| {_intervals(from_crf)} | {_verdict(from_crf) if from_crf else '-'} |")
    return buf.getvalue(), "\n".join(lines) + "\n"


def _by_method_and_crf(reports: list[dict]) -> dict[tuple, list[dict]]:
    """The reports grouped by (method, CRF variant), in their order: one row of each table."""
    groups: dict[tuple, list[dict]] = {}
    for r in reports:
        groups.setdefault((r["method"], r["crf"]), []).append(r)
    return groups


def _semseg_row(report: dict) -> str:
    crf = report["crf"]
    return report["method"] + (f" + CRF {CRF_NAMES[crf]}" if crf else "")


def _intervals(found: list[tuple[float, float, float]]) -> str:
    return "; ".join(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in found) or "-"


def errors_table(reports: list[dict]) -> str:
    """Markdown: per (method, CRF), the error shares of :func:`error_shares`, mean over seeds."""
    lines = ["| method | CRF | " + " | ".join(h for _, h in ERROR_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(ERROR_COLUMNS)]
    groups = _by_method_and_crf(reports)
    for (method, crf), group in groups.items():
        cells = [f"{np.mean([r[key] for r in group]):.4f}" for key, _ in ERROR_COLUMNS]
        lines.append(f"| {_md_cell(method)} | {CRF_NAMES[crf]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def class_table(reports: list[dict]) -> str:
    """Markdown: per (method, CRF), each class's IoU, mean over seeds."""
    classes = reports[0]["classes"]
    lines = ["| method | CRF | " + " | ".join(_md_cell(c) for c in classes) + " |",
             "|---|---|" + "---:|" * len(classes)]
    groups = _by_method_and_crf(reports)
    for (method, crf), group in groups.items():
        with warnings.catch_warnings():  # a class in no test image and never predicted: NaN at every seed
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(np.array([r["class_ious"] for r in group], np.float64), axis=0)
        lines.append(f"| {_md_cell(method)} | {CRF_NAMES[crf]} | "
                     + " | ".join("-" if v != v else f"{v:.3f}" for v in means) + " |")
    return "\n".join(lines) + "\n"


def write_semseg_report(reports: list[dict], report_dir: Path = REPORT_DIR) -> str:
    """``semseg.csv``, ``semseg.md`` (the summary over seeds with intervals, then per-class IoU)
    and ``semseg.png`` (the first seed's label maps, colour-coded); returns the markdown."""
    if not reports:
        raise CamlabError("no run to score; train one on --dataset multi first")
    seeds = sorted({r["seed"] for r in reports})
    csv_text, summary = semseg_tables(reports)
    first = reports[0]
    note = (f"Semantic segmentation of the {first['n_test']} test images from each run's class maps and the "
            f"images' labels: each pixel takes the argmax of the background score (a threshold) and the present "
            f"classes' maps (ReLU, divided by the max); with CRF, the argmax of the dense CRF on those scores, with "
            f"AffinityNet's pairwise settings as they are (in pixels of ~500 px VOC images) or with their spatial "
            f"widths scaled to the image (x {max(first['examples']['images'].shape[1:3])}/{CRF_REFERENCE_SIDE}). The "
            f"threshold is chosen on {first['n_threshold_images']} training "
            f"images' masks ({len(THRESHOLD_GRID)} values from 0.05 to 0.95, or every other one with CRF); test masks "
            f"choose nothing. mIoU over background and {len(first['classes']) - 1} classes from one confusion matrix "
            f"over the split (the VOC protocol; 255 ignored). Seeds {', '.join(map(str, seeds))}: mean ± sample std. "
            f"Intervals: paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of the test images, the same resample for "
            f"both runs, the confusion matrices pooled per resample; 95% percentile) of the run minus the CAM of its "
            f"label form and seed at the same CRF setting, and of the run with CRF minus itself without; \"better\" "
            f"only where every seed's interval lies above 0. Classification: test mAP for multi-label runs, top-1 "
            f"accuracy (of the largest class) for single-label ones.\n\n")
    text = (note + summary + "\n### Where the errors are (pooled over the test split, mean over seeds)\n\n"
            + errors_table(reports) + "\n### IoU per class (mean over seeds)\n\n" + class_table(reports))
    report_dir = Path(report_dir)
    atomic_write_text(report_dir / "semseg.csv", csv_text)
    atomic_write_text(report_dir / "semseg.md", text)
    first_seed = [r for r in reports if r["seed"] == seeds[0]]
    visualize.plot_label_maps({_semseg_row(r): r["examples"]["labels"]
                               for r in first_seed}, first["examples"], first["classes"], report_dir / "semseg.png",
                              title=f"label maps, seed {seeds[0]} (black: background)")
    return text


# ---------------------------------------------------------------------------- the commands
def _prefix(args, default: str) -> str:
    """The runs' prefix: ``--prefix`` or ``default``; on the generated embedded benchmark at a
    setting other than the default, ``<prefix>_be<setting>`` (:func:`sweep_prefix`), so that runs
    at different settings never share a name."""
    prefix = args.prefix or default
    if args.data_root is None and args.body_evidence is not None:
        return sweep_prefix(prefix, args.body_evidence)
    return prefix


def _base_run(args, dataset: str = "lab") -> "train.RunConfig":
    return train.RunConfig(epochs=args.epochs, img_size=args.img_size, seed=args.seed,
                           batch_size=args.batch_size, weights=args.weights, data_root=args.data_root,
                           device=args.device, body_evidence=args.body_evidence, dataset=dataset).checked()


def _timed(what: str, work) -> str:
    start = time.perf_counter()
    text = work()
    print(f"{what}: {(time.perf_counter() - start) / 60:.1f} min wall time (training, or reusing, and scoring)",
          file=sys.stderr)
    return text


def ablation_command(args) -> None:
    """``python iou.py --ablation``."""
    print(run_ablation(_base_run(args), _prefix(args, "ablation"), args.cam, args.n_threshold), end="")


def methods_command(args) -> None:
    """``python iou.py --methods [--seeds ...]``."""
    seeds = args.seeds or [args.seed]
    print(_timed("methods", lambda: run_methods(_base_run(args), _prefix(args, "methods"), args.n_threshold,
                                                args.protocol, seeds)), end="")


def sweep_command(args) -> None:
    """``python iou.py --sweep body_evidence 0 0.25 ...``."""
    seeds = args.seeds or [args.seed]
    values = args.sweep_values
    print(_timed("sweep", lambda: run_sweep(_base_run(args), values, args.prefix or "methods", args.n_threshold,
                                            args.protocol, seeds)), end="")


def extractors_command(args) -> None:
    """``python iou.py --extractors [--seeds ...]``."""
    seeds = args.seeds or [args.seed]
    print(_timed("extractors", lambda: write_extractors_report(extractor_reports(
        _base_run(args), _prefix(args, "methods"), args.n_threshold, args.protocol, seeds,
        args.extractors or tuple(model.EXTRACTORS)))), end="")


def wsol_command(args) -> None:
    """``python iou.py --wsol``: every finished run on a dataset with boxes or masks."""
    reports = []
    for exp_id in finished_experiments():
        report = wsol_report(exp_id, args.n_threshold, args.device, args.protocol, args.extractor)
        if report is None:
            print(f"skipping {exp_id}: its test split has no boxes or masks")
        else:
            reports.append(report)
    print(write_methods_report(reports), end="")


def semseg_command(args) -> None:
    """``python iou.py --semseg [--crf] [--seeds ...] [--runs EXP ...]``."""
    crf = (None, *(args.crf or CRF_VARIANTS)) if args.crf is not None else (None,)
    if args.runs:
        def work() -> str:
            return write_semseg_report([report for exp_id in args.runs for report in
                                        semseg_variants(Experiment.load(exp_id, args.device), args.n_threshold, crf)])
    else:
        seeds = args.seeds or [args.seed]
        base = _base_run(args, args.dataset)
        work = lambda: write_semseg_report(semseg_reports(base, _prefix(args, "semseg"), args.n_threshold,  # noqa: E731
                                                          seeds, crf))
    print(_timed("semseg", work), end="")
