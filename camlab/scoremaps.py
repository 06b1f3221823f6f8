"""Score maps that any method brings, scored as wsolevaluation scores them: one ``<image_id>.npy`` per image, read one at a time, into MaxBoxAcc (each δ), MaxBoxAccV2, PxAP and top-1 localisation.

A drop-in for clovaai/wsolevaluation's ``evaluation.py``: its ``inference.py`` writes, for every
image of the val or test split, the normalised map of the image's class at the evaluation frame
as ``<scoremap root>/<image_id>.npy`` (``np.save`` appends ``.npy`` to the image id, sub-folders
included). The ground truth comes from the metadata (``camlab.wsolmeta``): boxes (CUB, ILSVRC)
rescaled to each map's frame as ``resize_bbox`` does, or masks (OpenImages) under ``data_root``.

Memory does not grow with the split: each map is loaded, checked, added to the accumulators
(``camlab.boxes.BoxAccuracy``, PxAP's pixel histograms) and dropped. ``python iou.py --wsol
--scoremaps DIR --metadata metadata/CUB`` and ``camlab-scoremaps`` (installed with the package)
run :func:`main`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from camlab import tables
from camlab.boxes import BOX_FRACTION, BOX_IOU_THRESHOLDS, LOC_IOU_THRESHOLD, BoxAccuracy, best_iou, get_protocol
from camlab.metrics import CAM_CURVE_INTERVAL as WSOL_INTERVAL, check_interval, check_unit_range, pixel_histograms, pxap_from_histograms
from camlab.utils import CamlabError, OneLineParser, atomic_write_text, run_cli
from camlab.wsolmeta import image_truth, read_split

MAX_MAP_PIXELS = 50_000_000  # a score map larger than this is refused from its header, never loaded


def read_scoremap(path: Path) -> np.ndarray:
    """One score map: a 2-D float array in [0, 1] saved with ``np.save``; anything else is a
    one-line CamlabError naming the file (missing, not a .npy array, an object array, another
    rank or dtype, over :data:`MAX_MAP_PIXELS` from its header, NaN, outside [0, 1])."""
    if not path.is_file():
        raise CamlabError(f"no score map {path}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header, maps the data
    except (ValueError, OSError, EOFError) as err:
        raise CamlabError(f"score map {path} is not a .npy array ({' '.join(str(err).split())[:120]})") from None
    if array.ndim != 2 or 0 in array.shape:
        raise CamlabError(f"score map {path} has shape {array.shape}: one H×W map per image")
    if not np.issubdtype(array.dtype, np.floating):
        raise CamlabError(f"score map {path} holds {array.dtype}, not floats in [0, 1]")
    if array.size > MAX_MAP_PIXELS:
        raise CamlabError(f"score map {path} is {array.shape[1]}×{array.shape[0]}, over {MAX_MAP_PIXELS:,} pixels")
    return check_unit_range(np.array(array, dtype=np.float64 if array.dtype == np.float64 else np.float32),
                            f"score map {path}")


def read_predictions(path: Path, ids: Sequence[str]) -> dict[str, int]:
    """``<image id>,<predicted class>`` per line, one for every image of the split."""
    found: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CamlabError(f"cannot read --pred {path}: {err}") from None
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        image_id, _, label = line.rpartition(",")
        try:
            found[image_id.strip()] = int(label)
        except ValueError:
            raise CamlabError(f"--pred {path}, line {no}: expected '<image id>,<class>'") from None
    missing = [i for i in ids if i not in found]
    if missing:
        raise CamlabError(f"--pred {path} has no prediction for image {missing[0]!r} ({len(missing)} missing)")
    return found


def evaluate(scoremaps: Path | str, metadata: Path | str, split: str = "test", data_root: Path | str | None = None,
             interval: float = WSOL_INTERVAL, predictions: Path | str | None = None,
             iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS, progress: bool = True,
             strict_boxes: bool = False) -> dict:
    """Every measure of the split's score maps (see the module's docstring): ``max_box_acc_v2``
    (every contour, each δ and their mean), ``max_box_acc`` (wsolevaluation's V1: the largest
    contour, δ = 0.5) for boxes; ``pxap`` for masks; with ``predictions`` the top-1 and GT-known
    localisation of the CAM paper's 20% box (wsolevaluation's protocol). -> a dict of fractions."""
    check_interval("--cam_curve_interval", interval)
    scoremaps, metadata = Path(scoremaps), Path(metadata)
    if not scoremaps.is_dir():
        raise CamlabError(f"--scoremaps {scoremaps} is not a folder")
    info = read_split(Path(data_root or "."), metadata, split)
    if info.kind is None:
        raise CamlabError(f"{metadata / split / 'localization.txt'} holds no boxes or masks to score against")
    if strict_boxes and info.box_faults:
        raise CamlabError(f"{metadata / split / 'localization.txt'}: {info.box_faults} boxes outside their image or of "
                          f"zero area (the first: {info.first_fault}); --strict_boxes refuses them")
    if info.kind == "masks" and data_root is None:
        raise CamlabError("these metadata score masks: pass --data_root, the folder their mask paths are relative to")
    preds = read_predictions(Path(predictions), info.ids) if predictions is not None else None
    scorer = Scorer(info, Path(data_root or "."), interval, iou_thresholds)
    for image_id, label in tqdm(list(zip(info.ids, info.labels)), desc="scoring", unit="map",
                                disable=None if progress else True, leave=False):
        scorer.add(image_id, read_scoremap(scoremaps / f"{image_id}.npy"), label,
                   None if preds is None else preds[image_id])
    return scorer.report(split, scoremaps=str(scoremaps), metadata=str(metadata), top1=preds is not None)


class Scorer:
    """The accumulators of :func:`evaluate`: each map (at its image's frame, in [0, 1]) added,
    scored against the split's ground truth (``info``, ``camlab.wsolmeta.read_split``) and dropped,
    so memory does not grow with the split: MaxBoxAcc's box counts, PxAP's pixel histograms."""

    def __init__(self, info, data_root: Path, interval: float = WSOL_INTERVAL,
                 iou_thresholds: Sequence[float] = BOX_IOU_THRESHOLDS, keep_histograms: bool = False) -> None:
        """``keep_histograms``: also keep each image's PxAP histograms (``image_fg``, ``image_bg``:
        one row of bins per image, what the paired bootstrap resamples) on a split with masks."""
        self.info, self.root, self.interval = info, data_root, interval
        self.image_fg: list[np.ndarray] | None = [] if keep_histograms else None
        self.image_bg: list[np.ndarray] | None = [] if keep_histograms else None
        self.v2, self.v1 = BoxAccuracy(iou_thresholds, True, interval), BoxAccuracy((0.5,), False, interval)
        bins = len(np.arange(0, 1, interval)) + 2
        self.fg, self.bg, self.hits, self.correct, self.n = np.zeros(bins, np.int64), np.zeros(bins, np.int64), 0, 0, 0
        self.rule = get_protocol("wsolevaluation")

    def add(self, image_id: str, cam: np.ndarray, label: int, pred: int | None = None) -> None:
        """One image's map; ``pred``, its predicted class, counts toward top-1 localisation."""
        truth = image_truth(self.info, self.root, image_id, cam.shape)
        if self.info.kind == "boxes":
            self.v2.update(cam, truth)
            self.v1.update(cam, truth)
            hit = best_iou(self.rule.box_at(cam, BOX_FRACTION), truth) >= LOC_IOU_THRESHOLD
        else:
            f, b = pixel_histograms(cam[None], truth[None] == 1, self.interval, valid=(truth != 255)[None])
            self.fg, self.bg = self.fg + f[0], self.bg + b[0]
            if self.image_fg is not None:
                self.image_fg.append(f[0])
                self.image_bg.append(b[0])
            hit = False
        self.hits += hit
        self.correct += bool(pred is not None and pred == label and hit)
        self.n += 1

    def report(self, split: str, top1: bool = False, **extra) -> dict:
        """Every measure over the maps added (see :func:`evaluate`), with ``extra`` entries."""
        info, n = self.info, max(self.n, 1)
        report = {"split": split, "n_images": self.n, "cam_curve_interval": self.interval, "kind": info.kind,
                  "box_faults": info.box_faults, **extra}
        if info.kind == "boxes":
            report.update(max_box_acc_v2={str(k): v for k, v in self.v2.compute().items()},
                          max_box_acc=self.v1.compute()[0.5], gt_known_loc=self.hits / n)
            if top1:
                report["top1_loc"] = self.correct / n
        else:
            report["pxap"] = pxap_from_histograms(self.fg, self.bg)
        return report


