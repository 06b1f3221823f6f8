"""Score maps that any method brings (wsolevaluation's inference.py output, DIR/<image_id>.npy),
scored by ``iou.py --wsol --scoremaps`` and ``camlab-scoremaps`` as wsolevaluation's evaluation.py
scores them: the numbers equal camlab's metric functions on the same maps and ground truth, and
every bad input is one line naming the file, exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import iou
from camlab import scoremaps
from camlab.boxes import localization_accuracy, max_box_acc
from camlab.formats import FORMATS
from camlab.metrics import pxap
from camlab.wsolmeta import read_split


def write_maps(folder: Path, ids: list[str], seed: int = 0, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    """One smooth map in [0, 1] per image id, saved as wsolevaluation's inference.py saves them."""
    rng, maps = np.random.default_rng(seed), []
    yy, xx = np.mgrid[:size[0], :size[1]]
    for image_id in ids:
        cy, cx = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        cam = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 5) ** 2)).astype(np.float32)
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        (folder / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / image_id, cam)  # np.save appends .npy, as inference.py's output is named
        maps.append(cam)
    return np.stack(maps)


@pytest.fixture
def cub(tmp_path):
    root, meta = FORMATS["wsol"].example(tmp_path / "data")  # a CUB-like tree: boxes on val and test
    info = read_split(root, meta, "test")
    maps = write_maps(tmp_path / "maps", info.ids)
    return root, meta, info, maps, tmp_path / "maps"


def test_box_measures_equal_camlabs_metrics_on_the_same_maps(cub) -> None:
    root, meta, info, maps, folder = cub
    report = scoremaps.evaluate(folder, meta, "test", progress=False)
    boxes = [np.asarray(info.boxes[i]) for i in info.ids]  # 16×16 images scored in a 16×16 frame: as given
    v2 = max_box_acc(maps, boxes, interval=0.001)
    assert report["max_box_acc_v2"] == {str(k): v for k, v in v2.items()}
    assert report["max_box_acc"] == max_box_acc(maps, boxes, iou_thresholds=(0.5,), multi_contour=False,
                                                interval=0.001)[0.5]
    labels = np.asarray(info.labels)
    assert report["gt_known_loc"] == localization_accuracy(maps, labels, labels, boxes)["gt_known_loc"]
    assert report["n_images"] == 3 and report["cam_curve_interval"] == 0.001 and "pxap" not in report
    # the step is the flag's: at 0.01 the numbers are those of the coarser grid
    assert scoremaps.evaluate(folder, meta, "test", interval=0.01, progress=False)["max_box_acc_v2"] == {
        str(k): v for k, v in max_box_acc(maps, boxes, interval=0.01).items()}


def test_predictions_give_top1_localisation(cub, tmp_path) -> None:
    root, meta, info, maps, folder = cub
    wrong = info.ids[0]
    pred = tmp_path / "pred.csv"
    pred.write_text("".join(f"{i},{(y + 1) % 3 if i == wrong else y}\n" for i, y in zip(info.ids, info.labels)))
    report = scoremaps.evaluate(folder, meta, "test", predictions=pred, progress=False)
    boxes, labels = [np.asarray(info.boxes[i]) for i in info.ids], np.asarray(info.labels)
    preds = np.where(np.asarray(info.ids) == wrong, (labels + 1) % 3, labels)
    assert report["top1_loc"] == localization_accuracy(maps, preds, labels, boxes)["top1_loc"]
    assert report["top1_loc"] <= report["gt_known_loc"]


