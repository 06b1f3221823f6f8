"""A finished run loaded once for evaluation (``Experiment``: its best model, settings, splits, ground truth and maps), the maps over a whole split, and the lab's whole-test IoU report.

It reads finished runs from ``checkpoints/`` and writes ``report/``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import dataloader
import model
import train
from camlab import figures, synthetic, tables
from camlab.boxes import get_protocol, wsol_scoremaps
from camlab.cams import MSF_SCALES, class_form, msf_normalise, msf_sum
from camlab.extractors import DEFAULT_EXTRACTOR, check_extractor_form
from camlab.formats import Truth
from camlab.images import ImageSet
from camlab.stream import StreamSet
from camlab.metrics import THRESHOLD_GRID, batch_iou, iou_curve, pick_threshold, threshold_masks
from camlab.utils import CHECKPOINT_DIR, REPORT_DIR, VISUALIZE_DIR, CamlabError, atomic_write_text, resolve_device, safe_subdir


# ------------------------------------------------------------------- the whole test set
def dataset_cams(net: "model.CAMModel", data: ImageSet, img_size: int, form: str,
                 batch_size: int = 64, of_labels: bool = False,
                 extractor: str = DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions int64 N, CAMs float32 N×H×W in [0, 1])`` for every image of ``data``, the
    maps at the stored image size, each of the image's top predicted class (``of_labels``: of
    its labelled class, as GT-known localisation asks), from ``extractor``
    (:func:`model.localization_maps`); batched."""
    out_size = tuple(data.images.shape[-2:])
    return _batched(net, data, img_size, batch_size, of_labels,
                    lambda inputs, classes: model.localization_maps(net, inputs, out_size, form, classes, extractor))


def protocol_cams(net: "model.CAMModel", data: ImageSet, img_size: int, protocol: str,
                  of_labels: bool = True, extractor: str = DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, evaluation maps N×H×W in [0, 1])`` as ``protocol`` defines them
    (:class:`Protocol`): wsolevaluation's from the raw maps (:func:`wsol_scoremaps`), of
    camlab's CAM or of another ``extractor`` (its raw map, ReLU included where it defines one)."""
    rule = get_protocol(protocol)
    if rule.form != "raw":
        return dataset_cams(net, data, img_size, rule.form, of_labels=of_labels, extractor=extractor)
    preds, raw = extractor_raw(net, data, img_size, extractor, of_labels)
    return preds, wsol_scoremaps(raw, tuple(data.images.shape[-2:]))


