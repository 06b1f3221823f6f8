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


def write_course_layout(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> Path:
    """A stand-in of the course's ``cifar-10-cam-seg-data``: 32×32 RGB images of ten classes
    (class c a square of its own colour), ``train_cls.txt`` / ``test_cls.txt`` with labels 0-9,
    ten ``test_seg_source/`` images and their masks as RGB 0/255 PNGs in ``test_seg/``, and no
    meta.json (so its classes read as CIFAR-10's)."""
    rng = np.random.default_rng(seed)
    colours = [tuple(int(v) for v in c) for c in rng.integers(0, 256, (10, 3))]
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            label = i % 10
            img = rng.integers(90, 160, (32, 32, 3)).astype(np.uint8)
            y, x = rng.integers(0, 16, 2)
            img[y:y + 16, x:x + 16] = colours[label]
            cv2.imwrite(str(root / split / f"{i:05d}.png"), img[:, :, ::-1])
            lines.append(f"{i:05d}.png {label}")
            if split == "test":
                for folder, picture in (("test_seg_source", img), ("test_seg", None)):
                    (root / folder).mkdir(exist_ok=True)
                    if picture is None:
                        picture = np.zeros((32, 32, 3), np.uint8)
                        picture[y:y + 16, x:x + 16] = 255
                    cv2.imwrite(str(root / folder / f"{i:05d}.png"), picture[:, :, ::-1])
        (root / f"{split}_cls.txt").write_text("\n".join(lines) + "\n")
    return root
