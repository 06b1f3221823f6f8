"""Fuzz tests: camlab's promise that bad input gives a CamlabError (one line, naming the culprit;
the CLI turns it into exit code 2) and never a stray ValueError, cv2.error or a silent NaN.

Hand-written tests check the errors someone thought of; these feed seeded random garbage to
the functions that take outside input: image and mask files (``decode_image``, ``read_mask``),
annotation files (``load_split`` on the lab layout) and the metric functions of iou.py. Every
call must either work (and its result be sane: the right shape and dtype, finite, fractions in
[0, 1]) or raise CamlabError. Each test runs all its cases and then lists every case that broke
the promise, so one run shows the whole picture. The seeds are fixed: a failure reproduces.
"""
from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

import dataloader as dl
import iou
from camlab import utils
from camlab.boxes import BOX_IOU_THRESHOLDS, PROTOCOLS, box_iou, cam_box, localization_accuracy, max_box_acc
from camlab.images import decode_image, read_mask
from camlab.metrics import batch_iou, iou_curve, pxap, threshold_masks
from camlab.utils import CamlabError


# ------------------------------------------------------------------------------ harness
def _run_cases(cases: list[tuple[str, Callable[[], Any], Callable[[Any], None]]]) -> int:
    """Run ``(description, call, check)`` cases: ``check(call())`` when the call works, nothing
    when it raises CamlabError. Every other exception, and every failed check, is collected and
    reported together at the end (with its case), instead of stopping at the first. Returns
    how many calls worked (so that a function refusing everything is noticed)."""
    broken, worked = [], 0
    for description, call, check in cases:
        try:
            result = call()
        except CamlabError as err:
            problem = _bad_message(err)
        except Exception as err:  # noqa: BLE001 - exactly what this test is looking for
            problem = f"raised {type(err).__name__}: {' '.join(str(err).split())[:150]}"
        else:
            try:
                check(result)
                problem = None
                worked += 1
            except AssertionError as err:
                problem = f"returned {_short(result)}: {err}"
        if problem:
            broken.append(f"{description} -> {problem}")
    assert not broken, f"{len(broken)} of {len(cases)} cases broke the promise:\n" + "\n".join(broken[:25])
    return worked


def _bad_message(err: CamlabError) -> str | None:
    """Why a CamlabError's message is unfit for the CLI's one-line report (None: it is fit)."""
    text = str(err)
    if not text.strip():
        return "CamlabError with an empty message"
    if len(text.splitlines()) != 1:
        return f"CamlabError message spans lines: {text!r}"
    return None


def _short(value: Any) -> str:
    """A result, shortened for the failure list (arrays by dtype and shape)."""
    if isinstance(value, np.ndarray):
        return f"array {value.dtype}{value.shape}"
    return repr(value)[:120]


def _describe(value: Any) -> str:
    """A compact description of a fuzz argument for the failure list."""
    if isinstance(value, np.ndarray):
        flags = []
        if value.dtype.kind == "f" and value.size:
            flags += ["nan"] * bool(np.isnan(value).any()) + ["inf"] * bool(np.isinf(value).any())
            finite = value[np.isfinite(value)]
            if finite.size and (finite.min() < 0 or finite.max() > 1):
                flags.append(f"range [{finite.min():.2g}, {finite.max():.2g}]")
        return f"{value.dtype}{list(value.shape)}" + (f"({', '.join(flags)})" if flags else "")
    return repr(value)[:60]


def _is_fraction(x: Any) -> bool:
    """A metric's fraction must be a finite float in [0, 1]: NaN or 1.2 is a silent bug."""
    return isinstance(x, (float, np.floating)) and math.isfinite(x) and 0.0 <= x <= 1.0


