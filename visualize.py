"""The lab's overlays and masks: CAM heat maps over the ``test_seg_source/`` images, thresholded masks and their grid.

``python visualize.py --exp_id cam`` writes ``visualize/<exp_id>/<stem>.png`` (the overlay),
``<stem>_seg.png`` (the mask ``python iou.py`` scores) and ``grid.png``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

import dataloader
import model
import train
from camlab import figures, formats, skeleton
from camlab.extractors import DEFAULT_EXTRACTOR, EXTRACTORS, check_extractor
from camlab.images import decode_image, read_mask_dir
from camlab.metrics import threshold_masks
from camlab.utils import (CHECKPOINT_DIR, DEFAULT_THRESHOLD, DEVICES, PRED_SUFFIX, REPORT_DIR, VISUALIZE_DIR, CamlabError,
                          OneLineParser, atomic_write_text, check_range, resolve_device, run_cli, safe_subdir)


# ----------------------------------------------------------------------------- command line
def _source_images(root: Path) -> tuple[list[str], np.ndarray]:
    """Stems and uint8 N×H×W×3 images of ``root/test_seg_source`` (resized to the first
    image's size when they differ, so they go through the model as one batch)."""
    folder = root / "test_seg_source"
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMG_EXTENSIONS) \
        if folder.is_dir() else []
    if not paths:
        raise CamlabError(f"no images to visualise in {folder}")
    images = [decode_image(p) for p in paths]
    h, w = images[0].shape[:2]
    images = [im if im.shape[:2] == (h, w) else cv2.resize(im, (w, h)) for im in images]
    return [p.stem for p in paths], np.stack(images)


FIG_SIZE = 224  # the side of the images visualize.py writes (the course skeleton's); 0: each image's own
SKELETON = "skeleton"  # --threshold's preset: the skeleton's rendering and mask rule (camlab.skeleton)


def threshold_arg(text: str) -> float | str:
    """``--threshold``: a share of the normalised CAM's range in [0, 1], or the preset ``skeleton``."""
    if text == SKELETON:
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number in [0, 1] or {SKELETON!r}, not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1] (a share of the CAM's range)")
    return value


def trained_form(cfg: train.RunConfig) -> str:
    """The CAM form a run was trained with (SEG's --cam, what its L_ser compared); ``class`` for a
    method that reads none."""
    return cfg.cam if any(f.name == "cam" for f in cfg.method.flags) else "class"


def _true_labels(root: Path, stems: list[str], num_classes: int) -> dict[str, int]:
    """The label of each ``test_seg_source`` image that ``test_cls.txt`` lists (by stem)."""
    listed = {Path(name).stem: label for name, label in dataloader.annotations(root, "test", num_classes)}
    return {stem: listed[stem] for stem in stems if stem in listed}


def _caption(stem: str, label: dict, with_stem: bool = True) -> str:
    """The lines under an image: its stem, the true class (when listed), the prediction (marked ✗
    when wrong)."""
    lines = [stem] if with_stem else []
    lines += [f"true {label['true']}"] if label["true"] is not None else []
    return "\n".join(lines + [f"pred {label['pred']}{' ✗' if label['wrong'] else ''}"])


def run_maps(run: train.FinishedRun, images: np.ndarray, form: str, threshold: float | str, extractor: str,
             fig_size: int, cmap: str, dev: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """``(shown images uint8 N×S×S×3, overlays, masks bool N×S×S, scores N×K)`` of ``run`` on
    ``images`` (uint8 N×H×W×3): S is ``fig_size`` (0: H×W; the skeleton preset: 224, rendered as
    the skeleton does)."""
    size = skeleton.SKELETON_SIZE if threshold == SKELETON else fig_size
    out = (size, size) if size else images.shape[1:3]
    shown = np.stack([im if im.shape[:2] == out else cv2.resize(im, out[::-1]) for im in images])
    inputs = dataloader.to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2).to(dev), run.cfg.img_size)
    if threshold == SKELETON:
        if extractor != DEFAULT_EXTRACTOR:
            raise CamlabError("--threshold skeleton renders camlab's own CAM as the skeleton does; "
                              f"not --extractor {extractor}")
        with torch.inference_mode():
            scores, low = model.feature_maps(run.net, inputs, form)
        rendered = np.stack([skeleton.render(m.cpu().numpy(), size) for m in low])
        cams, masks = rendered / 255.0, skeleton.mask(rendered)
    else:
        scores, maps = model.localization_maps(run.net, inputs, out, form, extractor=extractor)
        cams = maps.cpu().numpy()
        masks = np.stack([threshold_masks(cam, threshold) for cam in cams])
    overlays = np.stack([figures.heatmap_overlay(im, cam, cmap=cmap) for im, cam in zip(shown, cams)])
    return shown, overlays, masks, scores


