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
from camlab import figures, formats
from camlab.extractors import DEFAULT_EXTRACTOR, EXTRACTORS, check_extractor
from camlab.images import decode_image, read_mask_dir
from camlab.metrics import threshold_masks
from camlab.utils import (CHECKPOINT_DIR, DEFAULT_THRESHOLD, DEVICES, PRED_SUFFIX, VISUALIZE_DIR, CamlabError,
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


def visualize_run(exp_id: str, threshold: float = DEFAULT_THRESHOLD, form: str = "class",
                  data_root: str | None = None, device: str = "auto",
                  extractor: str = DEFAULT_EXTRACTOR) -> Path:
    """Overlays, masks and a grid for every image of ``test_seg_source/`` under ``exp_id``'s
    best checkpoint, the maps from ``extractor`` (``EXTRACTORS``); returns the output
    folder: ``visualize/<exp_id>/`` for camlab's CAM, ``visualize/<exp_id>_<extractor>/`` for
    another (so that ``python iou.py`` tabulates it as a column of its own)."""
    if not 0.0 <= threshold <= 1.0:
        raise CamlabError(f"--threshold must lie in [0, 1], got {threshold}")
    run_dir = safe_subdir(CHECKPOINT_DIR, exp_id)
    out_dir = safe_subdir(VISUALIZE_DIR, exp_id if check_extractor(extractor) == DEFAULT_EXTRACTOR
                          else f"{exp_id}_{extractor}")
    dev = resolve_device(device)
    run = train.load_run(exp_id, dev, data_root)
    net, ckpt, cfg, root = run.net, run.ckpt, run.cfg, run.root
    if formats.get(cfg.dataset).multi_label and not (root / "test_seg_source").is_dir():
        raise CamlabError(f"{exp_id} was trained on --dataset {cfg.dataset}, which has no test_seg_source/ to "
                          f"visualise; python iou.py --semseg --runs {exp_id} draws its label maps (report/semseg.png)")
    stems, images = _source_images(root)
    truth = read_mask_dir(root / "test_seg") if (root / "test_seg").is_dir() else {}
    inputs = dataloader.to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2).to(dev),
                                       cfg.img_size)
    scores, maps = model.localization_maps(net, inputs, images.shape[1:3], form, extractor=extractor)
    probs, preds = scores.softmax(dim=1).max(dim=1)
    classes = ckpt.get("classes") or [str(i) for i in range(scores.shape[1])]
    rows = []
    for i, stem in enumerate(stems):
        cam = maps[i].cpu().numpy()
        mask = threshold_masks(cam, threshold)
        overlay = figures.heatmap_overlay(images[i], cam)
        figures.write_png(out_dir / f"{stem}.png", overlay)
        figures.write_png(out_dir / f"{stem}{PRED_SUFFIX}", mask.astype(np.uint8) * 255)
        rows.append({"name": stem, "image": images[i], "overlay": overlay, "mask": mask,
                     "gt": truth.get(stem),
                     "caption": f"{stem}\n{classes[preds[i]]} ({probs[i]:.2f})"})
    what = f"{form} CAM" if extractor == DEFAULT_EXTRACTOR else extractor
    figures.plot_grid(rows, out_dir / "grid.png", title=f"{exp_id}: {what}, threshold {threshold:g}")
    settings = {"exp_id": exp_id, "checkpoint": str(run_dir / "best.pth"), "cam": form, "extractor": extractor,
                "threshold": threshold, "data_root": str(root), "images": stems}
    atomic_write_text(out_dir / "settings.json", json.dumps(settings, indent=2) + "\n")
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="visualize.py", description="CAM overlays and masks for test_seg_source/.")
    p.add_argument("--exp_id", required=True, help="the run under checkpoints/ to visualise")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="mask = min-max normalised CAM >= threshold; keep it the same for every mode")
    p.add_argument("--cam", default="class", choices=list(model.CAM_FORMS),
                   help="class: the paper's CAM of the predicted class; lab: the handout's softmax-weighted sum")
    p.add_argument("--extractor", default=DEFAULT_EXTRACTOR, choices=list(EXTRACTORS),
                   help="cam: camlab's own CAM; the others are torchcam's gradient- and score-based maps")
    p.add_argument("--data_root", default=None, help="default: the checkpoint's data root")
    p.add_argument("--device", default="auto", choices=DEVICES)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        check_range("--threshold", args.threshold, 0, 1, why="a share of the CAM's maximum")
        out = visualize_run(args.exp_id, args.threshold, args.cam, args.data_root, args.device, args.extractor)
        print(f"wrote overlays, masks and grid.png to {out}/")
    return run_cli("visualize.py", body)


if __name__ == "__main__":
    sys.exit(main())