# --------------------------------------------------------------------- image and mask files
def _real_sources(rng: np.random.Generator) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (extension, array as cv2 writes it: BGR) of small random images."""
    colour = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    mask = (rng.random((6, 5)) > 0.5).astype(np.uint8) * 255
    deep = rng.integers(0, 65536, (4, 4, 3), dtype=np.uint16)
    return {"png": (".png", colour), "jpg": (".jpg", colour), "bmp": (".bmp", colour),
            "mask.png": (".png", mask), "16bit.png": (".png", deep)}


def _real_images(rng: np.random.Generator) -> dict[str, bytes]:
    """Valid encodings of small random images: the seeds for truncation and bit flips."""
    return {name: cv2.imencode(ext, array)[1].tobytes() for name, (ext, array) in _real_sources(rng).items()}


HEADERS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"GIF89a", b"II*\x00", b"MM\x00*",
           b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"P5\n", b"P6\n4 4\n255\n", b"#?RADIANCE\n", b"\x00\x00\x00\x0cjP  ")


def _byte_cases(seed: int, n: int) -> list[tuple[str, bytes]]:
    """n (label, bytes): empty, random, truncated or bit-flipped real files, and real headers
    followed by garbage; plus every real file whole (the calls must work on those)."""
    rng = np.random.default_rng(seed)
    real = _real_images(rng)
    cases = [(f"whole {name}", data) for name, data in real.items()] + [("empty", b"")]
    for i in range(n):
        kind = i % 4
        if kind == 0:
            data = rng.bytes(int(rng.integers(1, 600)))
            cases.append((f"random {len(data)} bytes", data))
        elif kind == 1:
            name, data = list(real.items())[int(rng.integers(len(real)))]
            cut = int(rng.integers(0, len(data)))
            cases.append((f"{name} cut at {cut} of {len(data)}", data[:cut]))
        elif kind == 2:
            name, data = list(real.items())[int(rng.integers(len(real)))]
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), int(rng.integers(1, 6))):
                flipped[pos] ^= int(rng.integers(1, 256))
            cases.append((f"{name} with flipped bytes", bytes(flipped)))
        else:
            header = HEADERS[int(rng.integers(len(HEADERS)))]
            cases.append((f"header {header[:8]!r} + garbage", header + rng.bytes(int(rng.integers(0, 300)))))
    return cases


def _check_image(result: Any) -> None:
    """What decode_image promises: uint8 H×W×3 (RGB) of at least one pixel."""
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8, "not a uint8 array"
    assert result.ndim == 3 and result.shape[2] == 3 and result.shape[0] > 0 and result.shape[1] > 0, \
        "not H×W×3"


def _check_mask(result: Any) -> None:
    """What read_mask promises: a bool H×W mask of at least one pixel."""
    assert isinstance(result, np.ndarray) and result.dtype == np.bool_, "not a bool array"
    assert result.ndim == 2 and result.size > 0, "not H×W"


def _must_name(path: Path, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call``, whose CamlabError must also name ``path``, the file the user has to fix."""
    def run():
        try:
            return call()
        except CamlabError as err:
            if str(path) not in str(err):
                raise AssertionError(f"the error does not name {path}: {err}") from None
            raise
    return run


@pytest.mark.parametrize("reader, check", [(decode_image, _check_image), (read_mask, _check_mask)],
                         ids=["decode_image", "read_mask"])
def test_image_readers_on_damaged_files(tmp_path, reader, check):
    """Damaged, truncated and random files, a missing file and a folder: each read works or
    is a CamlabError naming the file, never a cv2.error or a ValueError from numpy."""
    cases = []
    for i, (label, data) in enumerate(_byte_cases(seed=101, n=120)):
        path = tmp_path / f"{i:03d}.img"
        path.write_bytes(data)
        cases.append((f"#{i} {label}", _must_name(path, lambda p=path: reader(p)), check))
    for label, path in (("a missing file", tmp_path / "absent.png"), ("a folder", tmp_path)):
        cases.append((label, _must_name(path, lambda p=path: reader(p)), check))
    _run_cases(cases)