def _source(root: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Stems and images of ``root/test_seg_source`` (:func:`_source_images`), and the masks of
    ``root/test_seg`` by stem ({} when there is no such folder)."""
    stems, images = _source_images(root)
    return stems, images, read_mask_dir(root / "test_seg") if (root / "test_seg").is_dir() else {}


def _check_look(threshold: float | str, fig_size: int, fig_format: str) -> None:
    """The settings every figure of this module shares, refused in one line when out of range."""
    if threshold != SKELETON and not 0.0 <= threshold <= 1.0:
        raise CamlabError(f"--threshold must lie in [0, 1] or be {SKELETON!r}, got {threshold}")
    if fig_format not in figures.FIG_FORMATS:
        raise CamlabError(f"--fig_format {fig_format!r}: choose from {', '.join(figures.FIG_FORMATS)}")
    check_range("--fig_size", fig_size, 0, 4096, why="pixels per side (0: each image's own size)")


def _shown_truth(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None or mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def _load(exp_id: str, dev: torch.device, data_root: str | None) -> train.FinishedRun:
    run = train.load_run(exp_id, dev, data_root)
    if formats.get(run.cfg.dataset).multi_label and not (run.root / "test_seg_source").is_dir():
        raise CamlabError(f"{exp_id} was trained on --dataset {run.cfg.dataset}, which has no test_seg_source/ to "
                          f"visualise; python iou.py --semseg --runs {exp_id} draws its label maps (report/semseg.png)")
    return run


def _described(threshold: float | str) -> str:
    return "the skeleton's mask (uint8 map > 175 at 224)" if threshold == SKELETON else f"threshold {threshold:g}"


def _labels(run: train.FinishedRun, stems: list[str], scores: torch.Tensor) -> list[dict]:
    """Per image: ``true`` (the class name ``test_cls.txt`` lists, else None), ``pred`` (name and
    softmax probability) and ``wrong``."""
    probs, preds = scores.softmax(dim=1).max(dim=1)
    classes = run.ckpt.get("classes") or [str(i) for i in range(scores.shape[1])]
    truth = _true_labels(run.root, stems, len(classes))
    return [{"true": classes[truth[s]] if s in truth else None, "pred": f"{classes[int(preds[i])]} ({float(probs[i]):.2f})",
             "wrong": s in truth and truth[s] != int(preds[i])} for i, s in enumerate(stems)]


def visualize_run(exp_id: str, threshold: float | str = DEFAULT_THRESHOLD, form: str | None = None,
                  data_root: str | None = None, device: str = "auto", extractor: str = DEFAULT_EXTRACTOR,
                  fig_size: int = FIG_SIZE, cmap: str = "jet", fig_format: str = "png") -> Path:
    """Overlays, masks and a grid for every image of ``test_seg_source/`` under ``exp_id``'s
    best checkpoint, the maps from ``extractor`` (``EXTRACTORS``) in ``form`` (None: the form
    the run was trained with, :func:`trained_form`), each written at ``fig_size``; returns the
    output folder: ``visualize/<exp_id>/`` for camlab's CAM, ``visualize/<exp_id>_<extractor>/``
    for another (so that ``python iou.py`` tabulates it as a column of its own)."""
    _check_look(threshold, fig_size, fig_format)
    run_dir = safe_subdir(CHECKPOINT_DIR, exp_id)
    out_dir = safe_subdir(VISUALIZE_DIR, exp_id if check_extractor(extractor) == DEFAULT_EXTRACTOR
                          else f"{exp_id}_{extractor}")
    dev = resolve_device(device)
    run = _load(exp_id, dev, data_root)
    form = trained_form(run.cfg) if form is None else form
    stems, images, truth = _source(run.root)
    shown, overlays, masks, scores = run_maps(run, images, form, threshold, extractor, fig_size, cmap, dev)
    rows = []
    for i, (stem, label) in enumerate(zip(stems, _labels(run, stems, scores))):
        figures.write_png(out_dir / f"{stem}.png", overlays[i])
        figures.write_png(out_dir / f"{stem}{PRED_SUFFIX}", masks[i].astype(np.uint8) * 255)
        rows.append({"name": stem, "image": shown[i], "overlay": overlays[i], "mask": masks[i],
                     "gt": _shown_truth(truth.get(stem), masks[i].shape), "caption": _caption(stem, label),
                     "wrong": label["wrong"]})
    what = f"{form} CAM" if extractor == DEFAULT_EXTRACTOR else extractor
    figures.plot_grid(rows, out_dir / f"grid.{fig_format}", title=f"{exp_id}: {what}, {_described(threshold)}")
    settings = {"exp_id": exp_id, "checkpoint": str(run_dir / "best.pth"), "cam": form, "extractor": extractor,
                "threshold": threshold, "fig_size": int(masks.shape[1]), "cmap": cmap, "data_root": str(run.root),
                "images": stems}
    atomic_write_text(out_dir / "settings.json", json.dumps(settings, indent=2) + "\n")
    return out_dir


def compare_runs(exp_ids: list[str], threshold: float | str = DEFAULT_THRESHOLD, form: str | None = None,
                 data_root: str | None = None, device: str = "auto", fig_size: int = FIG_SIZE, cmap: str = "jet",
                 fig_format: str = "png") -> Path:
    """The handout's Fig. 3 for ``exp_ids`` (say a CAM and a SEG run): the ``test_seg_source``
    images, their ground truth, and each run's CAM (its trained form unless ``form``) and mask,
    in ``report/compare_<a>_<b>....<fig_format>``. The runs must read the same data."""
    if len(set(exp_ids)) != len(exp_ids) or not exp_ids:
        raise CamlabError("--compare: name each run once")
    _check_look(threshold, fig_size, fig_format)
    dev = resolve_device(device)
    runs = {exp_id: _load(exp_id, dev, data_root) for exp_id in exp_ids}
    roots = {str(r.root) for r in runs.values()}
    if len(roots) > 1:
        raise CamlabError(f"--compare: the runs read different data ({', '.join(sorted(roots))}); "
                          "compare runs of one dataset")
    root = next(iter(runs.values())).root
    stems, images, truth = _source(root)
    columns, labelled = None, {}
    for exp_id, run in runs.items():
        used = trained_form(run.cfg) if form is None else form
        shown, overlays, masks, scores = run_maps(run, images, used, threshold, DEFAULT_EXTRACTOR, fig_size, cmap, dev)
        labels = _labels(run, stems, scores)
        columns = columns or [{"image": shown[i], "gt": _shown_truth(truth.get(s), masks[i].shape),
                               "caption": s + (f"\ntrue {labels[i]['true']}" if labels[i]["true"] is not None else "")}
                              for i, s in enumerate(stems)]
        labelled[f"{exp_id} ({run.cfg.mode}, {used})"] = [
            {"overlay": overlays[i], "mask": masks[i], "wrong": labels[i]["wrong"],
             "caption": _caption(stems[i], {**labels[i], "true": None}, with_stem=False)} for i in range(len(stems))]
    path = safe_subdir(REPORT_DIR, f"compare_{'_'.join(exp_ids)}.{fig_format}", "--compare")
    figures.plot_compare(columns, labelled, path, title=f"CAM and mask of each run, {_described(threshold)}")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="visualize.py", description="CAM overlays and masks for test_seg_source/.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--exp_id", help="the run under checkpoints/ to visualise")
    which.add_argument("--compare", nargs="+", metavar="EXP_ID",
                       help="the handout's Fig. 3: image, ground truth, and each run's CAM and mask, in one figure "
                            "(report/compare_<a>_<b>.png), e.g. --compare cam seg")
    p.add_argument("--threshold", type=threshold_arg, default=DEFAULT_THRESHOLD,
                   help="mask = min-max normalised CAM >= threshold, keep it the same for every mode; or skeleton: "
                        "the course skeleton's rendering (min-max at the feature resolution, uint8, bilinear to 224) "
                        "and mask (> 175 of 255)")
    p.add_argument("--cam", default=None, choices=list(model.CAM_FORMS),
                   help="default: the form the run was trained with (SEG's --cam), class for other modes. class: the "
                        "paper's CAM of the predicted class; lab: the handout's sum weighted by the softmax of the "
                        "pooled coefficients; lab_fc: weighted by the softmax of the predicted class's classifier "
                        "weights (the other skeleton variant); raw: the class map before ReLU")
    p.add_argument("--extractor", default=DEFAULT_EXTRACTOR, choices=list(EXTRACTORS),
                   help="cam: camlab's own CAM; the others are gradient- and score-based maps")
    p.add_argument("--fig_size", type=int, default=FIG_SIZE,
                   help="side in pixels of the overlays and masks written (the skeleton's 224); 0: each image's own")
    p.add_argument("--fig_format", default="png", choices=list(figures.FIG_FORMATS),
                   help="the grid's and the comparison figure's format (pdf, svg: vector, for a report)")
    p.add_argument("--cmap", default="jet", choices=list(figures.COLOUR_MAPS),
                   help="the overlays' colour map: jet (the paper's and the skeleton's), or a perceptually uniform one")
    p.add_argument("--data_root", default=None, help="default: the checkpoint's data root")
    p.add_argument("--device", default="auto", choices=DEVICES)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        look = dict(threshold=args.threshold, form=args.cam, data_root=args.data_root, device=args.device,
                    fig_size=args.fig_size, cmap=args.cmap, fig_format=args.fig_format)
        if args.compare:
            print(f"wrote {compare_runs(args.compare, **look)}")
            return
        out = visualize_run(args.exp_id, extractor=args.extractor, **look)
        print(f"wrote overlays, masks and grid.{args.fig_format} to {out}/ "
              f"({json.loads((out / 'settings.json').read_text())['cam']} CAM)")
    return run_cli("visualize.py", body)


if __name__ == "__main__":
    sys.exit(main())
