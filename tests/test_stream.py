"""The streaming data path (camlab.stream): the same batches as the in-memory path for a seed
(order, DDP shards, flips, stored sizes), --data_in_memory's choice and its one line, one-line
errors from worker processes, and a cache that never fills the disk."""
from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dataloader
from camlab import images as images_lib
from camlab import stream
from camlab.images import ImageSet
from camlab.stream import StreamSet
from camlab.utils import CamlabError
from conftest import write_lab_layout

SIZES = ((30, 20), (24, 40), (32, 32), (45, 45), (20, 50))  # (H, W): a mixed split, one image at img_size


def _mixed_lab(root: Path, n: int = 10) -> Path:
    """The lab layout with JPEGs of several sizes (so the split is stored at img_size)."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            h, w = SIZES[i % len(SIZES)]
            cv2.imwrite(str(root / split / f"{i:02d}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            lines.append(f"{i:02d}.jpg {i % 3}")
        (root / f"{split}_cls.txt").write_text("\n".join(lines) + "\n")
    return root


def _both(root: Path, workers: int = 0) -> tuple[ImageSet, StreamSet]:
    kw = dict(img_size=32, cache_dir=None, progress=False)
    memory = dataloader.load_split("lab", root, "train", in_memory="always", **kw)
    streamed = dataloader.load_split("lab", root, "train", in_memory="never", workers=workers, **kw)
    assert isinstance(memory, ImageSet) and isinstance(streamed, StreamSet)
    return memory, streamed


def _model_inputs(data, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[tuple]:
    """What run_epoch feeds the model in training: the seeded order (this process's DDP shard),
    each batch's flips from the (seed, epoch, rank) stream, the resized, normalised images."""
    generator = torch.Generator().manual_seed(dataloader.epoch_seed(seed, epoch, stream=1 + rank))
    order = dataloader.batch_indices(torch.arange(len(data)), 3, True, seed, epoch, rank, world)
    found = []
    for idx, stored in stream.batches(data, order, torch.device("cpu")):
        flip = torch.rand(len(idx), generator=generator) < 0.5
        found.append((idx.tolist(), data.labels[idx].tolist(), stored,
                      dataloader.to_model_input(stored, 32, flip)))
    return found


def _assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b) > 0
    for (ia, la, sa, xa), (ib, lb, sb, xb) in zip(a, b):
        assert ia == ib and la == lb
        assert torch.equal(sa, sb) and torch.equal(xa, xb)


@pytest.mark.parametrize("world", [1, 2])
def test_streamed_batches_equal_the_in_memory_ones(tmp_path, world) -> None:
    memory, streamed = _both(_mixed_lab(tmp_path / "mixed"))
    assert streamed.frame == (32, 32) == tuple(memory.images.shape[-2:])
    assert streamed.names == memory.names and torch.equal(streamed.labels, memory.labels)
    for rank in range(world):
        for epoch in (1, 2):
            _assert_same(_model_inputs(memory, 5, epoch, rank, world), _model_inputs(streamed, 5, epoch, rank, world))
    flips = [x for *_, x in _model_inputs(memory, 5, 1)]
    plain = [dataloader.to_model_input(s, 32) for *_, s, _ in _model_inputs(memory, 5, 1)]
    assert any(not torch.equal(f, p) for f, p in zip(flips, plain))  # some images were flipped


def test_a_uniform_split_streams_at_its_own_size(tmp_path) -> None:
    memory, streamed = _both(write_lab_layout(tmp_path / "lab", n_train=7, n_test=3, size=16))
    assert streamed.frame == (16, 16) == tuple(memory.images.shape[-2:])
    _assert_same(_model_inputs(memory, 0, 3), _model_inputs(streamed, 0, 3))
    some = torch.tensor([5, 1, 1, 3])  # a subset, repeats allowed
    _assert_same(_model_inputs(memory.take(some), 0, 1), _model_inputs(streamed.take(some), 0, 1))


def test_worker_processes_give_the_same_batches_pass_after_pass(tmp_path) -> None:
    """Two persistent workers, two epochs through one loader (a new order each): the same batches."""
    memory, streamed = _both(_mixed_lab(tmp_path / "mixed"), workers=2)
    for epoch in (1, 2):
        _assert_same(_model_inputs(memory, 7, epoch), _model_inputs(streamed, 7, epoch))
    assert streamed._loader is not None and streamed._loader.persistent_workers