def test_the_undamaged_files_read_back(tmp_path):
    """The harness would also pass if every call raised CamlabError: the undamaged originals of
    the fuzz cases must read back, exactly where the format is lossless."""
    sources = _real_sources(np.random.default_rng(101))
    for name, data in _real_images(np.random.default_rng(101)).items():
        (tmp_path / name).write_bytes(data)
    for name in ("png", "bmp"):
        np.testing.assert_array_equal(decode_image(tmp_path / name), sources[name][1][..., ::-1])
    assert decode_image(tmp_path / "jpg").shape == (6, 5, 3)
    deep = sources["16bit.png"][1]
    np.testing.assert_array_equal(decode_image(tmp_path / "16bit.png"), np.rint(deep[..., ::-1] / 257))
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png"), sources["mask.png"][1] > 0)


# ------------------------------------------------------------------------ annotation files
IMAGES = ("00.png", "01.png", "02.png")  # valid images in the split folder
BAD_IMAGE = "bad.png"                     # an undecodable one (skipped under skip_bad)
ODD_CHARS = "é中\u00a0\u2028\u2029\x85\x0b\x0c\x1c\ufeff\x00\x7f\U0001F600\\/'\""
NUMBERS = ("0", "9", "10", "-1", "+1", "1.5", "1e3", "nan", "inf", "0x1", "1_0", "٣", "007",
           str(2 ** 70), "-" + "9" * 30, "9" * 5000)


def _random_token(rng: np.random.Generator) -> str:
    """Printable ASCII and awkward characters (separators, BOM, NUL, emoji, quotes)."""
    pool = string.printable.strip() + ODD_CHARS
    return "".join(pool[i] for i in rng.integers(0, len(pool), int(rng.integers(1, 12))))


def _random_line(rng: np.random.Generator) -> str:
    """One annotation line (without its newline): three in four good (or blank), so that a
    good share of the files load; else one of many bad kinds."""
    name = (IMAGES + (BAD_IMAGE,))[int(rng.integers(4))]
    label, number = int(rng.integers(0, 10)), NUMBERS[int(rng.integers(len(NUMBERS)))]
    token, odd = _random_token(rng), ODD_CHARS[int(rng.integers(len(ODD_CHARS)))]
    if rng.random() < 0.75:
        good = (f"{name} {label}", f"{name}\t{label}", f" {name}  {label} ", "", " \t ", f"{name}\x0c{label}")
        return good[int(rng.choice(6, p=[.6, .1, .1, .08, .06, .06]))]
    bad = (f"{name} {number}", f"{name}", f"{number}", f"{name} {label} {token}", token,
           f"{token} {label}", f"{name}{odd}{label}")
    return bad[int(rng.integers(len(bad)))].replace("\r", "").replace("\n", "")


def _expected(lines: list[str], image_dir: Path) -> tuple[str, Any]:
    """What load_split must do with ``lines``, from the file format's definition:
    ("line", n) an error at line n; ("empty", None) no image listed; ("ok", [(name, label)])."""
    entries = []
    for number, line in enumerate(lines, start=1):
        fields = line.strip().rsplit(None, 1)  # the last field is the label; a name may hold spaces
        if not fields:
            continue
        try:
            label = int(fields[1]) if len(fields) == 2 else None
        except ValueError:
            label = None
        if label is None or not 0 <= label < 10 or not (image_dir / fields[0]).is_file():
            return "line", number
        entries.append((fields[0], label))
    return ("ok", entries) if entries else ("empty", None)


def _annotation_case(root: Path, lines: list[str], newline: str, skip_bad: bool):
    """(call, check) for one annotation file; both compare with :func:`_expected`."""
    ann = root / "train_cls.txt"
    ann.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    outcome, detail = _expected(lines, root / "train")
    good = [(n, label) for n, label in detail or [] if n != BAD_IMAGE] if outcome == "ok" else []
    has_bad = outcome == "ok" and len(good) < len(detail)
    expected_error = {"line": f"{ann}, line {detail}:", "empty": f"annotation file {ann} lists no images",
                      "ok": BAD_IMAGE if has_bad else "<no error>"}[outcome]

    def call():
        try:
            return dl.load_split("lab", root, "train", cache_dir=None, progress=False, skip_bad=skip_bad)
        except CamlabError as err:
            if expected_error not in str(err):
                raise AssertionError(f"expected {expected_error!r} in the error, got {str(err)!r}") from None
            raise

    def check(data):
        assert outcome == "ok" and (skip_bad or not has_bad) and good, f"loaded, expected {expected_error!r}"
        assert list(zip(data.names, data.labels.tolist())) == good, "wrong names or labels"
    return call, check


