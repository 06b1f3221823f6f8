"""The process's numerics and random state: seeding, every global random state saved and restored for an exact resume, and bfloat16 autocast where it pays.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from camlab.utils import CamlabError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_states() -> dict:
    """Every global random state (python, numpy, torch CPU and CUDA), in types that
    ``torch.load(weights_only=True)`` reads back. The data order, flips and transforms are drawn
    from generators seeded by (seed, epoch) alone, so they need no saved state."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    states = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's GPU only (one per DDP rank)
    return states


def restore_random_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(states["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())


PRECISIONS = ("auto", "fp32", "bf16")  # --precision; auto: bf16 on a GPU, fp32 on the CPU


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bfloat16 autocast where it pays (tensor cores); fp32 on the CPU unless asked."""
    if precision not in PRECISIONS:
        raise CamlabError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)
