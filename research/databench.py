"""The data-path benchmark (``bench.py --tasks data``): images per second and peak memory of the streaming path (``camlab.stream``) at 1, 2 and 4 workers against the in-memory path, on a generated tree of photo-sized JPEGs; and one training epoch with its evaluation pass over a generated split whose decoded size is far above the run's peak memory, at two sizes (memory flat in the number of images).

Every measurement runs in a fresh process whose memory (the main process's resident set, and
the proportional set size of it and its DataLoader workers together, so pages the workers share
with it count once) is sampled from ``/proc`` every 20 ms by this one. The generated trees go to a
temporary folder (``--data_root`` is not used), removed afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from camlab import stream, tables

ROOT = Path(__file__).resolve().parents[1]
WORKER_COUNTS = (1, 2, 4)
PHOTO = (375, 500)  # (H, W): a typical ILSVRC / CUB photo
SAMPLE_S = 0.02
# --quick or not: the mixed-size tree of the paths' rates, and the largest bounded split (its
# decoded size, 12,000 × 500×375 photos and 1,500 test ones = 7.1 GiB, far above a streamed run's
# peak of about 1 GB; the bounded runs are at a quarter of it and at it)
DATA_SIZES = {True: dict(n_images=240, n_big=600), False: dict(n_images=2000, n_big=12000)}


def write_jpeg_tree(root: Path, n_train: int, n_test: int, mixed: bool, seed: int = 0) -> Path:
    """The lab layout of smooth photo-like JPEGs (quality 90, ~``PHOTO`` in size: each side drawn
    within ±10 % when ``mixed``, else all exactly ``PHOTO``), 10 classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PHOTO[0] + 40, :PHOTO[1] + 50].astype(np.float32)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            h, w = (int(rng.integers(PHOTO[0] * 9 // 10, PHOTO[0] * 11 // 10 + 1)),
                    int(rng.integers(PHOTO[1] * 9 // 10, PHOTO[1] * 11 // 10 + 1))) if mixed else PHOTO
            base = np.stack([np.sin(xx[:h, :w] / rng.uniform(8, 40) + c) * np.cos(yy[:h, :w] / rng.uniform(8, 40))
                             for c in range(3)], -1)
            image = np.clip(127 + 100 * base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / f"{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            lines.append(f"{i:05d}.jpg {i % 10}")
        (root / f"{split}_cls.txt").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------- memory sampling
def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return found


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(argv: list[str], env: dict | None = None, cwd: Path | str = ROOT) -> tuple[int, str, str, dict]:
    """Run ``argv`` (a Python command) and sample its memory: (exit code, stdout, stderr,
    {peak_rss_main_mb, peak_pss_tree_mb, seconds})."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peak = {"rss": 0, "pss": 0}

    def sample() -> None:
        while proc.poll() is None:
            peak["rss"] = max(peak["rss"], _kib(f"/proc/{proc.pid}/status", "VmRSS:"))
            peak["pss"] = max(peak["pss"], sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in _tree(proc.pid)))
            time.sleep(SAMPLE_S)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    return proc.returncode, out, err, {"peak_rss_main_mb": round(peak["rss"] / 1024, 1),
                                        "peak_pss_tree_mb": round(peak["pss"] / 1024, 1),
                                        "seconds": round(time.perf_counter() - start, 2)}


def _pass_child(root: str, path: str, workers: int, img_size: int, batch_size: int) -> None:
    """In a fresh process: the split read the ``path`` way (``always`` decodes it into memory
    first), then two passes over it in a seeded training order, each batch resized and
    normalised as ``run_epoch`` feeds the model; prints the timings as JSON."""
    import torch

    import dataloader
    from camlab import stream
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = dataloader.load_split("lab", Path(root), "train", img_size=img_size, cache_dir=None, progress=False,
                                 in_memory=path, workers=workers)
    load_s, passes = time.perf_counter() - t0, []
    for epoch in (1, 2):
        t0 = time.perf_counter()
        order = dataloader.batch_indices(torch.arange(len(data)), batch_size, True, 0, epoch)
        for _, stored in stream.batches(data, order, torch.device("cpu")):
            dataloader.to_model_input(stored, img_size)
        passes.append(time.perf_counter() - t0)
    print(json.dumps({"n": len(data), "load_s": load_s, "pass_s": passes}))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"]


def bench_paths(root: Path, img_size: int, batch_size: int, workers: tuple[int, ...] = WORKER_COUNTS) -> list[dict]:
    """One row per path: in memory (decode, then passes from the tensor) and streamed at each
    worker count; images/s of the first and second pass (the in-memory path's first includes its
    decode, the streamed path's its workers' start), and peak memory."""
    rows = []
    for path, w in [("always", 0)] + [("never", w) for w in workers]:
        code, out, err, mem = run_measured(_python(
            f"from research.databench import _pass_child; _pass_child({str(root)!r}, {path!r}, {w}, {img_size}, {batch_size})"),
            env={"OMP_NUM_THREADS": "1"})
        if code != 0:
            raise RuntimeError(f"the {path} pass failed: {err.strip().splitlines()[-1] if err.strip() else code}")
        r = json.loads(out.strip().splitlines()[-1])
        first = r["load_s"] + r["pass_s"][0]
        rows.append({"path": "in memory" if path == "always" else "streamed", "workers": w, "n_images": r["n"],
                     "first_pass_img_per_s": round(r["n"] / first, 1),
                     "second_pass_img_per_s": round(r["n"] / r["pass_s"][1], 1),
                     "decode_s": round(r["load_s"], 2) if path == "always" else None, **mem})
    return rows


def bench_bounded(top: Path, n_big: int, img_size: int, batch_size: int, workers: int = 2) -> list[dict]:
    """``main.py`` trains one epoch (and runs its validation and test passes) on a split of uniform
    ``PHOTO``-sized JPEGs, stored at that size, streamed (``--data_in_memory never``), at
    ``n_big`` // 4 and ``n_big`` training images: its decoded size, its peak memory and their ratio."""
    rows = []
    for n in (n_big // 4, n_big):
        root = write_jpeg_tree(top / f"big{n}", n, max(n // 8, 10), mixed=False, seed=n)
        argv = [sys.executable, str(ROOT / "main.py"), "--data_root", str(root), "--img_size", str(img_size),
                "--batch_size", str(batch_size), "--epochs", "1", "--weights", "none", "--device", "cpu", "--quiet",
                "--data_in_memory", "never", "--workers", str(workers), "--exp_id", f"databench_{n}", "--overwrite"]
        with tempfile.TemporaryDirectory() as cwd:  # the run's checkpoints/ go there
            code, out, err, mem = run_measured(argv, cwd=cwd)
            if code != 0:
                raise RuntimeError(f"the bounded run failed: {err.strip().splitlines()[-1] if err.strip() else code}")
            meta = write_wsol_metadata(root, top / f"big{n}_meta")
            ckpt = Path(cwd) / "checkpoints" / f"databench_{n}" / "best.pth"
            s_code, s_out, s_err, s_mem = run_measured(_python(
                f"from research.databench import _score_child; _score_child({str(root)!r}, {str(meta)!r}, "
                f"{str(ckpt)!r}, {img_size}, {batch_size}, {workers})"), env={"OMP_NUM_THREADS": "1"})
        if s_code != 0:
            raise RuntimeError(f"the bounded scoring failed: {s_err.strip().splitlines()[-1] if s_err.strip() else s_code}")
        decoded = (n + max(n // 8, 10)) * 3 * PHOTO[0] * PHOTO[1]
        score = json.loads(s_out.strip().splitlines()[-1])
        rows.append({"n_train": n, "n_test": max(n // 8, 10), "decoded_mb": round(decoded / 2**20, 1), **mem,
                     "decoded_over_peak": round(decoded / 2**20 / mem["peak_pss_tree_mb"], 2),
                     "test_acc": _accuracy(out), "scored": score["n_images"],
                     "scored_decoded_mb": round(score["n_images"] * 3 * PHOTO[0] * PHOTO[1] / 2**20, 1),
                     "scoring_peak_pss_tree_mb": s_mem["peak_pss_tree_mb"], "scoring_peak_rss_main_mb": s_mem["peak_rss_main_mb"],
                     "scoring_seconds": s_mem["seconds"], "max_box_acc_v2": score["max_box_acc_v2"]["mean"]})
    return rows


def write_wsol_metadata(root: Path, meta: Path) -> Path:
    """wsolevaluation's metadata for the lab-layout tree at ``root``: its train images as the
    ``test`` split (ids ``train/<name>``, each with the central box of half its sides), so a
    scoring pass reads as many images as the training epoch did."""
    entries = [line.split() for line in (root / "train_cls.txt").read_text().splitlines() if line.strip()]
    h, w = PHOTO
    ids = [f"train/{name}" for name, _ in entries]
    files = {"image_ids.txt": ids, "class_labels.txt": [f"{i},{label}" for i, (_, label) in zip(ids, entries)],
             "image_sizes.txt": [f"{i},{w},{h}" for i in ids],
             "localization.txt": [f"{i},{w // 4},{h // 4},{3 * w // 4},{3 * h // 4}" for i in ids]}
    for split in ("train", "test"):
        (meta / split).mkdir(parents=True, exist_ok=True)
        for name, lines in files.items():
            text = "" if split == "train" and name in ("localization.txt", "image_sizes.txt") else "\n".join(lines) + "\n"
            (meta / split / name).write_text(text)
    return meta


def _score_child(root: str, meta: str, ckpt: str, img_size: int, batch_size: int, workers: int) -> None:
    """In a fresh process: the checkpoint's WSOL scores over the streamed ``test`` split, as JSON."""
    import torch

    import model
    from research.streamscore import score_model
    torch.set_num_threads(1)
    net, _ = model.load_checkpoint(Path(ckpt))
    print(json.dumps(score_model(net, root, meta, "test", img_size=img_size, batch_size=batch_size,
                                 in_memory="never", workers=workers)))


def _accuracy(out: str) -> float | None:
    found = [line for line in out.splitlines() if line.startswith("test accuracy ")]
    return float(found[-1].split()[2]) if found else None


def run_data_bench(img_size: int = 224, batch_size: int = 32, quick: bool = False, n_images: int = 0,
                   n_big: int = 0, train_size: int = 32) -> dict:
    """Both parts of the data task; the result's ``data`` entry of ``bench.py``'s JSON."""
    sizes = DATA_SIZES[quick]
    n_images, n_big = n_images or sizes["n_images"], n_big or sizes["n_big"]
    with tempfile.TemporaryDirectory(prefix="camlab_databench_") as top:
        print(f"[data] writing {n_images} JPEGs of about {PHOTO[1]}x{PHOTO[0]}", flush=True)
        tree = write_jpeg_tree(Path(top) / "tree", n_images, 2, mixed=True)
        print(f"[data] in memory and streamed at {', '.join(map(str, WORKER_COUNTS))} workers, {img_size} px", flush=True)
        paths = bench_paths(tree, img_size, batch_size)
        print(f"[data] one streamed training epoch on {n_big // 4} and {n_big} stored {PHOTO[1]}x{PHOTO[0]} images "
              f"at --img_size {train_size}", flush=True)
        bounded = bench_bounded(Path(top), n_big, train_size, batch_size)
    return {"img_size": img_size, "batch_size": batch_size, "cpu_count": os.cpu_count(), "paths": paths,
            "bounded": bounded, "bounded_img_size": train_size}


def data_table(result: dict) -> str:
    """Markdown: the paths' rates and memory, then the bounded runs."""
    rows = [[r["path"], r["workers"] or "-", r["n_images"], f"{r['first_pass_img_per_s']:.1f}",
             f"{r['second_pass_img_per_s']:.1f}", f"{r['peak_rss_main_mb']:.0f}", f"{r['peak_pss_tree_mb']:.0f}"]
            for r in result["paths"]]
    text = tables.markdown(["data path", "workers", "images", "first pass img/s", "second pass img/s",
                            "peak RSS main MB", "peak PSS with workers MB"], rows, [tables.LEFT] + [tables.RIGHT] * 6)
    bounded = [[r["n_train"], r["n_test"], f"{r['decoded_mb']:.0f}", f"{r['peak_pss_tree_mb']:.0f}",
                f"{r['decoded_over_peak']:.1f}×", f"{r['seconds']:.0f}", r.get("scored", "-"),
                _f(r.get("scoring_peak_pss_tree_mb"), ".0f"), _f(r.get("scoring_seconds"), ".0f")] for r in result["bounded"]]
    return text + "\n" + tables.markdown(["train images", "test images", "decoded MB", "training peak PSS MB (main + workers)",
                                          "decoded / peak", "seconds", "scored images", "scoring peak PSS MB",
                                          "scoring seconds"], bounded, [tables.RIGHT] * 9)


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# the training splits of the WSOL benchmarks (wsolevaluation's metadata; ILSVRC's: the ImageNet train list)
BENCHMARK_SPLITS = {"CUB train": 5_994, "OpenImages train": 29_819, "ILSVRC train": 1_281_167}


def benchmark_paths(available: int, img_size: int = 224) -> str:
    """Markdown: the path ``--data_in_memory auto`` takes for each benchmark's training split (all
    of mixed sizes, so stored at ``img_size``²) with ``available`` bytes of RAM available."""
    rows = []
    for name, n in BENCHMARK_SPLITS.items():
        size = stream.decoded_bytes(n, img_size, img_size)
        streamed = size > stream.RAM_SHARE * available
        rows.append([name, f"{n:,}", stream.gib(size), "streamed" if streamed else "in memory"])
    return tables.markdown(["split", "images", f"decoded at {img_size}", f"auto, {stream.gib(available)} available"],
                           rows, [tables.LEFT, tables.RIGHT, tables.RIGHT, tables.LEFT])
