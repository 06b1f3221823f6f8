"""Tests of dataloader.py and synthetic.py (imported as gen): the synthetic generator (deterministic, masks and labels true to the
drawing), the three readers on tiny files, the decode cache, error messages, and the per-batch
steps (batch_indices, to_model_input). Everything runs on a few 8-64 px images."""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import camlab.images
import dataloader as dl
from camlab import synthetic as gen
from camlab import utils
from camlab.images import ImageSet, _read_cache, decode_image, read_mask
from camlab.synthetic import SPLITS
from camlab.utils import IMAGENET_MEAN, IMAGENET_STD, CamlabError

QUIET = dict(cache_dir=None, progress=False)


# ---------------------------------------------------------------------------------- helpers
def write_png(path: Path, array: np.ndarray) -> Path:
    """Write an RGB (H×W×3) or any cv2-writable array (grey, BGRA, 16-bit) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)
    return path


def solid(value, size=(8, 8)) -> np.ndarray:
    """uint8 H×W×3 image of one RGB colour."""
    return np.full((*size, 3), value, np.uint8)


def write_lab(root: Path, split: str, images: list[np.ndarray], labels: list, lines=None) -> Path:
    """A lab-layout split: ``<root>/<split>/NN.png`` and ``<root>/<split>_cls.txt``."""
    for i, image in enumerate(images):
        write_png(root / split / f"{i:02d}.png", image)
    if lines is None:
        lines = [f"{i:02d}.png {label}" for i, label in enumerate(labels)]
    (root / f"{split}_cls.txt").write_text("\n".join(lines) + "\n")
    return root


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


SEED = 3


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    gen.generate_synthetic(root, seed=SEED, n_train=12, n_test=20, progress=False)
    return root


# ------------------------------------------------------------------------ synthetic dataset
def test_generation_is_deterministic_per_seed(tmp_path, synthetic):
    gen.generate_synthetic(tmp_path / "same", seed=SEED, n_train=12, n_test=20, progress=False)
    gen.generate_synthetic(tmp_path / "other", seed=SEED + 1, n_train=12, n_test=20, progress=False)
    same, other = tree_bytes(tmp_path / "same"), tree_bytes(synthetic)
    assert same == other
    different = tree_bytes(tmp_path / "other")
    assert different["train/00000.png"] != same["train/00000.png"]
    assert different["meta.json"] != same["meta.json"]
    assert not list(tmp_path.glob("*.tmp-*"))  # the temporary folder was renamed into place


def test_generation_refuses_an_existing_root(synthetic):
    with pytest.raises(CamlabError, match="already exists"):
        gen.generate_synthetic(synthetic, n_train=1, n_test=1, progress=False)


@pytest.mark.parametrize("split", SPLITS)
def test_files_and_labels_are_what_was_drawn(synthetic, split):
    lines = (synthetic / f"{split}_cls.txt").read_text().splitlines()
    assert len(lines) == (12 if split == "train" else 20)
    for index, line in enumerate(lines):
        name, label = line.split()
        assert name == f"{index:05d}.png"
        sample = gen.draw_sample(gen._sample_rng(SEED, split, index), int(label))
        assert sample.label == int(label) == gen._split_labels(SEED, split, len(lines))[index]
        np.testing.assert_array_equal(read_rgb(synthetic / split / name), sample.image)
        np.testing.assert_array_equal(read_mask(synthetic / f"{split}_masks" / name), sample.mask)


def test_part_is_inside_the_mask_and_has_the_class_colour():
    palette = np.array([style.rgb for style in gen.PART_STYLES], dtype=float)
    shares = []
    for i in range(100):
        label = i % len(gen.PART_STYLES)
        sample = gen.draw_sample(np.random.default_rng(i), label)
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        assert sample.part_mask.any() and not (sample.part_mask & ~sample.mask).any()
        mean_colour = sample.image[sample.part_mask].mean(axis=0)
        assert np.abs(mean_colour - palette[label]).max() < 25  # jitter ±20, noise averages out
        assert np.linalg.norm(palette - mean_colour, axis=1).argmin() == label
        shares.append(sample.part_mask.sum() / sample.mask.sum())
    assert 0.05 < np.mean(shares) <= 0.3


def test_meta_and_segmentation_examples(synthetic):
    meta = json.loads((synthetic / "meta.json").read_text())
    assert meta["classes"] == gen.SYNTHETIC_CLASSES and meta["seed"] == SEED
    assert meta["n_train"] == 12 and meta["n_test"] == 20 and meta["mean_part_share"] <= 0.3
    files = tree_bytes(synthetic)
    sources = sorted(p.name for p in (synthetic / "test_seg_source").iterdir())
    assert sources == sorted(p.name for p in (synthetic / "test_seg").iterdir())
    assert sources == sorted(meta["seg_examples"])
    labels = dict(line.split() for line in (synthetic / "test_cls.txt").read_text().splitlines())
    assert sorted(int(labels[name]) for name in sources) == list(range(10))  # one per class
    for name in sources:  # copies, same stems
        assert files[f"test_seg_source/{name}"] == files[f"test/{name}"]
        assert files[f"test_seg/{name}"] == files[f"test_masks/{name}"]


def test_lab_reader_on_the_synthetic_dataset(synthetic):
    data = dl.load_split("lab", synthetic, "test", **QUIET)
    assert len(data) == 20 and data.images.shape == (20, 3, 64, 64)
    assert data.images.is_contiguous() and data.classes == gen.SYNTHETIC_CLASSES
    np.testing.assert_array_equal(data.images[4].permute(1, 2, 0).numpy(),
                                  read_rgb(synthetic / "test" / "00004.png"))


def test_missing_default_root_is_generated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("generate_synthetic", "generate_multi"):
        generate = getattr(gen, name)
        monkeypatch.setattr(gen, name, lambda root, seed, progress, body_evidence, generate=generate:
                            generate(root, seed, 10, 10, progress=progress, body_evidence=body_evidence))
    data = dl.load_split("lab", dl.default_root("lab"), "train", **QUIET)
    assert len(data) == 10 and (tmp_path / "data" / "synthetic" / "meta.json").is_file()
    # another body-evidence setting has a root of its own, generated at that setting
    dl.load_split("lab", dl.default_root("lab", 0.25), "test", **QUIET)
    assert json.loads((tmp_path / "data" / "synthetic_be0.25" / "meta.json").read_text())["body_evidence"] == 0.25
    # and so does the multi-object set, in VOC's layout
    data = dl.load_split("multi", dl.default_root("multi", 0.25), "val", **QUIET)
    assert len(data) == 10 and data.present is not None
    meta = json.loads((tmp_path / "data" / "synthetic_multi_be0.25" / "meta.json").read_text())
    assert meta["body_evidence"] == 0.25 and meta["generator"] == gen.MULTI_GENERATOR


# ---------------------------------------------------------------------------------- readers
def test_lab_reader(tmp_path):
    root = write_lab(tmp_path, "train", [solid(10), solid(200), solid((1, 2, 3))], [2, 0, 1],
                     lines=["00.png 2", "", "01.png 0", "02.png   1  "])
    data = dl.load_split("lab", root, "train", num_classes=3, **QUIET)
    assert data.names == ["00.png", "01.png", "02.png"]
    assert data.labels.tolist() == [2, 0, 1] and data.labels.dtype == torch.int64
    assert data.classes == ["0", "1", "2"]
    assert data.images.dtype == torch.uint8 and data.images.shape == (3, 3, 8, 8)
    assert data.images[1].unique().tolist() == [200]
    assert data.images[2, :, 0, 0].tolist() == [1, 2, 3]  # RGB order kept
    # no meta.json and no class count: ten classes, named as CIFAR-10's (the course's data)
    assert dl.load_split("lab", root, "train", **QUIET).classes == [n.decode() for n in CIFAR_NAMES]


def test_lab_reader_takes_classes_from_meta_json(tmp_path):
    root = write_lab(tmp_path, "test", [solid(0)], [1])
    (root / "meta.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    assert dl.load_split("lab", root, "test", **QUIET).classes == ["cat", "dog"]
    with pytest.raises(CamlabError, match="2 classes in .*meta.json, but 5 were asked for"):
        dl.load_split("lab", root, "test", num_classes=5, **QUIET)


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
               b"ship", b"truck"]


def write_cifar(root: Path, per_batch: int = 2, data_batch_1=None) -> Path:
    """A tiny CIFAR-10 pickle tree shaped like the real one (rows: R, G, B planes of 32×32)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
        obj = data_batch_1 if name == "data_batch_1" and data_batch_1 is not None else batch
        # protocol 4 stores bytes natively; protocol 5 would pickle arrays via _frombuffer
        (base / name).write_bytes(pickle.dumps(obj, protocol=4))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR_NAMES}, protocol=4))
    return root


