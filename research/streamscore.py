"""WSOL scoring of a model over a split read in chunks: each batch's maps made, scored into the accumulators (``camlab.scoremaps.Scorer``) and dropped, so a split far larger than memory (streamed, ``camlab.stream``) is scored in memory flat in its size.

It computes what ``research.experiments.protocol_cams`` gives under wsolevaluation's protocol (the
raw CAM of each image's labelled class, resized by ``cv2.INTER_CUBIC`` to the stored frame and
min-max normalised) and scores it as ``camlab.scoremaps.evaluate`` scores saved maps; the whole
N×H×W stack of maps is never held.
"""
from __future__ import annotations

from pathlib import Path

import torch

import dataloader
import model
from camlab import stream
from camlab.boxes import wsol_scoremaps
from camlab.metrics import CAM_CURVE_INTERVAL
from camlab.scoremaps import Scorer
from camlab.wsolmeta import read_split


def score_model(net: "model.CAMModel", root: Path | str, metadata: Path | str, split: str = "test", *,
                img_size: int = 224, batch_size: int = 32, in_memory: str = "auto", workers: int = 4,
                device: torch.device | str = "cpu", interval: float = CAM_CURVE_INTERVAL,
                progress: bool = False) -> dict:
    """MaxBoxAcc (V1 and V2), GT-known and top-1 localisation, or PxAP, of ``net``'s CAMs on
    split ``split`` of the wsol dataset at ``root`` (``--metadata`` ``metadata``), read as
    ``in_memory`` says (``camlab.stream.IN_MEMORY``) one batch at a time."""
    root, metadata, device = Path(root), Path(metadata), torch.device(device)
    info = read_split(root, metadata, split)
    data = dataloader.load_split("wsol", root, split, img_size=img_size, metadata=metadata, progress=progress,
                                 in_memory=in_memory, workers=workers)
    frame, scorer = stream.frame_of(data), Scorer(info, root, interval)
    order = list(torch.arange(len(data)).split(batch_size))
    net = net.eval().to(device)
    with model.open_extractor(net, "cam", img_size) as maps_of:
        for idx, stored in stream.batches(data, order, device):
            with torch.no_grad():
                inputs = dataloader.to_model_input(stored, img_size)
            labels = data.labels[idx].to(device)
            scores, raw = maps_of(inputs, labels)
            maps = wsol_scoremaps(raw.float().cpu().numpy(), frame)
            for j, (i, pred) in enumerate(zip(idx.tolist(), scores.argmax(dim=1).tolist())):
                scorer.add(data.names[i], maps[j], int(data.labels[i]), pred)
    return scorer.report(split, top1=True, streamed=isinstance(data, stream.StreamSet))