def report_table(report: dict) -> str:
    """Markdown: one row per measure, in percent as wsolevaluation prints them."""
    rows = []
    if "max_box_acc_v2" in report:
        for key, value in report["max_box_acc_v2"].items():
            name = "MaxBoxAccV2" if key == "mean" else f"MaxBoxAcc, δ = {float(key):g} (every contour)"
            rows.append([name, f"{100 * value:.2f}"])
        rows.append(["MaxBoxAcc (V1: δ = 0.5, largest contour)", f"{100 * report['max_box_acc']:.2f}"])
        rows.append(["GT-known loc (20% box)", f"{100 * report['gt_known_loc']:.2f}"])
        if "top1_loc" in report:
            rows.append(["top-1 loc (20% box)", f"{100 * report['top1_loc']:.2f}"])
    if "pxap" in report:
        rows.append(["PxAP", f"{100 * report['pxap']:.2f}"])
    head = (f"{report['n_images']} score maps of the {report['split']} split, CAM threshold step "
            f"{report['cam_curve_interval']:g}\n\n")
    return head + tables.markdown(["measure", "%"], rows, [tables.LEFT, tables.RIGHT])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scoremaps", type=Path, required=True, help="the folder of <image_id>.npy score maps")
    p.add_argument("--metadata", type=Path, required=True,
                   help="the metadata folder of one dataset (wsolevaluation/metadata/CUB, ILSVRC or OpenImages)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--data_root", type=Path, default=None, help="OpenImages: the folder the mask paths are relative to")
    p.add_argument("--pred", type=Path, default=None, help="<image id>,<predicted class> per line: adds top-1 loc")
    p.add_argument("--cam_curve_interval", type=float, default=WSOL_INTERVAL,
                   help="CAM threshold step (wsolevaluation's default)")
    p.add_argument("--strict_boxes", action="store_true",
                   help="refuse boxes outside their image or of zero area (by default: one warning, scored as given)")


def run(args: argparse.Namespace, out: Path) -> dict:
    """Score, print the table, write ``<out>.json`` and ``<out>.md``."""
    report = evaluate(args.scoremaps, args.metadata, args.split, args.data_root, args.cam_curve_interval, args.pred,
                      strict_boxes=args.strict_boxes)
    text = report_table(report)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text, end="")
    return report


def main(argv: list[str] | None = None) -> int:
    """``camlab-scoremaps --scoremaps DIR --metadata metadata/CUB [--split test] ...``."""
    p = OneLineParser(prog="camlab-scoremaps", description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--out", type=Path, default=Path("report") / "scoremaps",
                   help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    return run_cli("camlab-scoremaps", lambda: run(args, args.out))


if __name__ == "__main__":
    sys.exit(main())
