"""The wsol (clovaai/wsolevaluation metadata) and voc (PASCAL VOC 2012) readers, the ground
truth they give (``dataloader.ground_truth``), the split roles, and the ``present`` field of
ImageSet; on tiny trees written here (12×16 and 16×20 images). Every expected box and mask is
worked out by hand from the files written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import camlab.images
import dataloader as dl
import main
from camlab.boxes import localization_accuracy, max_box_acc
from camlab.formats import FORMATS, ROLES
from camlab.images import ImageSet, read_mask
from camlab.metrics import pxap
from camlab.readers import VOC_CLASSES, VOC_NOTE, read_index_mask
from camlab.utils import CamlabError
from camlab.wsolmeta import WSOL_FILES
from research.experiments import Experiment, protocol_cams
from research.wsol import wsol_report

QUIET = dict(cache_dir=None, progress=False)


# ---------------------------------------------------------------------------------- helpers
def write_image(path: Path, height: int, width: int, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), value, np.uint8)
    image[: height // 2] = (value + 80) % 256
    assert cv2.imwrite(str(path), image)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """bool or 0/255 uint8 H×W as a grey PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.where(mask > 0, 255, 0).astype(np.uint8))


def write_lines(path: Path, lines: list[str]) -> None:
    """As wsolevaluation's files are: comma-separated, no newline after the last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def write_split(meta: Path, split: str, labels: dict[str, int], sizes: list[str] = (),
                localization: list[str] = ()) -> None:
    write_lines(meta / split / "image_ids.txt", list(labels))
    write_lines(meta / split / "class_labels.txt", [f"{i},{c}" for i, c in labels.items()])
    write_lines(meta / split / "image_sizes.txt", list(sizes))
    write_lines(meta / split / "localization.txt", list(localization))


TRAIN_LABELS = {"001.A/t0.png": 0, "001.A/t1.png": 0, "002.B/t2.png": 1, "002.B/t3.png": 1,
                "003.C/t4.png": 2, "003.C/t5.png": 2}


def cub_tree(top: Path) -> tuple[Path, Path]:
    """CUB-like: every image 12×16 (h×w), one box each, except v1 with two. Train has empty
    image_sizes.txt and localization.txt, as the real benchmark's."""
    root, meta = top / "images", top / "metadata"
    for name in [*TRAIN_LABELS, "001.A/v0.png", "002.B/v1.png", "003.C/s0.png", "001.A/s1.png"]:
        write_image(root / name, 12, 16)
    write_split(meta, "train", TRAIN_LABELS)
    write_split(meta, "val", {"001.A/v0.png": 0, "002.B/v1.png": 1},
                ["001.A/v0.png,16,12", "002.B/v1.png,16,12"],
                ["001.A/v0.png,1,2,10,8", "002.B/v1.png,0,0,15,11", "002.B/v1.png,3,4,5,6"])
    write_split(meta, "test", {"003.C/s0.png": 2, "001.A/s1.png": 0},
                ["003.C/s0.png,16,12", "001.A/s1.png,16,12"],
                ["003.C/s0.png,2,3,12,9", "001.A/s1.png,4,4,7,7"])
    return root, meta


# ----------------------------------------------------------------------------- wsol: boxes
def test_cub_like_boxes(tmp_path) -> None:
    root, meta = cub_tree(tmp_path)
    train = dl.load_split("wsol", root, "train", metadata=meta, **QUIET)
    assert train.names == list(TRAIN_LABELS) and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.classes == ["0", "1", "2"] and train.present is None
    assert dl.ground_truth("wsol", root, "train", train, meta) is None  # empty localization.txt

    val = dl.load_split("wsol", root, "val", metadata=meta, **QUIET)
    assert val.names == ["001.A/v0.png", "002.B/v1.png"] and val.labels.tolist() == [0, 1]
    assert val.classes == ["0", "1", "2"] and tuple(val.images.shape) == (2, 3, 12, 16)
    truth = dl.ground_truth("wsol", root, "val", val, meta)
    assert truth.masks is None and len(truth.boxes) == 2
    assert all(b.dtype == np.int64 for b in truth.boxes)
    np.testing.assert_array_equal(truth.boxes[0], [[1, 2, 10, 8]])  # stored at the original size
    np.testing.assert_array_equal(truth.boxes[1], [[0, 0, 15, 11], [3, 4, 5, 6]])
    # a subset (in another order) gets its own images' boxes
    sub = val.take(torch.tensor([1, 1, 0]))
    sub_truth = dl.ground_truth("wsol", root, "val", sub, meta)
    assert [b.tolist() for b in sub_truth.boxes] == [[[0, 0, 15, 11], [3, 4, 5, 6]]] * 2 + [[[1, 2, 10, 8]]]


