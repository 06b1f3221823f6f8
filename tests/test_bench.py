"""bench.py on a tiny setting: the JSON's shape, its arithmetic (ratios, GFLOP/s, FLOPs per
image against an independent count) and the command line's one-line errors. Never timings."""
from __future__ import annotations

import json
import sys
import math
from pathlib import Path

import cv2
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import bench
import dataloader
import model as model_lib
import train
from conftest import write_lab_layout
from bench import format_table
from research.bench import MODEL_TASKS, DEFAULT_TASKS, PIPELINES, BenchSettings, run_bench

SIZE, BATCH, N = 32, 4, 8
ROUNDS = 2
TINY = ["--device", "cpu", "--img_size", str(SIZE), "--batch_size", str(BATCH), "--n_train", str(N),
        "--n_infer", str(N), "--warmup_batches", "1", "--rounds", "1", "--workers", "0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Timings are never asserted; one thread keeps these runs fast on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return write_lab_layout(tmp_path_factory.mktemp("bench") / "tiny")


@pytest.fixture(scope="module")
def result(tiny_root: Path, tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))  # the decoded-split cache goes to ./data/cache
        settings = BenchSettings(device="cpu", img_size=SIZE, batch_size=BATCH, workers=0,
                                       n_train=N, n_infer=N, warmup_batches=1, rounds=ROUNDS,
                                       data_root=str(tiny_root))
        return run_bench(settings)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_json_shape(result: dict) -> None:
    assert set(result) == {"device", "torch", "settings", *DEFAULT_TASKS}
    assert result["settings"]["img_size"] == SIZE and result["settings"]["batch_size"] == BATCH
    # the % column's reference: this machine's fp32 matmul, measured (no --peak_gflops given)
    assert _positive(result["settings"]["peak_gflops"])
    assert result["settings"]["peak_source"] == "measured: fp32 matmul of two 1024×1024 matrices, best of 7, 1 threads"
    json.dumps(result, allow_nan=False)  # plain JSON, no NaN or infinities
    rows = result["wsol_eval"]  # the WSOL evaluator against its reference path, both steps and contour settings
    assert [(r["interval"], r["multi_contour"]) for r in rows] == [(0.01, True), (0.01, False), (0.001, True),
                                                                  (0.001, False)]
    assert all(r["size"] == SIZE and _positive(r["fast_maps_per_s"]) and _positive(r["ratio"]) for r in rows)
    for task in MODEL_TASKS:
        r = result[task]
        for name in PIPELINES:
            entry = r[name]
            assert entry["images"] == N
            for key in ("img_per_s", "seconds", "gflops_per_s", "pct_of_peak", "peak_rss_mb"):
                assert _positive(entry[key]), (task, name, key, entry.get(key))
        for key in ("fast_over_naive", "fast_over_bound", "gflop_per_image"):
            assert _positive(r[key]), (task, key)
    assert _positive(result["cam_train"]["fast_epoch_50k_s"])


def test_arithmetic_of_the_fields(result: dict) -> None:
    for r in result["wsol_eval"]:
        assert r["ratio"] == pytest.approx(r["fast_maps_per_s"] / r["reference_maps_per_s"])
    for task in MODEL_TASKS:
        r = result[task]
        assert r["fast_over_naive"] == pytest.approx(r["fast"]["img_per_s"] / r["naive"]["img_per_s"])
        assert r["fast_over_bound"] == pytest.approx(r["fast"]["img_per_s"] / r["bound"]["img_per_s"])
        for name in PIPELINES:
            e = r[name]
            assert e["img_per_s"] == pytest.approx(e["images"] / e["seconds"])
            assert len(e["img_per_s_rounds"]) == ROUNDS and e["img_per_s"] == max(e["img_per_s_rounds"])
            assert e["gflops_per_s"] == pytest.approx(r["gflop_per_image"] * e["img_per_s"])
            assert e["pct_of_peak"] == pytest.approx(100 * e["gflops_per_s"] / result["settings"]["peak_gflops"])
    assert result["cam_train"]["fast_epoch_50k_s"] == pytest.approx(
        50_000 / result["cam_train"]["fast"]["img_per_s"])


