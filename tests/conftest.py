"""Shared fixtures: the repository root on sys.path, few threads, and a tiny lab-layout dataset."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(2)

# Class c is a square of colour COLOURS[c] on a grey background: learnable in a few steps.
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def write_lab_layout(root: Path, n_train: int = 24, n_test: int = 9, size: int = 16, seed: int = 0) -> Path:
    """A tiny dataset in the handout's layout: train/, test/, *_cls.txt, meta.json, the square
    of every image as a 0/255 mask in <split>_masks/, and the first three test images with
    their masks in test_seg_source/ and test_seg/."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for folder in (split, f"{split}_masks"):
            (root / folder).mkdir(parents=True)
        lines = []
        for i in range(n):
            label = i % len(COLOURS)
            img = np.full((size, size, 3), 128, np.uint8)
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            img[y:y + size // 2, x:x + size // 2] = COLOURS[label]
            mask[y:y + size // 2, x:x + size // 2] = 255
            cv2.imwrite(str(root / split / f"{i:03d}.png"), img[:, :, ::-1])
            cv2.imwrite(str(root / f"{split}_masks" / f"{i:03d}.png"), mask)
            lines.append(f"{i:03d}.png {label}")
        (root / f"{split}_cls.txt").write_text("\n".join(lines) + "\n")
    for folder, source in (("test_seg_source", "test"), ("test_seg", "test_masks")):
        (root / folder).mkdir()
        for i in range(3):
            shutil.copy(root / source / f"{i:03d}.png", root / folder / f"{i:03d}.png")
    (root / "meta.json").write_text(json.dumps({"classes": ["red", "green", "blue"]}))
    return root


@pytest.fixture
def tiny_lab(tmp_path: Path) -> Path:
    return write_lab_layout(tmp_path / "tiny")