def test_ilsvrc_like_boxes_are_rescaled_to_the_stored_frame(tmp_path) -> None:
    """Images of two sizes are stored at img_size × img_size (10×10 here): each box goes from
    its image's size in image_sizes.txt to 10×10 as wsolevaluation's resize_bbox does,
    int(x * 10 / w), int(y * 10 / h)."""
    root, meta = tmp_path / "ILSVRC", tmp_path / "metadata"
    write_image(root / "train/n1/a.JPEG", 12, 16)
    write_image(root / "train/n2/b.JPEG", 12, 16)
    write_image(root / "val/1.JPEG", 12, 16)  # w 16, h 12
    write_image(root / "val/2.JPEG", 16, 20)  # w 20, h 16
    write_split(meta, "train", {"train/n1/a.JPEG": 0, "train/n2/b.JPEG": 1})
    write_split(meta, "test", {"val/1.JPEG": 1, "val/2.JPEG": 0},
                ["val/1.JPEG,16,12", "val/2.JPEG,20,16"],
                ["val/1.JPEG,3,2,11,9", "val/2.JPEG,0,0,19,15", "val/2.JPEG,5,4,10,8"])
    data = dl.load_split("wsol", root, "test", img_size=10, metadata=meta, **QUIET)
    assert tuple(data.images.shape) == (2, 3, 10, 10) and data.labels.tolist() == [1, 0]
    truth = dl.ground_truth("wsol", root, "test", data, meta)
    # 3*10/16 = 1.875, 2*10/12 = 1.67, 11*10/16 = 6.875, 9*10/12 = 7.5
    np.testing.assert_array_equal(truth.boxes[0], [[1, 1, 6, 7]])
    # 19*10/20 = 9.5, 15*10/16 = 9.375; 5*10/20 = 2.5, 4*10/16 = 2.5, 10*10/20 = 5, 8*10/16 = 5
    np.testing.assert_array_equal(truth.boxes[1], [[0, 0, 9, 9], [2, 2, 5, 5]])