def test_masks_give_pxap_with_the_ignore_pixels_left_out(tmp_path) -> None:
    """OpenImages-like: instance masks and an ignore mask under --data_root, PxAP over the
    pixels outside the ignore region, equal to camlab.metrics.pxap on those pixels."""
    root, meta = tmp_path / "oi", tmp_path / "meta"
    ids = ["a.png", "b.png"]
    truth = {}
    for k, image_id in enumerate(ids):
        mask = np.zeros((12, 12), np.uint8)
        mask[2 + k:8, 3:9 - k] = 255
        ignore = np.zeros((12, 12), np.uint8)
        ignore[0:2, :] = 255
        for name, array in ((f"m_{image_id}", mask), (f"i_{image_id}", ignore)):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), array)
        truth[image_id] = (mask > 0, ignore > 0)
    (meta / "test").mkdir(parents=True)
    (meta / "train").mkdir(parents=True)
    files = {"image_ids.txt": ids, "class_labels.txt": [f"{i},{k}" for k, i in enumerate(ids)],
             "image_sizes.txt": [f"{i},12,12" for i in ids], "localization.txt": [f"{i},m_{i},i_{i}" for i in ids]}
    for name, lines in files.items():
        (meta / "test" / name).write_text("\n".join(lines) + "\n")
        (meta / "train" / name).write_text("\n".join(lines if name in ("image_ids.txt", "class_labels.txt") else [])
                                           + "\n")
    maps = write_maps(tmp_path / "maps", ids, size=(12, 12))
    report = scoremaps.evaluate(tmp_path / "maps", meta, "test", data_root=root, progress=False)
    counted = np.stack([~ign | fg for fg, ign in truth.values()])
    fg = np.stack([fg for fg, _ in truth.values()])
    assert report["pxap"] == pytest.approx(pxap(maps[counted][None], fg[counted][None]), abs=1e-12)
    assert "max_box_acc_v2" not in report


def _cli(capsys, *argv) -> tuple[int, str]:
    code = iou.main(["--wsol", *map(str, argv)])
    return code, capsys.readouterr().err


def test_the_command_writes_the_report_and_the_console_script_agrees(cub, tmp_path, monkeypatch, capsys) -> None:
    root, meta, info, maps, folder = cub
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, "--scoremaps", folder, "--metadata", meta)
    assert code == 0, err
    written = json.loads((tmp_path / "report" / "scoremaps.json").read_text())
    assert written["max_box_acc_v2"] == scoremaps.evaluate(folder, meta, progress=False)["max_box_acc_v2"]
    md = (tmp_path / "report" / "scoremaps.md").read_text()
    assert "CAM threshold step 0.001" in md and "| MaxBoxAccV2 |" in md
    assert scoremaps.main(["--scoremaps", str(folder), "--metadata", str(meta), "--out", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x.json").read_text()) == written


@pytest.mark.parametrize("damage, message", [
    ("missing", "no score map {map}"),
    ("rank", "score map {map} has shape (2, 16, 16): one H×W map per image"),
    ("nan", "score map {map} hold NaN: a score map must be finite, in [0, 1]"),
    ("range", "score map {map} must lie in [0, 1] (min-max normalise them first), found values from 0 to 3"),
    ("ints", "score map {map} holds int64, not floats in [0, 1]"),
    ("text", "score map {map} is not a .npy array"),
])
def test_every_bad_map_is_one_line_naming_the_file(cub, tmp_path, monkeypatch, capsys, damage, message) -> None:
    root, meta, info, maps, folder = cub
    target = folder / f"{info.ids[1]}.npy"
    if damage == "missing":
        target.unlink()
    elif damage == "rank":
        np.save(target, np.zeros((2, 16, 16), np.float32))
    elif damage == "nan":
        bad = maps[1].copy()
        bad[3, 3] = np.nan
        np.save(target, bad)
    elif damage == "range":
        np.save(target, maps[1] * 3)
    elif damage == "ints":
        np.save(target, np.zeros((16, 16), np.int64))
    else:
        target.write_text("not an array")
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, "--scoremaps", folder, "--metadata", meta)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("iou.py: error: " + message.format(map=target))


def test_bad_flags_and_predictions_are_one_line(cub, tmp_path, monkeypatch, capsys) -> None:
    root, meta, info, maps, folder = cub
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:  # argparse's one line, without --wsol
        iou.main(["--scoremaps", str(folder), "--metadata", str(meta)])
    assert exit_.value.code == 2 and "--scoremaps is scored with --wsol" in capsys.readouterr().err
    pred = tmp_path / "pred.csv"
    pred.write_text(f"{info.ids[0]},1\n")
    code, err = _cli(capsys, "--scoremaps", folder, "--metadata", meta, "--pred", pred)
    assert code == 2 and f"--pred {pred} has no prediction for image {info.ids[1]!r} (2 missing)" in err
    code, err = _cli(capsys, "--scoremaps", tmp_path / "nowhere", "--metadata", meta)
    assert code == 2 and "is not a folder" in err