def test_annotation_files_of_random_lines(tmp_path):
    """Random annotation files (LF or CRLF, with or without skip_bad) load exactly the
    listed images, or fail at the first bad line, naming the file and that line's number."""
    root = tmp_path / "lab"
    for name in IMAGES:
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "train" / name).write_bytes(utils.encode_png(np.full((4, 4, 3), IMAGES.index(name), np.uint8)))
    (root / "train" / BAD_IMAGE).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rng = np.random.default_rng(202)
    cases = []
    for i in range(150):
        lines = [_random_line(rng) for _ in range(int(rng.integers(0, 8)))]
        newline, skip_bad = ("\n", "\r\n")[int(rng.integers(2))], bool(rng.integers(2))
        call, check = _annotation_case(root, lines, newline, skip_bad)
        cases.append((f"#{i} skip_bad={skip_bad} lines={lines!r:.300}", _run_now(call), check))
    _run_cases(cases)


def _run_now(call: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``call`` now (the annotation file is rewritten for the next case) and replay its
    outcome when the harness calls it."""
    try:
        result = call()
    except Exception as err:  # noqa: BLE001 - replayed to the harness, which sorts them
        error = err  # ``err`` itself is unbound when the except block ends

        def replay():
            raise error
        return replay
    return lambda: result


def test_undecodable_annotation_bytes(tmp_path):
    """Random bytes as an annotation file: a CamlabError naming the file (or, rarely, a load)."""
    root = tmp_path / "lab"
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(303)
    cases = []
    for i in range(30):
        data = rng.bytes(int(rng.integers(0, 200)))
        (root / "train_cls.txt").write_bytes(data)
        call = _run_now(_must_name(root / "train_cls.txt", lambda: dl.load_split(
            "lab", root, "train", cache_dir=None, progress=False)))
        cases.append((f"#{i} {data[:40]!r}", call, lambda data: None))
    _run_cases(cases)


# ------------------------------------------------------------------------------ iou metrics
DTYPES = (np.float64, np.float32, np.int64, np.uint8, np.bool_)


def _shape(rng: np.random.Generator) -> tuple[int, ...]:
    """Mostly N×H×W, sometimes another ndim; a dimension is 0 now and then."""
    ndim = int(rng.choice([0, 1, 2, 3, 3, 3, 4]))
    return tuple(int(d) for d in rng.choice([0, 1, 2, 3, 4, 5, 6], ndim, p=[.06, .1, .15, .15, .18, .18, .18]))


def _array(rng: np.random.Generator, shape: tuple[int, ...] | None = None, dtype=None) -> np.ndarray:
    """Random values of a random dtype: in [0, 1], mask-like, or wide; floats get NaN or inf now
    and then."""
    shape = _shape(rng) if shape is None else shape
    dtype = DTYPES[int(rng.integers(len(DTYPES)))] if dtype is None else dtype
    mode = int(rng.integers(4))
    values = (rng.random(shape), rng.integers(0, 2, shape) * 255, rng.integers(0, 2, shape),
              rng.uniform(-3, 3, shape))[mode]
    if np.dtype(dtype).kind == "f" and values.size and rng.random() < 0.25:
        values = values.astype(np.float64)
        values.flat[int(rng.integers(values.size))] = (np.nan, np.inf, -np.inf)[int(rng.integers(3))]
    with np.errstate(invalid="ignore"):
        return values.astype(dtype) if dtype is not np.uint8 else np.clip(values, 0, 255).astype(dtype)


def _pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays, of one shape half the time (so the working path is exercised too)."""
    first = _array(rng)
    second = _array(rng, first.shape if rng.random() < 0.5 else None)
    return first, second


SCALARS = (0.0, 0.15, 0.5, 1.0, 1.5, -0.2, np.nan, np.inf, 0.01, 0.3)


def _scalar(rng: np.random.Generator) -> float:
    """A threshold or fraction: usual values, and the out-of-range, NaN and inf ones."""
    return float(SCALARS[int(rng.integers(len(SCALARS)))])


def _coordinate(rng: np.random.Generator) -> Any:
    """A box coordinate: mostly a small int, else a float, NaN, inf or a huge number (whose
    products overflow int64, or even float64)."""
    return (int(rng.integers(-3, 9)), int(rng.integers(-3, 9)), float(rng.uniform(-3, 9)),
            np.nan, np.inf, 2 ** 40, 1e300)[int(rng.choice(7, p=[.7, .15, .05, .025, .025, .025, .025]))]


def _box(rng: np.random.Generator) -> list:
    """A valid box (x0 <= x1, y0 <= y1) half the time, now and then scaled by 2**40; else 4
    random coordinates mostly, sometimes 0, 3 or 5."""
    if rng.random() < 0.5:
        scale = 2 ** 40 if rng.random() < 0.2 else 1
        return [v * scale for v in _valid_box(rng)]
    return [_coordinate(rng) for _ in range(int(rng.choice([4, 0, 3, 5], p=[.85, .05, .05, .05])))]


def _box_lists(rng: np.random.Generator, n: int) -> list[list[list]]:
    """Per image 0-2 boxes, all of them valid half the time (else anything :func:`_box` makes);
    the number of lists matches n most of the time."""
    count = n if rng.random() < 0.8 else int(rng.integers(0, 4))
    make = _box if rng.random() < 0.5 else _valid_box
    return [[make(rng) for _ in range(int(rng.integers(0, 3)))] for _ in range(count)]


def _valid_box(rng: np.random.Generator) -> list[int]:
    """A small box with x0 <= x1 and y0 <= y1, so that the working path is exercised too."""
    x0, y0 = (int(v) for v in rng.integers(-1, 6, 2))
    return [x0, y0, x0 + int(rng.integers(0, 4)), y0 + int(rng.integers(0, 4))]


def _cams(rng: np.random.Generator) -> np.ndarray:
    """CAM-like input: a float N×H×W in [0, 1] half the time, anything otherwise."""
    if rng.random() < 0.5:
        return rng.random((int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6))))
    return _array(rng)


