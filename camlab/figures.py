"""Every matplotlib figure camlab draws: training curves, IoU curves, overlays, the methods, label-map and sweep figures.

matplotlib draws off screen (Agg), so figures are written on servers without a display; each is
written atomically as PNG.
"""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import MaxNLocator  # noqa: E402

from camlab.utils import CamlabError, atomic_write, encode_png  # noqa: E402


FIG_FORMATS = ("png", "pdf", "svg")  # what a report figure can be written as (vector: pdf, svg)
ROW_LABEL_WIDTH = 18  # characters per line of a grid's row label
INTERVAL_PANELS = 4  # a forest plot's panels per line (the methods' eight measures: two lines)
AXIS_LABEL_WIDTH = 36  # characters per line of a forest plot's axis label (its panels sit side by side)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write a figure atomically in the format its suffix names (``FIG_FORMATS``), then free it."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in FIG_FORMATS:
        plt.close(fig)
        raise CamlabError(f"cannot write a figure as {path}: choose a .png, .pdf or .svg name")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, training against validation, from ``log.csv`` rows."""
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, style in (("train", "-o"), ("val", "--s")):
            key = f"{split}_{metric}"
            if key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if metric == "acc" else "upper right")
    axes[1].set_ylim(0, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_iou_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path | str,
                    chosen: dict[str, float] | None = None, title: str = "") -> None:
    """Mean IoU against threshold, one line per experiment, written atomically as PNG.

    curves: experiment -> (thresholds, mean IoUs), both float arrays T, thresholds increasing.
    chosen: experiment -> its chosen threshold, marked on that experiment's line.
    """
    if not curves:
        raise CamlabError("plot_iou_curves: no curves to draw")
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, (thresholds, mious) in curves.items():
        line, = ax.plot(thresholds, mious, "-", label=name)
        if chosen and name in chosen:
            t = chosen[name]
            y = np.interp(t, thresholds, mious)
            ax.plot([t], [y], "o", color=line.get_color(), markersize=7)
    ax.set(xlabel="threshold on the normalised CAM", ylabel="mean IoU", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(path))


# ------------------------------------------------------------------------- CAM overlays, masks
# --cmap: OpenCV's colour maps for the overlays. jet is the CAM paper's and the course skeleton's;
# viridis, cividis and inferno are perceptually uniform (equal steps of the map look equal).
COLOUR_MAPS = {"jet": cv2.COLORMAP_JET, "viridis": cv2.COLORMAP_VIRIDIS, "cividis": cv2.COLORMAP_CIVIDIS,
               "inferno": cv2.COLORMAP_INFERNO}


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The CAM in one of OpenCV's colour maps (``COLOUR_MAPS``) blended over the image.

    image: uint8 H×W×3 RGB; cam: float H×W in [0, 1]. Returns uint8 H×W×3 RGB.
    """
    if cmap not in COLOUR_MAPS:
        raise CamlabError(f"--cmap {cmap!r}: choose from {', '.join(COLOUR_MAPS)}")
    heat = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), COLOUR_MAPS[cmap])
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, alpha, image, 1 - alpha, 0)


def write_png(path: Path, image: np.ndarray) -> None:
    """uint8 H×W (grey) or H×W×3 (RGB) to PNG, atomically."""
    encoded = encode_png(image)
    atomic_write(path, lambda f: f.write(encoded))


def _draw_box(ax: plt.Axes, box, colour: str) -> None:
    """An inclusive pixel box (x0, y0, x1, y1) drawn around the pixels it covers."""
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                   edgecolor=colour, linewidth=1.2))