# ----------------------------------------------------------------------------- wsol: masks
def openimages_tree(top: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """OpenImages-like val: image a with two instance masks and an ignore mask that overlaps
    the first; image b with one instance mask stored at half size (6×8) and an ignore mask.
    Returns the expected ground truth of each, worked out by hand."""
    root, meta = top / "OpenImages", top / "metadata"
    write_image(root / "train/c0/t0.jpg", 12, 16)
    write_image(root / "train/c1/t1.jpg", 12, 16)
    write_split(meta, "train", {"train/c0/t0.jpg": 0, "train/c1/t1.jpg": 1})
    write_image(root / "val/c0/a.jpg", 12, 16)
    write_image(root / "val/c1/b.jpg", 12, 16)
    a1, a2, a_ignore = (np.zeros((12, 16), bool) for _ in range(3))
    a1[0:4, 0:4] = True
    a2[6:9, 10:14] = True
    a_ignore[0:6, 0:8] = True
    write_mask(root / "val/c0/a_m1.png", a1)
    Image.fromarray(a2).save(root / "val/c0/a_m2.png")  # mode '1', as the benchmark's instance masks
    Image.fromarray(np.repeat(a_ignore[..., None] * np.uint8(255), 3, axis=2)).save(root / "val/c0/a_ignore.png")  # RGB
    b_half = np.zeros((6, 8), bool)
    b_half[1:3, 2:5] = True  # nearest ×2: rows 2..5, cols 4..9
    b_ignore = np.zeros((12, 16), bool)
    b_ignore[:, 12:] = True
    write_mask(root / "val/c1/b_m1.png", b_half)
    write_mask(root / "val/c1/b_ignore.png", b_ignore)
    write_split(meta, "val", {"val/c0/a.jpg": 0, "val/c1/b.jpg": 1}, [],
                ["val/c0/a.jpg,val/c0/a_m1.png,val/c0/a_ignore.png", "val/c0/a.jpg,val/c0/a_m2.png,",
                 "val/c1/b.jpg,val/c1/b_m1.png,val/c1/b_ignore.png"])
    a = np.zeros((12, 16), np.uint8)
    a[0:6, 0:8] = 255  # ignore ...
    a[0:4, 0:4] = 1    # ... except where an instance is
    a[6:9, 10:14] = 1
    b = np.zeros((12, 16), np.uint8)
    b[:, 12:] = 255
    b[2:6, 4:10] = 1
    return root, meta, {"val/c0/a.jpg": a, "val/c1/b.jpg": b}


def test_openimages_like_masks(tmp_path) -> None:
    root, meta, expected = openimages_tree(tmp_path)
    assert [Image.open(root / f"val/c0/a_{m}.png").mode for m in ("m2", "ignore")] == ["1", "RGB"]
    data = dl.load_split("wsol", root, "val", metadata=meta, **QUIET)
    assert data.names == list(expected) and data.labels.tolist() == [0, 1] and data.classes == ["0", "1"]
    truth = dl.ground_truth("wsol", root, "val", data, meta)
    assert truth.boxes is None and truth.masks.dtype == np.uint8
    np.testing.assert_array_equal(truth.masks, np.stack(list(expected.values())))
    # a stored frame of another size: nearest resize of each file, then the same rule
    small = ImageSet(torch.zeros(1, 3, 6, 8, dtype=torch.uint8), torch.tensor([1]), ["val/c1/b.jpg"], ["0", "1"])
    np.testing.assert_array_equal(dl.ground_truth("wsol", root, "val", small, meta).masks[0],
                                  expected["val/c1/b.jpg"][::2, ::2])


# -------------------------------------------------------------------- wsol: malformed lines
def _replace(lines: list[str], index: int, line: str) -> list[str]:
    return lines[:index] + [line] + lines[index + 1:]


# (split, file, how its lines change, the line the error must name, a phrase of the error)
MALFORMED = {
    "ids: two fields": ("val", "image_ids.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,1"), 2, "expected 1"),
    "ids: duplicate": ("val", "image_ids.txt", lambda ls: ls + ["001.A/v0.png"], 3, "repeats line 1"),
    "ids: image missing": ("val", "image_ids.txt", lambda ls: _replace(ls, 1, "002.B/nothere.png"), 2,
                           "is missing"),
    "labels: not an integer": ("val", "class_labels.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,one"), 2,
                               "not an integer"),
    "labels: field count": ("val", "class_labels.txt", lambda ls: _replace(ls, 0, "001.A/v0.png"), 1,
                            "expected 2"),
    "labels: unknown id": ("val", "class_labels.txt", lambda ls: ls + ["001.A/other.png,0"], 3,
                           "is not in"),
    "labels: out of range": ("val", "class_labels.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,3"), 2,
                             "out of range [0, 3)"),
    "labels: second label": ("val", "class_labels.txt", lambda ls: ls + ["001.A/v0.png,1"], 3,
                             "a second label"),
    "labels: missing": ("val", "class_labels.txt", lambda ls: ls[:1], 2, "has no label"),  # names image_ids.txt
    "train labels: negative": ("train", "class_labels.txt", lambda ls: _replace(ls, 2, "002.B/t2.png,-1"), 3,
                               "below 0"),
    "sizes: not an integer": ("val", "image_sizes.txt", lambda ls: _replace(ls, 0, "001.A/v0.png,16,x"), 1,
                              "not an integer"),
    "sizes: field count": ("val", "image_sizes.txt", lambda ls: _replace(ls, 0, "001.A/v0.png,16"), 1,
                           "expected 3"),
    "sizes: zero": ("val", "image_sizes.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,0,12"), 2, "below 1"),
    "boxes: x1 < x0": ("val", "localization.txt", lambda ls: _replace(ls, 2, "002.B/v1.png,5,4,3,6"), 3,
                       "x1 < x0"),
    "boxes: y1 < y0": ("val", "localization.txt", lambda ls: _replace(ls, 0, "001.A/v0.png,1,8,10,2"), 1,
                       "y1 < y0"),
    "boxes: negative": ("val", "localization.txt", lambda ls: _replace(ls, 0, "001.A/v0.png,-1,2,10,8"), 1,
                        "below 0"),
    "boxes: not an integer": ("val", "localization.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,0,0,15.5,11"),
                              2, "not an integer"),
    "boxes: field count": ("val", "localization.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,0,0,15"), 2,
                           "expected 5 for a box"),
    "boxes: short box": ("val", "localization.txt", lambda ls: _replace(ls, 1, "002.B/v1.png,0,0"), 2,
                         "a box needs 5"),
    "boxes: unknown id": ("val", "localization.txt", lambda ls: ls + ["002.B/zz.png,0,0,1,1"], 4, "is not in"),
    "boxes: no size": ("val", "image_sizes.txt", lambda ls: ls[:1], None, "has no size"),
    "boxes: mixed with masks": ("val", "localization.txt", lambda ls: ls + ["001.A/v0.png,m.png,i.png"], 4,
                                "not both"),
    "boxes: an image without": ("val", "localization.txt", lambda ls: ls[1:], None, "no box for image"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_names_file_and_line(tmp_path, case) -> None:
    split, name, edit, line, phrase = MALFORMED[case]
    root, meta = cub_tree(tmp_path)
    path = meta / split / name
    write_lines(path, edit(path.read_text().split("\n")))
    with pytest.raises(CamlabError) as err:
        dl.load_split("wsol", root, split, metadata=meta, **QUIET)
    message = str(err.value)
    assert phrase in message and "\n" not in message
    if case == "labels: missing":
        assert f"{meta / 'val' / 'image_ids.txt'}, line 2:" in message
    elif case == "boxes: no size":  # the box line that needs the size
        assert f"{meta / 'val' / 'localization.txt'}, line 2:" in message
    elif case == "boxes: an image without":
        assert f"{meta / 'val' / 'localization.txt'}: " in message and "image_ids.txt, line 1" in message
    else:
        assert f"{path}, line {line}:" in message


MASK_MALFORMED = {
    "a second ignore mask": (1, "val/c0/a.jpg,val/c0/a_m2.png,val/c0/a_ignore.png", "a second ignore mask"),
    "first line without ignore": (0, "val/c0/a.jpg,val/c0/a_m1.png,", "names no ignore mask"),
    "mask file missing": (2, "val/c1/b.jpg,val/c1/gone.png,val/c1/b_ignore.png", "is missing"),
    "mixed with a box": (2, "val/c1/b.jpg,1,2,3,4", "not both"),
}


@pytest.mark.parametrize("case", list(MASK_MALFORMED))
def test_malformed_mask_lines(tmp_path, case) -> None:
    index, line, phrase = MASK_MALFORMED[case]
    root, meta, _ = openimages_tree(tmp_path)
    path = meta / "val" / "localization.txt"
    write_lines(path, _replace(path.read_text().split("\n"), index, line))
    with pytest.raises(CamlabError, match=re.escape(f"{path}, line {index + 1}:") + ".*" + phrase):
        dl.load_split("wsol", root, "val", metadata=meta, **QUIET)


def test_wsol_blank_lines_crlf_and_final_newline_are_fine(tmp_path) -> None:
    root, meta = cub_tree(tmp_path)
    for name in WSOL_FILES:
        path = meta / "val" / name
        path.write_bytes(("\r\n\r\n".join(path.read_text().split("\n")) + "\r\n").encode())
    data = dl.load_split("wsol", root, "val", metadata=meta, **QUIET)
    assert data.labels.tolist() == [0, 1]
    assert len(dl.ground_truth("wsol", root, "val", data, meta).boxes[1]) == 2


def test_wsol_needs_metadata_and_only_wsol_takes_it(tmp_path, tiny_lab) -> None:
    root, meta = cub_tree(tmp_path)
    with pytest.raises(CamlabError, match="--dataset wsol needs --metadata"):
        dl.load_split("wsol", root, "val", **QUIET)
    with pytest.raises(CamlabError, match="--metadata only applies to --dataset wsol"):
        dl.load_split("lab", tiny_lab, "train", metadata=meta, **QUIET)
    with pytest.raises(CamlabError, match=r"wsol metadata folder .*nowhere does not exist"):
        dl.load_split("wsol", root, "val", metadata=tmp_path / "nowhere", **QUIET)
    with pytest.raises(CamlabError, match=r"unknown split 'train_aug' for --dataset wsol; choose one of train, val, test"):
        dl.load_split("wsol", root, "train_aug", metadata=meta, **QUIET)


def test_wsol_cache_follows_the_metadata(tmp_path) -> None:
    root, meta = cub_tree(tmp_path)
    cache = tmp_path / "cache"
    first = dl.load_split("wsol", root, "val", metadata=meta, cache_dir=cache, progress=False)
    path = meta / "val" / "class_labels.txt"
    path.write_text("001.A/v0.png,2\n002.B/v1.png,1")
    again = dl.load_split("wsol", root, "val", metadata=meta, cache_dir=cache, progress=False)
    assert first.labels.tolist() == [0, 1] and again.labels.tolist() == [2, 1]


# ------------------------------------------------------------------------------- wsol: CLI
def _cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main.main(list(argv))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


FAST = ["--img_size", "32", "--weights", "none", "--batch_size", "8", "--quiet", "--device", "cpu"]


def test_cli_refuses_bad_wsol_settings_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    root, meta = cub_tree(tmp_path)
    write_lines(meta / "test" / "localization.txt", ["003.C/s0.png,2,3,1,9", "001.A/s1.png,4,4,7,7"])
    for argv, needle in (
            (["--dataset", "wsol", "--data_root", str(root)], "--metadata"),
            (["--metadata", str(meta)], "--metadata only applies to --dataset wsol"),
            (["--dataset", "wsol", "--data_root", str(root), "--metadata", str(meta)],
             f"{meta / 'test' / 'localization.txt'}, line 1: ")):
        code, err = _cli(capsys, *argv, *FAST)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert needle in lines[0]
    assert not (tmp_path / "checkpoints" / "cam").exists()


def test_one_epoch_on_a_wsol_tree(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    root, meta = cub_tree(tmp_path)
    code, err = _cli(capsys, "--dataset", "wsol", "--data_root", str(root), "--metadata", str(meta),
                     "--epochs", "1", "--exp_id", "w", *FAST)
    assert code == 0, err
    metrics = json.loads((tmp_path / "checkpoints" / "w" / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 6 and metrics["n_test"] == 2
    assert metrics["args"]["metadata"] == str(meta) and metrics["args"]["dataset"] == "wsol"


# ------------------------------------------------------------------------------------- voc
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [64] * (3 * 251) + [224, 224, 192]  # 256 colours


def write_palette_png(path: Path, index: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(index.astype(np.uint8))
    image.putpalette(PALETTE)  # mode L -> P, indices kept
    image.save(path)


def write_grey_png(path: Path, index: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(index.astype(np.uint8)).save(path)  # mode L


def voc_masks() -> dict[str, np.ndarray]:
    """2007_000001 (12×16): person (15) 30 px, dog (12) 20 px, a void border; 2007_000002
    (16×20): aeroplane (1) 10 px; 2007_000003 (12×16): bird (3) 12 px and tvmonitor (20) 8 px."""
    a = np.zeros((12, 16), np.uint8)
    a[0:5, 0:6] = 15
    a[8:12, 10:15] = 12
    a[5, 0:6] = 255
    b = np.zeros((16, 20), np.uint8)
    b[3:5, 3:8] = 1
    c = np.zeros((12, 16), np.uint8)
    c[0:3, 0:4] = 3
    c[6:8, 6:10] = 20
    c[11, :] = 255
    return {"2007_000001": a, "2007_000002": b, "2007_000003": c}


def voc_tree(top: Path) -> Path:
    root = top / "VOCdevkit" / "VOC2012"
    for stem, mask in voc_masks().items():
        write_image(root / "JPEGImages" / f"{stem}.jpg", *mask.shape)
        write_palette_png(root / "SegmentationClass" / f"{stem}.png", mask)
    write_lines(root / "ImageSets/Segmentation/train.txt", ["2007_000001", "2007_000002", ""])
    write_lines(root / "ImageSets/Segmentation/val.txt", ["2007_000003"])
    return root


def test_voc_palette_masks_are_read_as_indices(tmp_path) -> None:
    root = voc_tree(tmp_path)
    path = root / "SegmentationClass/2007_000001.png"
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_index_mask(path), voc_masks()["2007_000001"])
    assert cv2.imread(str(path))[0, 0].tolist() != [15] * 3  # cv2 would give the colour


def test_voc_labels_present_and_truth(tmp_path, monkeypatch, capsys) -> None:
    root = voc_tree(tmp_path)
    monkeypatch.setattr(camlab.images, "_NOTED", set())
    train = dl.load_split("voc", root, "train", img_size=8, **QUIET)
    dl.load_split("voc", root, "train", img_size=8, **QUIET)
    assert capsys.readouterr().err.count(VOC_NOTE) == 1  # once per process
    assert train.classes == list(VOC_CLASSES) and train.classes[0] == "aeroplane" and len(train.classes) == 20
    assert train.names == ["JPEGImages/2007_000001.jpg", "JPEGImages/2007_000002.jpg"]
    assert train.labels.tolist() == [14, 0]  # person (30 px) beats dog (20 px)
    expected_present = torch.zeros(2, 20, dtype=torch.bool)
    expected_present[0, [11, 14]] = True
    expected_present[1, 0] = True
    assert torch.equal(train.present, expected_present)
    assert tuple(train.images.shape) == (2, 3, 8, 8)  # two sizes: stored at img_size

    val = dl.load_split("voc", root, "val", **QUIET)
    assert val.labels.tolist() == [2] and val.present[0].nonzero().flatten().tolist() == [2, 19]
    truth = dl.ground_truth("voc", root, "val", val)
    expected = np.zeros((12, 16), np.uint8)
    expected[0:3, 0:4] = 1  # the bird; the tvmonitor is background for the single label
    expected[11, :] = 255
    assert truth.boxes is None
    np.testing.assert_array_equal(truth.masks, expected[None])
    # train: each mask nearest-resized to the 8×8 frame; 1 only where the label's class is
    masks = dl.ground_truth("voc", root, "train", train).masks
    assert masks.shape == (2, 8, 8)
    a = cv2.resize(voc_masks()["2007_000001"], (8, 8), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(masks[0], np.where(a == 255, 255, a == 15).astype(np.uint8))


@pytest.mark.parametrize("form", ["trainaug.txt", "train_aug.txt"])
def test_voc_train_aug(tmp_path, form) -> None:
    root = voc_tree(tmp_path)
    assert dl.split_for("voc", "train", root) == "train"
    with pytest.raises(CamlabError, match="no augmented VOC set"):
        dl.load_split("voc", root, "train_aug", **QUIET)
    aug = np.zeros((12, 16), np.uint8)
    aug[0:2, 0:2] = 15
    aug[4:10, 4:10] = 8  # the aug mask says cat
    write_grey_png(root / "SegmentationClassAug/2007_000001.png", aug)
    write_grey_png(root / "SegmentationClassAug/2008_000009.png", voc_masks()["2007_000003"])
    write_image(root / "JPEGImages/2008_000009.jpg", 12, 16)
    lines = (["2007_000001", "2008_000009"] if form == "trainaug.txt" else
             [f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png" for s in ("2007_000001", "2008_000009")])
    write_lines(root / "ImageSets/Segmentation" / form, lines)
    assert dl.split_for("voc", "train", root) == "train_aug"
    assert dl.split_for("voc", "fit", root) == "train" and dl.split_for("voc", "test") == "val"
    data = dl.load_split("voc", root, "train_aug", **QUIET)
    assert data.names == ["JPEGImages/2007_000001.jpg", "JPEGImages/2008_000009.jpg"]
    assert data.labels.tolist() == [7, 2]
    truth = dl.ground_truth("voc", root, "train_aug", data)
    np.testing.assert_array_equal(truth.masks[0], (aug == 8).astype(np.uint8))


def test_voc_missing_and_objectless_masks(tmp_path, capsys) -> None:
    root = voc_tree(tmp_path)
    (root / "SegmentationClass/2007_000002.png").unlink()
    train_list = root / "ImageSets/Segmentation/train.txt"
    with pytest.raises(CamlabError, match=re.escape(f"{train_list}, line 2: mask ") + ".*2007_000002.png is missing"):
        dl.load_split("voc", root, "train", **QUIET)
    empty = np.zeros((16, 20), np.uint8)
    empty[0, :] = 255
    write_palette_png(root / "SegmentationClass/2007_000002.png", empty)
    with pytest.raises(CamlabError, match=r"mask .*2007_000002.png holds no object class"):
        dl.load_split("voc", root, "train", **QUIET)
    data = dl.load_split("voc", root, "train", skip_bad=True, **QUIET)
    assert data.names == ["JPEGImages/2007_000001.jpg"] and data.skipped == ["JPEGImages/2007_000002.jpg"]
    assert data.present.shape == (1, 20) and "2007_000002.jpg" in capsys.readouterr().err
    write_palette_png(root / "SegmentationClass/2007_000002.png", np.full((16, 20), 21, np.uint8))
    with pytest.raises(CamlabError, match="holds the value 21"):
        dl.load_split("voc", root, "train", **QUIET)


def test_present_survives_take_to_and_the_cache(tmp_path) -> None:
    root = voc_tree(tmp_path)
    cache = tmp_path / "cache"
    first = dl.load_split("voc", root, "train", img_size=8, cache_dir=cache, progress=False)
    again = dl.load_split("voc", root, "train", img_size=8, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 1 and torch.equal(first.present, again.present)
    sub = again.take(torch.tensor([1, 0, 1])).to("cpu")
    assert torch.equal(sub.present, first.present[[1, 0, 1]]) and sub.labels.tolist() == [0, 14, 0]
    with pytest.raises(ValueError, match="present must be bool 2×20"):
        ImageSet(first.images, first.labels, first.names, first.classes, present=first.present[:, :3])
    with pytest.raises(ValueError, match="present must be bool"):
        ImageSet(first.images, first.labels, first.names, first.classes, present=first.present.long())


# ---------------------------------------------------------------------- lab and split roles
def test_lab_truth_is_the_split_masks(tiny_lab) -> None:
    data = dl.load_split("lab", tiny_lab, "test", **QUIET)
    truth = dl.ground_truth("lab", tiny_lab, "test", data)
    expected = np.stack([read_mask(tiny_lab / "test_masks" / n) for n in data.names]).astype(np.uint8)
    assert truth.boxes is None and truth.masks.dtype == np.uint8 and set(np.unique(truth.masks)) == {0, 1}
    np.testing.assert_array_equal(truth.masks, expected)
    sub = data.take(torch.tensor([4, 2]))
    np.testing.assert_array_equal(dl.ground_truth("lab", tiny_lab, "test", sub).masks, expected[[4, 2]])
    import shutil
    shutil.rmtree(tiny_lab / "test_masks")
    assert dl.ground_truth("lab", tiny_lab, "test", data) is None
    assert dl.ground_truth("folder", tiny_lab, "test", data) is None
    assert dl.ground_truth("cifar10", tiny_lab, "test", data) is None


def test_split_roles() -> None:
    table = {(d, r): dl.split_for(d, r) for d in ("lab", "cifar10", "folder", "wsol") for r in ROLES}
    assert [table[("lab", r)] for r in ROLES] == ["train", "train", "test"]
    assert [table[("folder", r)] for r in ROLES] == [table[("cifar10", r)] for r in ROLES]
    assert [table[("wsol", r)] for r in ROLES] == ["train", "val", "test"]
    assert all(split in FORMATS[d].splits for (d, _), split in table.items())
    assert FORMATS["voc"].splits == ("train", "val", "train_aug")
    assert list(FORMATS) == ["lab", "cifar10", "folder", "voc", "multi", "wsol"]
    assert all(fmt.root_hint and set(fmt.roles) == set(ROLES) for fmt in FORMATS.values())
    with pytest.raises(ValueError, match="needs the dataset's root"):
        dl.split_for("voc", "train")
    with pytest.raises(CamlabError, match="unknown role 'val'"):
        dl.split_for("lab", "val")
    with pytest.raises(CamlabError, match="unknown split 'val' for --dataset lab; choose one of train, test"):
        dl.load_split("lab", "anywhere", "val", **QUIET)
    assert main.build_parser().parse_args(["--dataset", "voc"]).dataset == "voc"


# ---------------------------------------------------------------- scoring on these trees
def _trained_on(tmp_path: Path, monkeypatch, root: Path, meta: Path, exp_id: str):
    import train
    monkeypatch.chdir(tmp_path)
    train.train(train.RunConfig(mode="CAM", exp_id=exp_id, dataset="wsol", data_root=str(root), metadata=str(meta),
                                epochs=1, img_size=32, batch_size=8, weights="none", device="cpu", progress=False))


def test_wsol_boxes_are_scored_by_box_measures_only(tmp_path, monkeypatch) -> None:
    """CUB-like: boxes, no masks. MaxBoxAccV2 and localisation against the metadata's boxes (two on
    one image: the better counts); no mean IoU and no PxAP, which need masks."""

    root, meta = cub_tree(tmp_path)
    _trained_on(tmp_path, monkeypatch, root, meta, "cub")
    report = wsol_report("cub", n_threshold=10, device="cpu")
    assert "pxap" not in report and "test_iou" not in report
    # per image only the faithfulness of the maps, which needs no ground truth
    assert set(report["per_image"]) == {"y", "o", "drop", "increase", "o_mean", "drop_mean", "increase_mean", "deletion", "insertion"}
    assert report["n_test"] == 2 and report["data_root"] == str(root.resolve())
    exp = Experiment.load("cub", "cpu")
    data, truth = exp.test
    preds, cams = protocol_cams(exp.net, data, 32, "wsolevaluation")
    assert report["max_box_acc_v2"] == max_box_acc(cams, truth.boxes)["mean"]
    assert {k: report[k] for k in ("top1_loc", "gt_known_loc")} == localization_accuracy(
        cams, preds, data.labels.numpy(), truth.boxes)


def test_openimages_masks_are_scored_by_pxap_with_ignore_left_out(tmp_path, monkeypatch) -> None:
    """OpenImages-like: the mean IoU's threshold is chosen on val (never test); PxAP counts only
    pixels outside the ignore regions; no box measures (wsolevaluation has none for OpenImages)."""

    root, meta, expected = openimages_tree(tmp_path)
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        write_lines(meta / "test" / name, (meta / "val" / name).read_text().split("\n"))
    _trained_on(tmp_path, monkeypatch, root, meta, "oi")
    report = wsol_report("oi", n_threshold=10, device="cpu")
    assert "max_box_acc_v2" not in report and "top1_loc" not in report
    assert report["n_threshold_images"] == 2 and report["n_test"] == 2
    exp = Experiment.load("oi", "cpu")
    data, truth = exp.test
    _, cams = protocol_cams(exp.net, data, 32, "wsolevaluation")
    gt = np.stack(list(expected.values()))
    counted = gt != 255
    # the pooled pixels outside the ignore regions, as one 1×1×M "image"
    by_hand = pxap(cams[counted][None, None], (gt[counted] == 1)[None, None])
    assert report["pxap"] == pytest.approx(by_hand, abs=1e-12)
    assert 0 <= report["test_iou"] <= 1 and len(report["per_image"]["iou"]) == 2


def _openimages_test_split(tmp_path: Path) -> tuple[Path, Path]:
    root, meta, _ = openimages_tree(tmp_path)
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        write_lines(meta / "test" / name, (meta / "val" / name).read_text().split("\n"))
    return root, meta


@pytest.mark.parametrize("tree", ["cub", "openimages"])
def test_a_streamed_test_split_is_scored_in_chunks_as_the_whole_split(tree, tmp_path, monkeypatch) -> None:
    """iou.py --wsol --data_in_memory never: the test split read per batch, each batch's maps
    scored and dropped (research.wsol.streamed_report), gives the whole-split report's every
    measure, its per-image values (what the paired bootstrap resamples) and its figure's examples;
    only mean IoU, which needs every map of two splits, is left out."""
    root, meta = cub_tree(tmp_path) if tree == "cub" else _openimages_test_split(tmp_path)
    _trained_on(tmp_path, monkeypatch, root, meta, tree)
    whole = wsol_report(tree, n_threshold=10, device="cpu", faith_steps=3)
    chunked = wsol_report(tree, n_threshold=10, device="cpu", faith_steps=3, in_memory="never", workers=0)
    assert chunked.pop("streamed") is True and "streamed" not in whole
    measures = ({"max_box_acc_v2", "top1_loc", "gt_known_loc"} if tree == "cub" else {"pxap"}) | {
        "test_acc", "avg_drop", "increase_conf", "deletion_auc", "insertion_auc"}
    assert measures <= set(chunked) and set(chunked) - {"per_image", "examples"} <= set(whole)
    for key in set(chunked) - {"per_image", "examples"}:
        assert chunked[key] == pytest.approx(whole[key], abs=1e-12), key
    assert set(chunked["per_image"]) == set(whole["per_image"]) - {"iou"}
    for key, values in chunked["per_image"].items():
        np.testing.assert_allclose(values, whole["per_image"][key], rtol=0, atol=1e-12, err_msg=key)
    assert len(chunked["examples"]) == len(whole["examples"]) == 2
    for ours, theirs in zip(chunked["examples"], whole["examples"]):
        assert ours["name"] == theirs["name"] and ours["box"] == theirs["box"] and ours["gt_box"] == theirs["gt_box"]
        assert np.array_equal(ours["image"], theirs["image"]) and np.array_equal(ours["cam"], theirs["cam"])


def test_a_streamed_split_of_another_format_is_refused_in_one_line(tmp_path, monkeypatch, tiny_lab) -> None:
    import train
    from research.wsol import streamed_report
    monkeypatch.chdir(tmp_path)
    train.train(train.RunConfig(mode="CAM", exp_id="lab", data_root=str(tiny_lab), epochs=1, img_size=32,
                                batch_size=8, weights="none", device="cpu", progress=False))
    exp = Experiment.load("lab", "cpu")
    with pytest.raises(CamlabError, match="lab: its test split is streamed .* only for --dataset wsol"):
        streamed_report(exp, exp.read_test("never"))


def test_iou_py_wsol_scores_a_streamed_test_split(tmp_path, monkeypatch, capsys) -> None:
    """python iou.py --wsol --data_in_memory auto, the test split over auto's share of the RAM:
    one note says it streams, and the methods table holds the in-memory run's box measures."""
    import iou
    from camlab import stream
    root, meta = cub_tree(tmp_path)
    _trained_on(tmp_path, monkeypatch, root, meta, "cub")
    argv = ["--wsol", "--n_threshold", "10", "--device", "cpu", "--faith_steps", "2", "--workers", "0"]
    assert iou.main(argv + ["--data_in_memory", "always"]) == 0
    whole = (tmp_path / "report" / "methods.csv").read_text()
    capsys.readouterr()
    monkeypatch.setattr(stream, "available_ram", lambda: 1000)  # 2 images at 12×16 take 1,152 bytes
    assert iou.main(argv) == 0
    err = capsys.readouterr().err
    assert "the test split of wsol: 2 images" in err and "streamed from disk by 0 worker processes" in err
    rows = [dict(zip(*[line.split(",") for line in (whole.splitlines()[0], row)]))
            for row in (whole.splitlines()[1], (tmp_path / "report" / "methods.csv").read_text().splitlines()[1])]
    assert rows[0]["max_box_acc_v2"] == rows[1]["max_box_acc_v2"] and rows[0]["top1_loc"] == rows[1]["top1_loc"]
    assert rows[1]["test_iou"] == "-" and rows[0]["deletion_auc"] == rows[1]["deletion_auc"] != "-"