def _fractions_array(result: Any) -> None:
    """A per-image or per-threshold result: finite floats in [0, 1]."""
    assert isinstance(result, np.ndarray), "not an array"
    assert result.dtype.kind == "f" and np.isfinite(result).all(), "not finite floats"
    assert ((result >= 0) & (result <= 1)).all(), "outside [0, 1]"


def _fraction(result: Any) -> None:
    """A single metric value: a finite float in [0, 1]."""
    assert _is_fraction(result), "not a finite fraction in [0, 1]"


def _fraction_dict(keys: set) -> Callable[[Any], None]:
    """A check for a dict of metric values: exactly ``keys``, each a finite fraction."""
    def check(result: Any) -> None:
        assert isinstance(result, dict) and set(result) == keys, "wrong keys"
        assert all(_is_fraction(v) for v in result.values()), "a value is not a finite fraction in [0, 1]"
    return check


def _masks_2d(rng: np.random.Generator) -> np.ndarray:
    """A plausible H×W mask (bool or 0/255 uint8), of any size including empty."""
    mask = rng.random((int(rng.integers(0, 6)), int(rng.integers(0, 6)))) > 0.5
    return mask if rng.random() < 0.5 else mask.astype(np.uint8) * 255


def _cases_iou(rng):
    """iou on plausible 2-D masks (of any size, empty included) or on any two arrays."""
    pred, gt = (_masks_2d(rng), _masks_2d(rng)) if rng.random() < 0.5 else _pair(rng)
    return (iou.iou, (pred, gt), {}), _fraction