def plot_methods(examples: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """The methods figure: one row per experiment, one column per test image, each cell the CAM
    over the image with the CAM's box (red, 20% rule) and the ground-truth box (green). Each
    row's label is written level to its left, wrapped (long extractor names do not overlap),
    and every pixel is drawn as it is (nearest), so the file stays small and shows the map's
    own pixels.

    examples: row label -> list of dicts with ``image`` (uint8 H×W×3), ``cam`` (float H×W in
    [0, 1]), ``box`` and ``gt_box`` (inclusive (x0, y0, x1, y1) or None), ``name``.
    """
    names = list(examples)
    cols = max(len(v) for v in examples.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(1.3 * cols + 1.4, 1.4 * len(names) + 0.4), squeeze=False)
    for r, label in enumerate(names):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(examples[label]):
                ex = examples[label][c]
                ax.imshow(heatmap_overlay(ex["image"], ex["cam"]), interpolation="nearest")
                _draw_box(ax, ex["gt_box"], "lime")
                _draw_box(ax, ex["box"], "red")
                if r == 0:
                    ax.set_title(ex["name"], fontsize=7)
        axes[r, 0].set_ylabel(textwrap.fill(label, ROW_LABEL_WIDTH), fontsize=7, rotation=0, ha="right", va="center",
                              labelpad=4)
    fig.suptitle(title or "CAM of the labelled class; boxes: CAM (red, 20% rule), ground truth (green)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def label_colours(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Label maps (0 background, k + 1 class k, 255 void) as uint8 ...×3 RGB: background black,
    void white, class k the k-th colour of matplotlib's tab10 (tab20 beyond ten classes)."""
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    table = np.zeros((256, 3), np.uint8)
    table[1:num_classes + 1] = (np.asarray([cmap(k % cmap.N)[:3] for k in range(num_classes)]) * 255).round()
    table[255] = 255
    return table[np.asarray(labels, np.uint8)]


def plot_label_maps(rows: dict[str, np.ndarray], examples: dict, classes: list[str], path: Path,
                    title: str = "") -> None:
    """The segmentation figure: one column per test image; rows: the image, its ground truth,
    then each method's label map (``rows``: name -> int N×H×W), colour-coded by
    :func:`label_colours`, with a legend of the classes. ``examples``: ``images`` (uint8
    N×H×W×3), ``truth`` (N×H×W), ``names``; ``classes``: background first."""
    num_classes = len(classes) - 1
    named = {"image": None, "ground truth": examples["truth"], **rows}
    cols = len(examples["images"])
    fig, axes = plt.subplots(len(named), cols, figsize=(1.25 * cols + 1.6, 1.3 * len(named) + 0.6), squeeze=False)
    for r, (name, maps) in enumerate(named.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(examples["images"][c] if maps is None else label_colours(maps[c], num_classes))
            if r == 0:
                ax.set_title(examples["names"][c].split("/")[-1], fontsize=6)
        axes[r, 0].set_ylabel(textwrap.fill(name, 18), fontsize=7)
    handles = [matplotlib.patches.Patch(color=label_colours(np.array([k]), num_classes)[0] / 255, label=name)
               for k, name in enumerate(classes)]
    fig.legend(handles=handles, loc="center right", fontsize=6, frameon=False)
    fig.suptitle(title or "label maps (black: background)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / (1.25 * cols + 1.6), 1 - 0.5 / (1.3 * len(named) + 0.6)))
    save_figure(fig, path)


def plot_sweep(series: dict[str, dict[str, list]], path: Path, title: str = "") -> None:
    """The body-evidence sweep: mean IoU, PxAP and body-only accuracy against the setting, one
    line per method (mean over seeds; the bar spans the seeds' min to max).

    series: method -> measure key (``test_iou``, ``pxap``, ``acc_body``) -> [(setting, values
    over seeds), ...] in increasing setting.
    """
    panels = (("test_iou", "mean IoU (threshold from training masks)"), ("pxap", "PxAP"),
              ("acc_body", "body-only accuracy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for method, measures in series.items():
            points = [(x, np.asarray(v, dtype=np.float64)) for x, v in measures.get(key, [])
                      if v and not np.isnan(np.asarray(v, dtype=np.float64)).all()]
            if not points:
                continue
            xs = np.array([x for x, _ in points])
            mean = np.array([np.nanmean(v) for _, v in points])
            low, high = np.array([np.nanmin(v) for _, v in points]), np.array([np.nanmax(v) for _, v in points])
            ax.errorbar(xs, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=method)
        ax.set(xlabel="body evidence (share of bodies carrying class evidence)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or "the body-evidence sweep", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_sweep_intervals(series: dict[str, dict[str, list]], path: Path, title: str = "") -> None:
    """Which method beats CAM, and at which setting: one panel per measure, for each method
    (a colour) and setting each seed's paired-bootstrap difference from CAM with its 95%
    interval (filled where it excludes 0, hollow where it crosses it), the seeds' mean joined by
    a line; a line at 0.

    series: method -> measure label (e.g. "ΔPxAP") -> [(setting, [(difference, low, high) per
    seed]), ...] in increasing setting.
    """
    measures = list(dict.fromkeys(m for per in series.values() for m in per))
    if not series or not measures:
        raise CamlabError("plot_sweep_intervals: nothing to draw (no method has an interval)")
    settings = sorted({x for per in series.values() for points in per.values() for x, _ in points})
    place = {x: k for k, x in enumerate(settings)}  # evenly spaced: 0.75, 0.85 and 1 stay apart
    fig, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 3.8), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for m, (method, per) in enumerate(series.items()):
            points = per.get(measure, [])
            if not points:
                continue
            colour = f"C{m % 10}"
            shift = (m - (len(series) - 1) / 2) * 0.7 / max(len(series), 1)
            xs, means = [], []
            for x, found in points:
                for k, (d, lo, hi) in enumerate(found):
                    at = place[x] + shift + (k - (len(found) - 1) / 2) * 0.15 / max(len(series), 1)
                    clear = lo > 0 or hi < 0
                    ax.errorbar([at], [d], yerr=[[max(d - lo, 0.0)], [max(hi - d, 0.0)]], fmt="o", markersize=3,
                                capsize=1.5, color=colour, mfc=colour if clear else "white", lw=0.8)
                xs.append(place[x] + shift)
                means.append(np.mean([d for d, _, _ in found]))
            ax.plot(xs, means, "-", color=colour, lw=1, label=method)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(settings)), [f"{x:g}" for x in settings])
        ax.set(xlabel="body evidence (share of bodies carrying class evidence)",
               ylabel=f"{measure} vs CAM (95% CI per seed)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title or "each method minus CAM at each setting", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_grid(rows: list[dict], path: Path, title: str = "") -> None:
    """A report figure with one column per image and four rows: image, CAM overlay,
    thresholded mask, ground truth (left blank where unknown).

    rows: dicts with ``name``, ``image`` (uint8 H×W×3), ``overlay``, ``mask`` (bool H×W),
    optional ``gt`` (bool H×W) and ``caption``.
    """
    keys, heads = ("image", "overlay", "mask", "gt"), ("image", "CAM", "mask", "ground truth")
    fig, axes = plt.subplots(4, len(rows), figsize=(1.5 * len(rows), 6.6), squeeze=False)
    for c, row in enumerate(rows):
        for r, key in enumerate(keys):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            binary = key in ("mask", "gt")
            if row.get(key) is not None:
                ax.imshow(row[key], cmap="gray" if binary else None, vmin=0 if binary else None,
                          vmax=1 if binary else None)
            if c == 0:
                ax.set_ylabel(heads[r], fontsize=9)
        axes[0, c].set_title(row.get("caption", row["name"]), fontsize=7,
                             color="firebrick" if row.get("wrong") else "black")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_compare(images: list[dict], runs: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """The handout's Fig. 3 for any runs: one column per image; rows: the image, its ground truth,
    then for each run its CAM over the image and its mask.

    images: dicts with ``image`` (uint8 H×W×3), ``gt`` (bool H×W or None), ``caption``;
    runs: run label -> per image, dicts with ``overlay`` (uint8 H×W×3), ``mask`` (bool H×W) and
    ``caption`` (the run's prediction).
    """
    rows = [("image", None, "image"), ("ground truth", None, "gt")]
    rows += [(f"{name}\n{kind}", name, key) for name in runs for kind, key in (("CAM", "overlay"), ("mask", "mask"))]
    cols = len(images)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.45 * cols + 0.4, 1.45 * len(rows) + 0.4), squeeze=False)
    for r, (label, run, key) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = images[c] if run is None else runs[run][c]
            value = cell.get(key)
            if value is not None:
                binary = key in ("mask", "gt")
                ax.imshow(value, cmap="gray" if binary else None, vmin=0 if binary else None, vmax=1 if binary else None)
            if run is not None and key == "overlay":
                ax.set_title(cell["caption"], fontsize=6, color="firebrick" if cell.get("wrong") else "black")
        axes[r, 0].set_ylabel(label, fontsize=8)
    for c in range(cols):
        axes[0, c].set_title(images[c]["caption"], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_intervals(rows: dict[str, dict[str, list[tuple[float, float, float]]]], path: Path,
                   title: str = "", reference: str = "CAM") -> None:
    """A forest plot, one panel per measure: for each row (a method or an extractor) each seed's
    paired-bootstrap difference from ``reference`` as a dot with its 95% interval; a line at 0.
    An interval that lies wholly on one side of 0 is drawn solid, one that crosses 0 hollow.
    ``reference`` names what the differences are from in the axis labels ("" when the measures
    name it).

    rows: label -> measure label (e.g. "ΔIoU") -> [(difference, low, high) per seed].
    """
    measures = list(dict.fromkeys(m for per in rows.values() for m in per))
    if not rows or not measures:
        raise CamlabError("plot_intervals: nothing to draw (no row has an interval)")
    labels = list(rows)
    cols = min(len(measures), INTERVAL_PANELS)
    lines = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.4 * cols + 1.6, (0.45 * len(labels) + 1.4) * lines),
                             squeeze=False, sharey=True)
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    for ax, measure in zip(axes.flat, measures):
        ax.xaxis.set_major_locator(MaxNLocator(5))
        for y, label in enumerate(labels):
            found = rows[label].get(measure, [])
            for k, (d, lo, hi) in enumerate(found):
                offset = (k - (len(found) - 1) / 2) * 0.18
                clear = lo > 0 or hi < 0
                ax.errorbar([d], [y + offset], xerr=[[max(d - lo, 0.0)], [max(hi - d, 0.0)]], fmt="o", capsize=2,
                            markersize=4, color="C0" if clear else "0.45", mfc="C0" if clear else "white")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(textwrap.fill(f"{measure}{f' vs {reference}' if reference else ''} (95% CI per seed)",
                                    AXIS_LABEL_WIDTH), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for line in axes:
        line[0].set_yticks(range(len(labels)), [textwrap.fill(label, 2 * ROW_LABEL_WIDTH) for label in labels],
                           fontsize=8)
    axes[0, 0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_scatter(points: dict[str, tuple[list[float], list[float]]], path: Path, xlabel: str, ylabel: str,
                 title: str = "") -> None:
    """One point per label at the mean over seeds of (x, y), its bars the seeds' min to max:
    e.g. each extractor's localisation (x) against its faithfulness (y).

    points: label -> (x values over seeds, y values over seeds).
    """
    if not points:
        raise CamlabError("plot_scatter: nothing to draw")
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for k, (label, (xs, ys)) in enumerate(points.items()):
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        x, y = float(np.mean(xs)), float(np.mean(ys))
        ax.errorbar([x], [y], xerr=[[x - xs.min()], [xs.max() - x]], yerr=[[y - ys.min()], [ys.max() - y]],
                    fmt="o", capsize=3, color=f"C{k % 10}", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
