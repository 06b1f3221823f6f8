"""Epoch metrics as accumulators fed by every training and evaluation step: loss terms, top-1 accuracy, and for multi-hot labels exact match, micro F1 and mAP, summed over the processes of a DDP run.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import average_precision_score

from camlab.ddp import SINGLE, World
from camlab.methods import Step


# ------------------------------------------------------------------------------------ epochs
class EpochMeter:
    """Sums of loss terms and correct predictions over an epoch, kept on the device so that
    training never waits for a ``.item()`` per step.

    One label per image: ``acc`` is top-1 accuracy. Multi-hot labels: a class is predicted
    where its sigmoid is at least 0.5 (logit >= 0); ``acc`` is the exact match of the predicted
    set, ``f1`` the micro-averaged F1 over every (image, class) pair, and ``map`` the mean over
    classes of scikit-learn's average precision (classes with a positive image in the epoch).
    """

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.scored: list[tuple[torch.Tensor, torch.Tensor]] = []  # multi-label: (scores, labels)

    def update(self, step: Step, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.count += n
        values = {"loss": step.loss.detach(), **step.terms}
        if labels.ndim == 1:
            values["acc"] = (step.scores.argmax(dim=1) == labels).float().mean()
        else:
            predicted, truth = step.scores.detach() >= 0, labels > 0
            values["acc"] = (predicted == truth).all(dim=1).float().mean()
            for name, hits in (("tp", predicted & truth), ("fp", predicted & ~truth), ("fn", ~predicted & truth)):
                values[name] = hits.sum() / n  # times n below: the epoch's count
            self.scored.append((step.scores.detach().float(), labels.detach()))
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0) + value.float() * n

    def compute(self, world: World = SINGLE) -> dict[str, float]:
        """Epoch means; with several processes, over all their images (one all-reduce)."""
        names = list(self.sums)
        if world.size > 1:
            device = next(iter(self.sums.values())).device
            totals = torch.stack([torch.tensor(float(self.count), device=device)] + [self.sums[n] for n in names])
            dist.all_reduce(totals)
            count, sums = float(totals[0]), dict(zip(names, totals[1:]))
        else:
            count, sums = self.count, self.sums
        if not count:
            return {}
        means = {name: float(sums[name]) / count for name in names if name not in ("tp", "fp", "fn")}
        if "tp" in sums:
            tp, fp, fn = (float(sums[k]) for k in ("tp", "fp", "fn"))
            means["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
            means["map"] = mean_average_precision(*self._gathered(world))
        return means

    def _gathered(self, world: World) -> tuple[np.ndarray, np.ndarray]:
        scores = torch.cat([s for s, _ in self.scored]).cpu().numpy()
        labels = torch.cat([y for _, y in self.scored]).cpu().numpy()
        if world.size > 1:
            everyone: list = [None] * world.size
            dist.all_gather_object(everyone, (scores, labels))
            scores, labels = np.concatenate([s for s, _ in everyone]), np.concatenate([y for _, y in everyone])
        return scores, labels


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP of multi-label scores (N×K) against multi-hot labels (N×K): scikit-learn's average
    precision per class, averaged over the classes with at least one positive image (NaN if none)."""
    labels = np.asarray(labels) > 0
    positive = np.flatnonzero(labels.any(axis=0))
    if not positive.size:
        return float("nan")
    return float(np.mean([average_precision_score(labels[:, k], scores[:, k]) for k in positive]))


def selection_metric(multi_label: bool) -> str:
    """What the best epoch is chosen by on the validation part: accuracy, or under
    --multi_label the mAP (exact match is too coarse on a small part)."""
    return "map" if multi_label else "acc"


def label_metrics(test: dict, multi_label: bool) -> dict:
    """What metrics.json says about how ``test_acc`` was measured, and under --multi_label the
    multi-label scores beside it (``test_map``, ``test_f1``)."""
    if not multi_label:
        return {"accuracy": "top-1", "best_val_by": "accuracy"}
    return {"accuracy": "exact match of the predicted label set (sigmoid >= 0.5)", "best_val_by": "mAP",
            "test_map": test["map"], "test_f1": test["f1"]}