def _cases_batch_iou(rng):
    """batch_iou on same-shaped bool masks or on any two arrays."""
    if rng.random() < 0.5:  # masks as documented: of one shape, bool or 0/255 uint8
        shape = (int(rng.integers(0, 4)), *_masks_2d(rng).shape)[int(rng.integers(2)):]
        preds, gts = ((rng.random(shape) > 0.5).astype(bool) for _ in range(2))
    else:
        preds, gts = _pair(rng)
    return (batch_iou, (preds, gts), {}), _fractions_array


def _cases_threshold_masks(rng):
    """threshold_masks on CAMs and on anything else, at good and bad thresholds."""
    cams = _cams(rng)

    def check(result):  # (a 0-d input gives a numpy bool scalar: fine)
        assert np.asarray(result).dtype == np.bool_, "not bool"
        assert np.shape(result) == cams.shape, f"shape {np.shape(result)}, not {cams.shape}"
    return (threshold_masks, (cams, _scalar(rng)), {}), check


def _cases_iou_curve(rng):
    """iou_curve on CAMs with masks of their size, of another size (empty too), or anything."""
    cams, gts = _cams(rng), _array(rng)
    if rng.random() < 0.5 and cams.ndim == 3:  # as many masks, of the CAMs' size or any other
        size = cams.shape[1:] if rng.random() < 0.5 else tuple(rng.integers(0, 5, 2))
        gts = rng.random((len(cams), *size)) > 0.5
    thresholds = _array(rng, (int(rng.integers(0, 4)),), np.float64) if rng.random() < 0.5 else [0.2, 0.5]

    def check(result):
        _fractions_array(result)
        assert result.shape == (len(thresholds),), "not one value per threshold"
    return (iou_curve, (cams, gts, thresholds), {}), check


def _cases_pxap(rng):
    """pxap on CAMs with masks of their shape or anything, at good and bad intervals."""
    cams = _cams(rng)
    masks = (rng.random(cams.shape) > 0.5) if rng.random() < 0.5 else _array(rng)
    intervals = (0.01, 0.1, 0.25, 0.0, -0.1, np.nan, 2.0)  # the last four are bad
    interval = float(intervals[int(rng.choice(7, p=[.3, .2, .2, .075, .075, .075, .075]))])
    return (pxap, (cams, masks), {"interval": interval}), _fraction


def _cases_max_box_acc(rng):
    """max_box_acc on CAMs with (often bad) box lists and intervals."""
    cams = _cams(rng)
    boxes = _box_lists(rng, len(cams) if cams.ndim else 0)
    interval = float((0.1, 0.05, 0.0, np.nan)[int(rng.choice(4, p=[.6, .3, .05, .05]))])
    kwargs = {"multi_contour": bool(rng.integers(2)), "interval": interval}
    return (max_box_acc, (cams, boxes), kwargs), _fraction_dict({*BOX_IOU_THRESHOLDS, "mean"})


def _cases_cam_box(rng):
    """cam_box on maps of any scale, mostly 2-D, at good and bad fractions; a box must lie
    inside the map."""
    cam = _array(rng, _shape(rng)[:2] if rng.random() < 0.7 else None)

    def check(result):
        if result is None:
            return
        assert isinstance(result, tuple) and len(result) == 4, "not a 4-tuple"
        assert all(isinstance(v, int) for v in result), "not ints"
        x0, y0, x1, y1 = result
        assert cam.ndim == 2, f"a box for a CAM of shape {cam.shape}"
        assert 0 <= x0 <= x1 < cam.shape[1] and 0 <= y0 <= y1 < cam.shape[0], "box outside the map"
    return (cam_box, (cam, _scalar(rng)), {}), check


def _exact_box_iou(a: list, b: list) -> float | None:
    """IoU of two valid integer boxes in Python's exact integers (None for other input): the
    oracle that catches a result that is in [0, 1] but wrong (int64 overflow, say)."""
    if not all(len(box) == 4 and all(type(v) is int for v in box) and box[0] <= box[2] and box[1] <= box[3]
               for box in (a, b)):
        return None
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    sides = [max(0, min(a[i + 2], b[i + 2]) - max(a[i], b[i]) + 1) for i in (0, 1)]
    inter = sides[0] * sides[1]
    return inter / (area(a) + area(b) - inter)