def test_a_damaged_file_met_while_streaming_is_one_line(tmp_path) -> None:
    root = _mixed_lab(tmp_path / "mixed")
    _, streamed = _both(root, workers=1)
    (root / "train" / "03.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CamlabError) as err:
        list(stream.batches(streamed, [torch.arange(len(streamed))], torch.device("cpu")))
    assert "03.jpg" in str(err.value) and "\n" not in str(err.value)


def test_auto_streams_a_split_over_its_share_of_the_ram_and_says_so(tmp_path, monkeypatch, capsys) -> None:
    root = _mixed_lab(tmp_path / "mixed")
    need = stream.decoded_bytes(10, 32, 32)  # 10 images stored at 32×32 (mixed sizes): 30,720 bytes
    assert need == 30_720
    kw = dict(img_size=32, cache_dir=None, progress=False, in_memory="auto")
    monkeypatch.setattr(stream, "available_ram", lambda: int(need / stream.RAM_SHARE))  # fits exactly
    assert isinstance(dataloader.load_split("lab", root, "train", **kw), ImageSet)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(stream, "available_ram", lambda: int(need / stream.RAM_SHARE) - 2)
    assert isinstance(dataloader.load_split("lab", root, "train", **kw), StreamSet)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "10 images" in err and "streamed from disk" in err
    assert isinstance(dataloader.load_split("lab", root, "train", **{**kw, "in_memory": "always"}), ImageSet)


def test_never_refuses_a_format_that_cannot_stream(tmp_path) -> None:
    root, _ = dataloader.formats.get("cifar10").example(tmp_path)
    with pytest.raises(CamlabError, match="--data_in_memory never: the train split of cifar10"):
        dataloader.load_split("cifar10", root, "train", cache_dir=None, progress=False, in_memory="never")
    assert isinstance(dataloader.load_split("cifar10", root, "train", cache_dir=None, progress=False,
                                            in_memory="auto"), ImageSet)


def test_the_cache_is_not_written_where_it_would_fill_the_disk(tmp_path, monkeypatch, capsys) -> None:
    root = _mixed_lab(tmp_path / "mixed")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(images_lib.shutil, "disk_usage", lambda _p: usage(100 * 2**30, 91 * 2**30, 9 * 2**30))
    data = dataloader.load_split("lab", root, "train", img_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert len(data) == 10 and not list((tmp_path / "cache").glob("*.pt"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not written" in err and "10%" in err
    monkeypatch.setattr(images_lib.shutil, "disk_usage", lambda _p: usage(100 * 2**30, 80 * 2**30, 20 * 2**30))
    dataloader.load_split("lab", root, "train", img_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_auto_counts_a_uniform_split_at_its_stored_size_not_img_size(tmp_path, monkeypatch) -> None:
    root = write_lab_layout(tmp_path / "lab", n_train=7, n_test=3, size=64)  # stored at 64×64, trained at 32
    need = stream.decoded_bytes(7, 64, 64)
    assert need == 86_016
    kw = dict(img_size=32, cache_dir=None, progress=False, in_memory="auto")
    monkeypatch.setattr(stream, "available_ram", lambda: int(need / stream.RAM_SHARE))
    assert isinstance(dataloader.load_split("lab", root, "train", **kw), ImageSet)
    monkeypatch.setattr(stream, "available_ram", lambda: int(stream.decoded_bytes(7, 32, 32) / stream.RAM_SHARE) * 2)
    assert isinstance(dataloader.load_split("lab", root, "train", **kw), StreamSet)  # 32 px would have fit


def test_chunked_wsol_scoring_equals_the_whole_stack_path(tmp_path, monkeypatch) -> None:
    """research.streamscore over a streamed (and an in-memory) split scores exactly what the
    N×H×W maps of research.experiments.protocol_cams score."""
    import model
    from camlab.scoremaps import Scorer
    from camlab.wsolmeta import read_split
    from research.experiments import protocol_cams
    from research.streamscore import score_model
    monkeypatch.chdir(tmp_path)
    root, meta = dataloader.formats.get("wsol").example(tmp_path)
    torch.manual_seed(0)
    net = model.CAMModel.from_config(model.ModelConfig(3), "none").eval()
    kw = dict(img_size=32, batch_size=2, workers=0)
    streamed = score_model(net, root, meta, "test", in_memory="never", **kw)
    memory = score_model(net, root, meta, "test", in_memory="always", **kw)
    assert streamed.pop("streamed") and not memory.pop("streamed")
    data = dataloader.load_split("wsol", root, "test", img_size=32, metadata=meta, progress=False, cache_dir=None)
    preds, maps = protocol_cams(net, data, 32, "wsolevaluation", of_labels=True)
    scorer = Scorer(read_split(root, meta, "test"), root)
    for name, cam, label, pred in zip(data.names, maps, data.labels.tolist(), preds.tolist()):
        scorer.add(name, cam, label, pred)
    whole = scorer.report("test", top1=True)
    assert streamed == memory == whole and whole["n_images"] == 3 and "max_box_acc_v2" in whole


def test_the_workers_map_every_decoded_photo_and_the_main_process_keeps_1_mib(monkeypatch) -> None:
    """glibc's mmap threshold: 256 KiB in each worker (a 500x375 photo, 562 KiB, is then mapped,
    not a heap block that fragments: measured, 8 KiB an image of growth at 1 MiB), 1 MiB in the
    main process (its scoring's per-threshold maps are 40% slower to map each time)."""
    seen = []
    monkeypatch.setattr(stream, "fixed_mmap_threshold", lambda threshold=stream.MMAP_THRESHOLD: seen.append(threshold))
    monkeypatch.setattr(stream, "release_inherited_locks", lambda: None)
    monkeypatch.setattr(stream.torch, "set_num_threads", lambda n: seen.append(("threads", n)))
    stream._one_thread(0)
    assert seen == [("threads", 1), 256 * 1024] and stream.MMAP_THRESHOLD == 1024 * 1024
    assert 3 * 375 * 500 > stream.WORKER_MMAP_THRESHOLD  # a decoded photo is mapped