def _main(argv: list[str]) -> int:
    try:
        return bench.main(argv)
    except SystemExit as exit_:  # argparse exits on bad flags
        return exit_.code


def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_flops_per_image_match_an_independent_count(result: dict) -> None:
    """Counted here on a batch of 3 (bench counts on another size: FLOPs are linear in the
    batch), by hand-written steps."""
    net = model_lib.CAMModel(3, "none")
    x, y = torch.randn(3, 3, SIZE, SIZE), torch.tensor([0, 2, 1])

    def cam_step() -> None:
        F.cross_entropy(net(x)[0], y).backward()

    cam = _count(cam_step) / 3
    assert result["cam_train"]["gflop_per_image"] * 1e9 == pytest.approx(cam, rel=1e-9)
    net.eval()
    infer = _count(lambda: model_lib.localization_maps(net, x, (16, 16), "class")) / 3
    assert result["cam_infer"]["gflop_per_image"] * 1e9 == pytest.approx(infer, rel=1e-9)
    # SEG: the image and its half-size copy through the model; the convolutions dominate, and
    # at a quarter of the area the second pass costs a quarter: about 1.25 times CAM's count.
    net.train()
    seg = train.build_objective(train.RunConfig(mode="SEG"), ["a", "b", "c"])
    seg_flops = _count(lambda: seg(net, x, y, torch.Generator().manual_seed(0)).loss.backward()) / 3
    assert result["seg_train"]["gflop_per_image"] * 1e9 == pytest.approx(seg_flops, rel=1e-9)
    assert seg_flops == pytest.approx(1.25 * cam, rel=0.05)


def test_table_has_a_row_per_task(result: dict) -> None:
    table = format_table(result)
    models, evaluator = table.split("\n\n")
    lines = models.splitlines()
    assert lines[0].startswith("| task | naive img/s | fast img/s | bound img/s | fast/naive | fast/bound")
    assert "| fast GFLOP/s (% of matmul) |" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:]] == list(MODEL_TASKS)
    assert f"{result['cam_train']['fast_over_naive']:.2f}" in lines[2]
    rows = evaluator.splitlines()
    assert rows[0] == "| CAM threshold step | boxes | maps | map size | fast maps/s | reference maps/s | fast/reference |"
    assert [r.split(" | ")[:2] for r in rows[2:]] == [["| 0.01", "every contour"], ["| 0.01", "largest contour"],
                                                      ["| 0.001", "every contour"], ["| 0.001", "largest contour"]]


def test_cli_writes_json_and_keeps_an_existing_file(tiny_root: Path, tmp_path: Path, monkeypatch,
                                                    capsys) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report" / "bench.json"
    argv = TINY + ["--workers", "1", "--tasks", "cam_infer", "--data_root", str(tiny_root),
                   "--compile", "--out", str(out)]
    assert _main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data) == {"device", "torch", "settings", "cam_infer"}
    assert data["settings"]["workers"] == 1 and data["settings"]["compile"] is False
    assert "| cam_infer |" in printed and "--compile applies to CUDA only" in printed
    before = out.read_text()
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert out.read_text() == before


@pytest.mark.parametrize("extra, message", [
    (["--bogus"], "unrecognized arguments"),
    (["--tasks", "cam_nope"], "invalid choice"),
    (["--img_size", "0"], "--img_size must lie in [1, 1048576], got 0"),
    (["--workers", "-1"], "--workers must lie in [0, 64] (DataLoader processes), got -1"),
    (["--peak_gflops", "0"], "--peak_gflops must lie in (0, 1000000000], got 0"),
    (["--out", "../b.json"], "would write outside report/"),
    (["--out", "/tmp/b.json"], "would write outside report/"),
])
def test_cli_one_line_errors(extra: list[str], message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = _main(["--device", "cpu", "--out", "report/b.json"] + extra)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "report" / "b.json").exists() and not (tmp_path.parent / "b.json").exists()