def _cases_box_iou(rng):
    """box_iou on valid, huge and broken boxes; valid integer ones are checked exactly."""
    a, b = _box(rng), _box(rng)
    exact = _exact_box_iou(a, b)

    def check(result):
        _fraction(result)
        assert exact is None or result == pytest.approx(exact, rel=1e-9), f"the exact IoU is {exact}"
    return (box_iou, (a, b), {}), check


@pytest.mark.parametrize("power", [4, 16, 31, 32, 40])
def test_box_iou_of_a_box_and_its_half_is_half_at_every_scale(power):
    """Pixel coordinates of 2**31 and more are absurd, but must give the right IoU or a
    CamlabError, never a wrong number (int64 products of such sides overflow)."""
    s = 2 ** power
    try:
        value = box_iou((0, 0, 2 * s - 1, s - 1), (0, 0, s - 1, s - 1))
    except CamlabError:
        return
    assert value == pytest.approx(0.5, rel=1e-9)


def _cases_localization_accuracy(rng):
    """localization_accuracy on CAMs of any scale with predictions, labels and box lists
    whose counts mostly agree, at documented and bad fractions and thresholds."""
    protocol = str(rng.choice(list(PROTOCOLS)))  # wsolevaluation takes maps in [0, 1] only
    low, high = (-1, 2) if protocol == "camlab" else (0, 1)
    anything = _array(rng) if protocol == "camlab" else _cams(rng)  # any scale / CAM-like
    cams = anything if rng.random() < 0.4 else rng.uniform(low, high, (3, 5, 5))
    n = len(cams) if cams.ndim else 0
    pred = rng.integers(0, 3, n if rng.random() < 0.8 else int(rng.integers(0, 4)))
    labels = rng.integers(0, 3, n if rng.random() < 0.8 else int(rng.integers(0, 4)))
    if rng.random() < 0.5:  # documented values
        kwargs = {"fraction": float(rng.uniform(0, 1)), "iou_threshold": float(rng.uniform(0, 1))}
    else:
        kwargs = {"fraction": _scalar(rng), "iou_threshold": _scalar(rng)}
    kwargs["protocol"] = protocol
    return ((localization_accuracy, (cams, pred, labels, _box_lists(rng, n)), kwargs),
            _fraction_dict({"top1_loc", "gt_known_loc"}))


METRIC_CASES = {
    "iou": (_cases_iou, 40), "batch_iou": (_cases_batch_iou, 40),
    "threshold_masks": (_cases_threshold_masks, 40), "iou_curve": (_cases_iou_curve, 40),
    "pxap": (_cases_pxap, 40), "max_box_acc": (_cases_max_box_acc, 30),
    "cam_box": (_cases_cam_box, 50), "box_iou": (_cases_box_iou, 50),
    "localization_accuracy": (_cases_localization_accuracy, 40),
}


@pytest.mark.parametrize("name", list(METRIC_CASES))
def test_metrics_on_random_arrays(name):
    """Every metric of iou.py works (with a sane result) or raises CamlabError on random
    shapes, dtypes, NaN/inf and out-of-range values."""
    make, count = METRIC_CASES[name]
    rng = np.random.default_rng([404, list(METRIC_CASES).index(name)])
    cases = []
    for i in range(count):
        (fn, args, kwargs), check = make(rng)
        described = ", ".join([*map(_describe, args), *(f"{k}={_describe(v)}" for k, v in kwargs.items())])
        cases.append((f"#{i} {name}({described})", _bind(fn, args, kwargs), check))
    with np.errstate(all="ignore"):  # a NaN warning is no failure; a NaN result is
        worked = _run_cases(cases)
    assert worked >= len(cases) // 5, f"only {worked} of {len(cases)} random inputs were accepted"


def _bind(fn: Callable, args: tuple, kwargs: dict) -> Callable[[], Any]:
    """A zero-argument call (a lambda in the loop would see only the last case's arguments)."""
    return lambda: fn(*args, **kwargs)
