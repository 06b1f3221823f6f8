"""WSOL scoring of a model over a split read in chunks: each batch's maps made, scored into the accumulators (``camlab.scoremaps.Scorer``) and dropped, so a split far larger than memory (streamed, ``camlab.stream``) is scored in memory flat in its size.

It computes what ``research.experiments.protocol_cams`` gives under wsolevaluation's protocol (the
raw CAM of each image's labelled class, resized by ``cv2.INTER_CUBIC`` to the stored frame and
min-max normalised) and scores it as ``camlab.scoremaps.evaluate`` scores saved maps; the whole
N×H×W stack of maps is never held.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

import dataloader
import model
from camlab import stream
from camlab.boxes import wsol_scoremaps
from camlab.extractors import DEFAULT_EXTRACTOR
from camlab.images import ImageSet
from camlab.metrics import CAM_CURVE_INTERVAL
from camlab.scoremaps import Scorer
from camlab.wsolmeta import read_split

MAP_BATCH = 64  # images per forward pass (as research.experiments' whole-split maps)


def protocol_batches(net: "model.CAMModel", data: "ImageSet | stream.StreamSet", img_size: int,
                     extractor: str = DEFAULT_EXTRACTOR, batch_size: int = MAP_BATCH,
                     device: torch.device | str = "cpu") -> Iterator[tuple]:
    """``(indices, stored uint8 images, model inputs, labels, predictions, maps)`` for each batch
    of ``data`` (either path, in order): ``extractor``'s raw map of each image's labelled class, resized by
    ``cv2.INTER_CUBIC`` to the stored frame and min-max normalised (wsolevaluation's protocol,
    ``camlab.boxes.wsol_scoremaps``; float32 numpy B×H×W). Only one batch's maps exist at a time."""
    device, frame = torch.device(device), stream.frame_of(data)
    order = list(torch.arange(len(data)).split(batch_size))
    with model.open_extractor(net.eval().to(device), extractor, img_size) as maps_of:
        for idx, stored in stream.batches(data, order, device):
            with torch.no_grad():
                inputs = dataloader.to_model_input(stored, img_size)
            labels = data.labels[idx.to(data.labels.device)].to(device)
            scores, raw = maps_of(inputs, labels)
            yield idx.cpu(), stored, inputs, labels, scores.argmax(dim=1).cpu(), wsol_scoremaps(raw.float().cpu().numpy(), frame)


def score_model(net: "model.CAMModel", root: Path | str, metadata: Path | str, split: str = "test", *,
                img_size: int = 224, batch_size: int = 32, in_memory: str = "auto", workers: int = 4,
                device: torch.device | str = "cpu", interval: float = CAM_CURVE_INTERVAL,
                progress: bool = False, extractor: str = DEFAULT_EXTRACTOR) -> dict:
    """MaxBoxAcc (V1 and V2), GT-known and top-1 localisation, or PxAP, of ``net``'s maps
    (``extractor``'s; camlab's CAM by default) on split ``split`` of the wsol dataset at ``root``
    (``--metadata`` ``metadata``), read as ``in_memory`` says (``camlab.stream.IN_MEMORY``) one
    batch at a time."""
    root, metadata = Path(root), Path(metadata)
    info = read_split(root, metadata, split)
    data = dataloader.load_split("wsol", root, split, img_size=img_size, metadata=metadata, progress=progress,
                                 in_memory=in_memory, workers=workers)
    scorer = Scorer(info, root, interval)
    for idx, _, _, _, preds, maps in protocol_batches(net, data, img_size, extractor, batch_size, device):
        for j, (i, pred) in enumerate(zip(idx.tolist(), preds.tolist())):
            scorer.add(data.names[i], maps[j], int(data.labels[i]), pred)
    return scorer.report(split, top1=True, streamed=isinstance(data, stream.StreamSet))