def test_cifar10_reader(tmp_path):
    root = write_cifar(tmp_path)
    train = dl.load_split("cifar10", root, "train", **QUIET)
    test = dl.load_split("cifar10", root, "test", **QUIET)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.classes == [n.decode() for n in CIFAR_NAMES]
    batch = pickle.loads((root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    row = batch[b"data"][1]
    assert train.labels[3].item() == batch[b"labels"][1]
    np.testing.assert_array_equal(train.images[3, 0].numpy(), row[:1024].reshape(32, 32))  # red
    np.testing.assert_array_equal(train.images[3, 2].numpy(), row[2048:].reshape(32, 32))  # blue
    assert test.names == ["00000.png", "00001.png"]


class _Python2Pickler(pickle._Pickler):
    """Writes every str and bytes as Python 2 wrote its str (BINSTRING), as in the real
    CIFAR-10 files, which are then loaded with ``encoding="bytes"``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_as_binstring(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_as_binstring


def test_cifar10_reader_reads_python2_pickles(tmp_path):
    root = write_cifar(tmp_path)
    data = np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8)
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump({"data": data, "labels": [7, 8]})
    # the real files name numpy 1's module path
    raw = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(raw)
    train = dl.load_split("cifar10", root, "train", **QUIET)
    assert train.labels[:2].tolist() == [7, 8]
    np.testing.assert_array_equal(train.images[:2].reshape(2, 3072).numpy(), data)


class _Evil:
    """Unpickling this runs ``touch <marker>``: what a malicious download could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_cifar10_reader_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"
    root = write_cifar(tmp_path / "data", data_batch_1={b"data": _Evil(marker)})
    with pytest.raises(CamlabError, match=r"data_batch_1: refusing to load global (posix|os)\.system"):
        dl.load_split("cifar10", root, "train", **QUIET)
    assert not marker.exists()


def test_cifar10_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(CamlabError, match="cannot download CIFAR-10 .*name resolution"):
        dl.load_split("cifar10", tmp_path, "train", download=True, **QUIET)


def test_folder_reader(tmp_path):
    write_png(tmp_path / "train" / "cat" / "a.png", solid(1))
    write_png(tmp_path / "train" / "cat" / "b.png", solid(2))
    write_png(tmp_path / "train" / "dog" / "c.png", solid(3))
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image: skipped")
    write_png(tmp_path / "test" / "cat" / "d.png", solid(4))
    write_png(tmp_path / "test" / "dog" / "e.png", solid(5))
    data = dl.load_split("folder", tmp_path, "train", **QUIET)
    assert data.classes == ["cat", "dog"]
    assert data.names == ["cat/a.png", "cat/b.png", "dog/c.png"]
    assert data.labels.tolist() == [0, 0, 1]
    assert data.images[:, 0, 0, 0].tolist() == [1, 2, 3]
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(CamlabError, match="same class folders.*bird"):
        dl.load_split("folder", tmp_path, "train", **QUIET)


# ------------------------------------------------------------------------- image decoding
def test_grey_rgba_and_16_bit_images_become_rgb8(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[...] = (10, 20, 30, 40)
    deep = np.full((8, 8, 3), 257 * 100, np.uint16)
    deep[0, 0] = 65535
    paths = [write_png(tmp_path / "grey.png", grey), write_png(tmp_path / "rgba.png", bgra),
             write_png(tmp_path / "deep.png", deep)]
    grey_rgb, rgba_rgb, deep_rgb = (decode_image(p) for p in paths)
    for image in (grey_rgb, rgba_rgb, deep_rgb):
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
    np.testing.assert_array_equal(grey_rgb, np.repeat(grey[..., None], 3, axis=2))
    assert rgba_rgb[0, 0].tolist() == [30, 20, 10]
    assert deep_rgb[0, 0].tolist() == [255] * 3 and deep_rgb[1, 1].tolist() == [100] * 3


def test_a_split_of_mixed_formats_and_sizes_loads_with_exact_colours(tmp_path):
    """Through load_split (not just decode_image): 8- and 16-bit grey, BGRA with its alpha
    dropped, 16-bit colour and 16-bit BGRA, all of different sizes, in one split. Solid
    images keep their exact values when resized, so each pixel value can be checked."""
    images = {  # file: (array for write_png: 3 channels RGB, 4 channels BGRA; expected RGB)
        "a_grey8.png": (np.full((5, 7), 77, np.uint8), [77] * 3),
        "b_grey16.png": (np.full((6, 6), 65535, np.uint16), [255] * 3),
        "c_bgra8.png": (np.full((8, 8, 4), (10, 20, 30, 0), np.uint8), [30, 20, 10]),
        "d_rgb16.png": (np.full((9, 4, 3), (257 * 60, 257 * 50, 257 * 40), np.uint16), [60, 50, 40]),
        "e_bgra16.png": (np.full((3, 3, 4), (0, 257 * 128, 65535, 257), np.uint16), [255, 128, 0]),
    }
    for name, (array, _) in images.items():
        write_png(tmp_path / "train" / "x" / name, array)
    write_png(tmp_path / "test" / "x" / "t.png", solid(1))
    data = dl.load_split("folder", tmp_path, "train", img_size=8, **QUIET)
    assert data.images.shape == (5, 3, 8, 8) and data.images.dtype == torch.uint8
    for i, (name, (_, rgb)) in enumerate(images.items()):
        assert data.names[i] == f"x/{name}"
        assert data.images[i].flatten(1).T.unique(dim=0).tolist() == [rgb], name


def test_mixed_sizes_are_resized_to_img_size(tmp_path):
    root = write_lab(tmp_path, "train", [solid(50, (8, 8)), solid(90, (12, 20)), solid(70, (8, 8))],
                     [0, 1, 2])
    data = dl.load_split("lab", root, "train", img_size=16, **QUIET)
    assert data.images.shape == (3, 3, 16, 16)
    assert [data.images[i].unique().tolist() for i in range(3)] == [[50], [90], [70]]


def test_read_mask(tmp_path):
    mask = np.array([[0, 0], [255, 255]], np.uint8)
    assert read_mask(write_png(tmp_path / "m.png", mask)).tolist() == [[False, False], [True, True]]
    assert read_mask(write_png(tmp_path / "one.png", mask // 255)).tolist() == [[False, False], [True, True]]
    with pytest.raises(CamlabError, match="grey.png is not binary: it holds the value 127"):
        read_mask(write_png(tmp_path / "grey.png", np.array([[0, 127], [128, 255]], np.uint8)))
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(CamlabError, match="broken.png"):
        read_mask(tmp_path / "broken.png")


# ----------------------------------------------------------------------------------- errors
def test_missing_root(tmp_path):
    with pytest.raises(CamlabError, match=r"data root '.*nowhere' does not exist \(it must hold"):
        dl.load_split("lab", tmp_path / "nowhere", "train", **QUIET)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(CamlabError, match="unknown dataset 'imagenet'"):
        dl.load_split("imagenet", tmp_path, "train", **QUIET)
    with pytest.raises(CamlabError, match="unknown split 'val'"):
        dl.load_split("lab", tmp_path, "val", **QUIET)


def test_undecodable_image_is_named(tmp_path):
    root = write_lab(tmp_path, "train", [solid(0)], [0], lines=["00.png 0", "bad.png 1"])
    (root / "train" / "bad.png").write_bytes(b"this is not a PNG")
    with pytest.raises(CamlabError, match=r"cannot read image .*bad\.png"):
        dl.load_split("lab", root, "train", **QUIET)


@pytest.mark.parametrize("skip_bad", [False, True])  # skip_bad skips damaged images, not bad lines
@pytest.mark.parametrize("line, message", [
    ("01.png x", r"line 2: label 'x' is not an integer"),
    ("01.png 12", r"line 2: label 12 is out of range \[0, 10\)"),
    ("01.png -1", r"line 2: label -1 is out of range"),
    ("01.png", r"line 2: missing label"),
    ("01.png 1 2", r"line 2: image .*01\.png 1 is missing"),  # split at the last space: the name is "01.png 1"
    ("missing.png 1", r"line 2: image .*missing\.png is missing"),
])
def test_annotation_errors_name_file_and_line(tmp_path, line, message, skip_bad):
    """A bad line is a mistake in the dataset's description: an error naming the file
    and line, one line long, with or without skip_bad (which only skips damaged images)."""
    root = write_lab(tmp_path, "train", [solid(0), solid(1)], [], lines=["00.png 0", line])
    with pytest.raises(CamlabError, match=r"train_cls\.txt, " + message) as info:
        dl.load_split("lab", root, "train", skip_bad=skip_bad, **QUIET)
    assert len(str(info.value).splitlines()) == 1


def test_line_numbers_are_the_editors(tmp_path):
    """A BOM is not part of the first name, and only newlines (LF, CRLF, CR) count as line
    breaks: str.splitlines would also break at the form feed and U+2028 and misnumber line 4."""
    root = write_lab(tmp_path, "train", [solid(0), solid(1)], [], lines=[])
    text = "\ufeff00.png 0\r\n01.png\x0c1\r\n\r\n01.png\u20281 x\r\n"
    (root / "train_cls.txt").write_bytes(text.encode("utf-8"))
    with pytest.raises(CamlabError, match=r"train_cls\.txt, line 4: label 'x' is not an integer"):
        dl.load_split("lab", root, "train", **QUIET)
    (root / "train_cls.txt").write_bytes(text.rsplit("\r\n", 2)[0].encode("utf-8"))
    assert dl.load_split("lab", root, "train", **QUIET).names == ["00.png", "01.png"]


def test_unreadable_annotation_file_is_one_line(tmp_path):
    """Bytes that are not UTF-8: one line naming the file (not a UnicodeDecodeError)."""
    root = write_lab(tmp_path, "train", [solid(0)], [0])
    (root / "train_cls.txt").write_bytes(b"00.png 0\n\xff\xfe 1\n")
    with pytest.raises(CamlabError, match=r"cannot read annotation file .*train_cls\.txt: .*utf-8"):
        dl.load_split("lab", root, "train", **QUIET)


# --------------------------------------------------------------------------------- skip_bad
def damaged_files(folder: Path) -> list[str]:
    """Three undecodable images in ``folder``: text, a truncated PNG, an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.png").write_bytes(b"this is not a PNG")
    (folder / "cut.png").write_bytes(utils.encode_png(solid(7))[:40])
    (folder / "empty.png").write_bytes(b"")
    return ["text.png", "cut.png", "empty.png"]


def test_skip_bad_leaves_out_every_damaged_image_and_says_which(tmp_path, capsys):
    """Without skip_bad the first damaged file is an error; with it, every damaged file is
    left out with its label, the rest stay aligned, and ONE warning names them all."""
    root = write_lab(tmp_path, "train", [solid(10), solid(20), solid(30)], [0, 1, 2])
    bad = damaged_files(root / "train")
    lines = ["00.png 0", "text.png 5", "01.png 1", "cut.png 6", "empty.png 7", "02.png 2"]
    (root / "train_cls.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CamlabError, match=r"cannot read image .*text\.png"):
        dl.load_split("lab", root, "train", **QUIET)
    data = dl.load_split("lab", root, "train", skip_bad=True, **QUIET)
    assert data.names == ["00.png", "01.png", "02.png"] and data.labels.tolist() == [0, 1, 2]
    assert [data.images[i].unique().tolist() for i in range(3)] == [[10], [20], [30]]
    assert data.skipped == bad
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [f"warning: skipped 3 unreadable images in {root / 'train'}: "
                        "text.png, cut.png, empty.png"]


def test_skip_bad_in_a_folder_dataset_names_files_by_class(tmp_path, capsys):
    """In an ImageFolder tree the warning names files by class folder, as ImageSet.names does."""
    write_png(tmp_path / "train" / "cat" / "a.png", solid(1))
    damaged_files(tmp_path / "train" / "dog")
    write_png(tmp_path / "train" / "dog" / "b.png", solid(2))
    write_png(tmp_path / "test" / "cat" / "c.png", solid(3))
    write_png(tmp_path / "test" / "dog" / "d.png", solid(4))
    data = dl.load_split("folder", tmp_path, "train", skip_bad=True, **QUIET)
    assert data.names == ["cat/a.png", "dog/b.png"] and data.labels.tolist() == [0, 1]
    assert data.skipped == ["dog/cut.png", "dog/empty.png", "dog/text.png"]
    assert "dog/cut.png, dog/empty.png, dog/text.png" in capsys.readouterr().err


def test_skip_bad_is_part_of_the_cache_key_and_its_warning_outlives_the_cache(tmp_path, capsys,
                                                                          monkeypatch):
    """A split cached with skipping still warns when read back, and is not reused
    without skip_bad (which must fail on the damaged file instead)."""
    root = write_lab(tmp_path / "data", "train", [solid(10)], [0], lines=["00.png 0", "cut.png 1"])
    damaged_files(root / "train")
    cache = tmp_path / "cache"
    first = dl.load_split("lab", root, "train", cache_dir=cache, progress=False, skip_bad=True)
    assert capsys.readouterr().err.count("warning: skipped 1 unreadable image in") == 1

    def fail(path, max_pixels=None):
        raise AssertionError(f"decoded {path} although it is cached")
    monkeypatch.setattr(camlab.images, "decode_image", fail)
    again = dl.load_split("lab", root, "train", cache_dir=cache, progress=False, skip_bad=True)
    assert again.names == first.names == ["00.png"] and again.skipped == ["cut.png"]
    assert "skipped 1 unreadable image in" in capsys.readouterr().err and "cut.png" in str(again.skipped)
    monkeypatch.undo()
    with pytest.raises(CamlabError, match=r"cannot read image .*cut\.png"):  # not the cached split
        dl.load_split("lab", root, "train", cache_dir=cache, progress=False)


def test_skip_bad_with_no_decodable_image_is_an_error(tmp_path):
    """Skipping every image would leave an empty split that fails later, obscurely: an error now."""
    root = write_lab(tmp_path, "train", [], [], lines=["text.png 0", "cut.png 1", "empty.png 2"])
    damaged_files(root / "train")
    with pytest.raises(CamlabError, match=r"no image in .*train can be decoded: all 3 were skipped "
                                          r"\(the first: cannot read image .*text\.png"):
        dl.load_split("lab", root, "train", skip_bad=True, **QUIET)


# ------------------------------------------------------------------------------------ cache
def test_cache_is_read_back_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = write_lab(tmp_path / "data", "train", [solid(10), solid(20)], [0, 1])
    cache = tmp_path / "cache"
    first = dl.load_split("lab", root, "train", cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.pt"))) == 1

    def fail(path, max_pixels=None):
        raise AssertionError(f"decoded {path} although it is cached")
    monkeypatch.setattr(camlab.images, "decode_image", fail)
    again = dl.load_split("lab", root, "train", cache_dir=cache, progress=False)
    assert torch.equal(again.images, first.images) and again.names == first.names

    write_png(root / "train" / "01.png", solid(99))
    os.utime(root / "train" / "01.png", ns=(1, 1))  # a different mtime even on coarse clocks
    with pytest.raises(AssertionError, match="decoded"):
        dl.load_split("lab", root, "train", cache_dir=cache, progress=False)
    monkeypatch.undo()
    changed = dl.load_split("lab", root, "train", cache_dir=cache, progress=False)
    assert changed.images[1].unique().tolist() == [99]


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = write_lab(tmp_path / "data", "train", [solid(10)], [0])
    cache = tmp_path / "cache"
    dl.load_split("lab", root, "train", cache_dir=cache, progress=False)
    (cache_file,) = cache.glob("*.pt")
    cache_file.write_bytes(b"truncated")
    data = dl.load_split("lab", root, "train", cache_dir=cache, progress=False)
    assert data.images.unique().tolist() == [10]
    assert _read_cache(cache_file) is not None  # rewritten whole


# ------------------------------------------------------------------ batches and model input
def test_batch_indices_partition_and_reproducible_order():
    indices = torch.arange(5, 50, 2)  # e.g. one k-fold part: a subset of 0..N-1
    batches = dl.batch_indices(indices, 4, shuffle=True, seed=7, epoch=1)
    assert [len(b) for b in batches] == [4] * 5 + [3]
    assert torch.equal(torch.cat(batches).sort().values, indices)
    again = dl.batch_indices(indices, 4, shuffle=True, seed=7, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not torch.equal(torch.cat(dl.batch_indices(indices, 4, True, 7, 2)), torch.cat(batches))
    assert not torch.equal(torch.cat(dl.batch_indices(indices, 4, True, 8, 1)), torch.cat(batches))
    assert torch.equal(torch.cat(dl.batch_indices(indices, 4, False, 7, 1)), indices)


def test_to_model_input_normalises_exactly():
    colour = (200, 100, 50)
    images = torch.tensor(colour, dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 8, 8)
    for size in (16, 8, 4):  # upsampling, same size, shrinking (antialiased)
        x = dl.to_model_input(images, size)
        assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
        for c in range(3):
            expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            torch.testing.assert_close(x[:, c], torch.full_like(x[:, c], expected), atol=1e-5, rtol=0)


def test_to_model_input_flips_the_chosen_images():
    images = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    plain = dl.to_model_input(images, 12)
    flipped = dl.to_model_input(images, 12, flip=torch.tensor([True, False]))
    torch.testing.assert_close(flipped[0], plain[0].flip(-1))
    torch.testing.assert_close(flipped[1], plain[1])


def test_image_set_to_and_len():
    data = ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]),
                       ["a.png", "b.png"], ["x", "y"])
    moved = data.to("cpu")
    assert len(moved) == 2 and moved.names == data.names and moved.labels.dtype == torch.int64
    with pytest.raises(ValueError):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), ["a", "b"], ["x"])


def test_empty_annotation_file_is_named(tmp_path):
    root = tmp_path / "lab"
    write_lab(root, "train", [solid(10)], [0])
    (root / "train_cls.txt").write_text("\n\n")
    with pytest.raises(CamlabError, match="train_cls.txt lists no images"):
        dl.load_split("lab", root, "train", img_size=8, **QUIET)