def test_databench_tree_is_photo_sized_and_loads(tmp_path) -> None:
    from research import databench
    mixed = databench.write_jpeg_tree(tmp_path / "mixed", 4, 1, mixed=True)
    sizes = {cv2.imread(str(p)).shape[:2] for p in sorted((mixed / "train").iterdir())}
    assert len(sizes) > 1 and all(337 <= h <= 412 and 450 <= w <= 550 for h, w in sizes)
    uniform = databench.write_jpeg_tree(tmp_path / "uniform", 3, 1, mixed=False)
    data = dataloader.load_split("lab", uniform, "train", img_size=32, cache_dir=None, progress=False)
    assert tuple(data.images.shape) == (3, 3, *databench.PHOTO) and data.labels.tolist() == [0, 1, 2]


def test_databench_samples_a_child_process_memory() -> None:
    from research import databench
    code, out, _, mem = databench.run_measured(
        [sys.executable, "-c", "import time; b = bytearray(300 * 2**20); time.sleep(0.5); print(len(b))"])
    assert code == 0 and out.strip() == str(300 * 2**20)
    assert 300 <= mem["peak_rss_main_mb"] < 400 and 290 <= mem["peak_pss_tree_mb"] < 400


def test_databench_table() -> None:
    from research import databench
    row = dict(path="streamed", workers=2, n_images=10, first_pass_img_per_s=5.0, second_pass_img_per_s=6.25,
               peak_rss_main_mb=800.4, peak_pss_tree_mb=900.6)
    big = dict(n_train=40, n_test=10, decoded_mb=2700.0, peak_pss_tree_mb=900.0, decoded_over_peak=3.0, seconds=12.3,
               scored=40, scoring_peak_pss_tree_mb=850.2, scoring_seconds=9.6)
    lines = databench.data_table({"paths": [row], "bounded": [big]}).splitlines()
    assert lines[2] == "| streamed | 2 | 10 | 5.0 | 6.2 | 800 | 901 |"
    assert lines[-1] == "| 40 | 10 | 2700 | 900 | 3.0× | 12 | 40 | 850 | 10 |"


def test_databench_benchmark_paths_at_64_gb() -> None:
    from research import databench
    lines = databench.benchmark_paths(60 * 2**30).splitlines()  # 30 GiB for a split in memory
    assert lines[2] == "| CUB train | 5,994 | 0.8 GiB | in memory |"  # 5,994 × 3 × 224² = 902,264,832 bytes
    assert lines[4] == "| ILSVRC train | 1,281,167 | 179.6 GiB | streamed |"


def test_a_given_peak_is_kept_and_said_given() -> None:
    from research.bench import resolve_settings
    s = resolve_settings(BenchSettings(device="cpu", img_size=SIZE, batch_size=BATCH, peak_gflops=100.0),
                         torch.device("cpu"))
    assert s.peak_gflops == 100.0 and s.peak_source == "given (--peak_gflops)"
    table = format_table({"settings": {"peak_gflops": 100.0, "peak_source": s.peak_source}, "cam_train": {
        "naive": {"img_per_s": 1.0}, "fast": {"img_per_s": 2.0, "gflops_per_s": 50.0, "pct_of_peak": 50.0},
        "bound": {"img_per_s": 2.0}, "fast_over_bound": 1.0, "gflop_per_image": 25.0}})
    assert "| fast GFLOP/s (% of peak) |" in table and "| 50.0 (50%) |" in table


def test_the_matmul_ceiling_counts_two_flop_per_multiply_add(monkeypatch) -> None:
    """matmul_gflops: 2·n³ FLOP over the fastest round (the first, untimed, excluded)."""
    from research import bench as b
    clock = iter([0.0, 9.0, 10.0, 10.5, 20.0, 20.25, 30.0, 30.4])  # rounds of 9 (untimed), 0.5, 0.25, 0.4 s
    import types
    monkeypatch.setattr(b, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    assert b.matmul_gflops(size=8, rounds=3) == pytest.approx(2 * 8 ** 3 / 0.25 / 1e9)


def test_the_cpu_is_named_from_cpuinfo(tmp_path: Path) -> None:
    from research.bench import cpu_model
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f\n\n"
                    "processor\t: 1\nmodel name\t: other\n")
    assert cpu_model(info) == "AMD EPYC, AVX-512"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512_vnni\n")
    assert cpu_model(info) == "Some Xeon"  # avx512f itself is the foundation flag
    assert cpu_model(tmp_path / "missing")  # no cpuinfo: the platform's name, never empty