def extractor_raw(net: "model.CAMModel", data: ImageSet, img_size: int, extractor: str,
                  of_labels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, raw maps N×h×w)`` of ``extractor`` for every image of ``data`` (of its
    labelled class, or of its top prediction)."""
    with model.open_extractor(net, extractor, img_size) as maps_of:
        return _batched(net, data, img_size, 64, of_labels, maps_of)


def _batched(net: "model.CAMModel", data: ImageSet, img_size: int, batch_size: int,
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
    """``(foreground, valid)`` of ``Truth`` masks (uint8: 1 foreground, 0 background,
    255 ignore): bool N×H×W each; ``valid`` is None when nothing is ignored (every pixel counts)."""
    masks = np.asarray(masks)
    ignored = masks == 255
    return masks == 1, (~ignored if ignored.any() else None)


def _subset(data: ImageSet, n: int, seed: int = 0) -> ImageSet:
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
        run = train.load_run(exp_id, dev)
        _check_trained_on(exp_id, run.root)
        return cls(exp_id, run.net, run.cfg, run.root, dev)

    def split(self, role: str, n: int | None = None, in_memory: str = "always", workers: int = 0) -> ImageSet:
        """The split that plays ``role`` (``dataloader.split_for``: ``fit`` chooses thresholds,
        ``test`` is reported), or ``n`` images of it drawn at random (seed 0); read as
        ``in_memory`` says (``--data_in_memory``: a ``camlab.stream.StreamSet`` where it streams)."""
        data = dataloader.load_split(self.cfg.dataset, self.root, self._split_name(role), img_size=self.cfg.img_size,
                                     progress=False, skip_bad=self.cfg.skip_bad, metadata=self.cfg.metadata,
                                     max_pixels=self.cfg.max_pixels, in_memory=in_memory, workers=workers)
        return (data if n is None else _subset(data, n)).to(self.device)

    def read_test(self, in_memory: str = "always", workers: int = 0) -> "ImageSet | StreamSet":
        """The test split read as ``in_memory`` says: its ``StreamSet`` where it streams, else the
        split in memory, kept as :attr:`test` (read once, however many reports use it)."""
        if "test" not in self.__dict__:
            data = self.split("test", in_memory=in_memory, workers=workers)
            if isinstance(data, StreamSet):
                return data
            self.__dict__["test"] = (data, self.truth("test", data))  # functools.cached_property's slot
        return self.test[0]

    def truth(self, role: str, data: ImageSet) -> "Truth | None":
        """The boxes or masks of ``data`` (the ``role`` split or a subset of it), or None."""
        return dataloader.ground_truth(self.cfg.dataset, self.root, self._split_name(role), data, self.cfg.metadata)

    def _split_name(self, role: str) -> str:
        return dataloader.split_for(self.cfg.dataset, role, self.root)

    @functools.cached_property
    def test(self) -> tuple[ImageSet, "Truth | None"]:
        """The test split and its ground truth, read once however many measures use them."""
        data = self.split("test")
        return data, self.truth("test", data)

    def cams(self, data: ImageSet, form: str = "class", of_labels: bool = False,
             extractor: str = DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
        """:func:`dataset_cams`; another extractor's maps come from :meth:`raw_maps` (its maps of
        the labels, and of the predictions only where they differ), in ``class_form``."""
        if extractor == DEFAULT_EXTRACTOR:
            return dataset_cams(self.net, data, self.cfg.img_size, form, of_labels=of_labels)
        check_extractor_form(extractor, form)
        preds, raw = self.raw_maps(data, extractor)
        wrong = np.flatnonzero(preds != data.labels.cpu().numpy())
        if not of_labels and len(wrong):
            raw = raw.copy()
            raw[wrong] = extractor_raw(self.net, data.take(torch.from_numpy(wrong)), self.cfg.img_size, extractor,
                                       of_labels=False)[1]
        return preds, class_form(torch.from_numpy(raw), tuple(data.images.shape[-2:])).numpy()

    def protocol_cams(self, data: ImageSet, protocol: str,
                      extractor: str = DEFAULT_EXTRACTOR) -> tuple[np.ndarray, np.ndarray]:
        """:func:`protocol_cams` of the labels; another extractor's from :meth:`raw_maps`."""
        form = get_protocol(protocol).form
        if extractor == DEFAULT_EXTRACTOR:
            return protocol_cams(self.net, data, self.cfg.img_size, protocol)
        if form != "raw":
            return self.cams(data, form, of_labels=True, extractor=extractor)
        preds, raw = self.raw_maps(data, extractor)
        return preds, wsol_scoremaps(raw, tuple(data.images.shape[-2:]))

    def class_maps(self, data: ImageSet, msf: bool = True) -> np.ndarray:
        """:func:`class_maps` of ``data``, computed once per set of images."""
        key = (tuple(data.names), "every class", msf)
        if key not in self._raw:
            self._raw[key] = class_maps(self, data, msf=msf)
        return self._raw[key]

    def semseg_fit(self, n: int, msf: bool = True) -> tuple[ImageSet, Truth, np.ndarray]:
        """``n`` images of the split that chooses thresholds, their class masks and class maps,
        read once however many CRF variants choose a threshold on them."""
        key = ("semseg fit", n, msf)
        if key not in self._raw:
            data = self.split("fit", n)
            truth = self.truth("fit", data)
            if truth is None or truth.classes is None:
                raise CamlabError(f"{self.exp_id}: the split that chooses thresholds has no class masks")
            self._raw[key] = (data, truth, self.class_maps(data, msf))
        return self._raw[key]

    def raw_maps(self, data: ImageSet, extractor: str) -> tuple[np.ndarray, np.ndarray]:
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
                  extractor: str = DEFAULT_EXTRACTOR) -> dict | None:
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
    header = ["experiment", "CAM", "threshold (chosen on train masks)", "train mean IoU", "test mean IoU",
              "test images"]
    rows = [[r["exp_id"], r["cam"], f"{r['threshold']:.2f}", f"{r['train_iou']:.4f}", f"{r['test_iou']:.4f}",
             r["n_test"]] for r in reports]
    return tables.markdown(header, rows, [tables.LEFT] * 2 + [tables.RIGHT] * 4)


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
    rows = [[r["exp_id"], r["cam"], f"{r['threshold']:.2f}", f"{r['train_iou']:.4f}", f"{r['test_iou']:.4f}",
             r["n_test"]] for r in reports]
    atomic_write_text(Path(report_dir) / "iou_full.csv",
                      tables.csv_text(["experiment", "cam", "threshold", "train_iou", "test_iou", "n_test"], rows))
    figures.plot_iou_curves({r["exp_id"]: r["curve"] for r in reports}, Path(report_dir) / "iou_threshold.png",
                            chosen={r["exp_id"]: r["threshold"] for r in reports},
                            title="mean IoU on training masks (where the threshold is chosen)")
    return full_test_table(reports)


def finished_experiments(checkpoint_dir: Path = CHECKPOINT_DIR) -> list[str]:
    """The exp_ids under ``checkpoints/`` with a best checkpoint (k-fold runs keep theirs per fold
    and are left out), sorted."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(d.name for d in checkpoint_dir.iterdir() if (d / "best.pth").is_file())


# ------------------------------------------------------- semantic segmentation (several labels)
def class_maps(exp: Experiment, data: ImageSet, batch_size: int = 64, msf: bool = True) -> np.ndarray:
    """float32 N×K×H×W in [0, 1]: every class's map (``CAMModel.every_class_cam``, ACoL's heads
    erasing by the present classes) upsampled bilinearly to the stored frame, ReLU'd and divided by
    its own maximum (OC-CSE's and SSENet's normalisation), per image and class. With ``msf``
    (OC-CSE's inference, ``camlab.cams.MSF_SCALES``): the maps of the image at 0.5, 1, 1.5 and 2
    times the run's ``img_size`` and of their mirror images, each upsampled to the frame and
    ReLU'd, summed, then divided by the max. The maps of absent classes are computed too;
    ``camlab.crf.segment`` reads only the present ones."""
    out_size, net, maps = tuple(data.images.shape[-2:]), exp.net, []
    present = _present(data)
    views = [(s, f) for s in MSF_SCALES for f in (False, True)] if msf else [(1.0, False)]
    with torch.inference_mode():
        for idx in torch.arange(len(data), device=data.images.device).split(batch_size):
            total = None
            for scale, flipped in views:
                flip = torch.full((len(idx),), flipped, device=data.images.device) if flipped else None
                inputs = dataloader.to_model_input(data.images[idx], max(1, round(exp.cfg.img_size * scale)), flip)
                cams = net.every_class_cam(net.forward_features(inputs), present[idx].to(inputs.device).float())
                cams = torch.nn.functional.interpolate(cams.float(), size=out_size, mode="bilinear",
                                                       align_corners=False)
                total = msf_sum(total, cams, flipped)
            maps.append(msf_normalise(total).clamp(0, 1).cpu())
    return torch.cat(maps).numpy()


def _present(data: ImageSet) -> torch.Tensor:
    if data.present is None:
        raise CamlabError("semantic segmentation needs every class present in an image (--dataset multi or voc)")
    return data.present


def _rgb(data: ImageSet) -> np.ndarray:
    return data.images.permute(0, 2, 3, 1).cpu().numpy()
