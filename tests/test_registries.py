"""One record per choice: every registered dataset format reads its own example and trains an
epoch, every registered method takes a training step with gradients reaching the backbone, and a
toy method and a toy format, each added here as one record, need no edit anywhere else."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dataloader
import main
import train
from camlab import formats, methods
from camlab.formats import FORMATS, ROLES, Format, Listing
from camlab.images import decode_files
from camlab.methods import METHODS, Flag, Method, Step, classification_loss
from camlab.utils import Range
from model import CAMModel

TINY = ["--img_size", "32", "--epochs", "1", "--batch_size", "8", "--weights", "none", "--device", "cpu", "--quiet"]


def check_format(fmt: Format, top: Path) -> tuple[Path, Path | None]:
    """Everything every format must do on its example: each split present decodes into a valid
    ImageSet with labels in range (and every present class, where the format knows them), each
    role names one of its splits, and the ground truth (where there is one) covers every image
    in the decoded frame."""
    root, meta = fmt.example(top)
    assert set(fmt.roles) == set(ROLES)
    for role in ROLES:
        assert dataloader.split_for(fmt.name, role, root) in fmt.splits
    for split in fmt.splits:
        if fmt.has_split is not None and not fmt.has_split(root, split):
            continue
        data = dataloader.load_split(fmt.name, root, split, metadata=meta, cache_dir=None, progress=False)
        assert len(data) > 0 and data.labels.min() >= 0 and data.labels.max() < len(data.classes)
        assert (data.present is not None) == fmt.multi_label
        truth = dataloader.ground_truth(fmt.name, root, split, data, meta)
        if truth is not None and truth.boxes is not None:
            assert len(truth.boxes) == len(data) and all(b.shape[1:] == (4,) for b in truth.boxes)
        if truth is not None and truth.masks is not None:
            assert truth.masks.shape == (len(data), *data.images.shape[-2:])
    return root, meta


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_reads_its_example_and_trains_an_epoch(name, tmp_path, monkeypatch, capsys) -> None:
    root, meta = check_format(FORMATS[name], tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", name, "--data_root", str(root), "--exp_id", name, *TINY]
    assert main.main(argv + (["--metadata", str(meta)] if meta else [])) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "checkpoints" / name / "metrics.json").read_text())["args"]["dataset"] == name


def _teacher_or_none(method: Method, num_classes: int):
    return CAMModel(num_classes, "none").eval() if method.teacher else None


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_takes_a_training_step(name) -> None:
    """Its objective on a model of its own configuration: a finite loss, scores N×K, named terms,
    and a gradient on every backbone parameter and on the first head."""
    method = METHODS[name]
    cfg = train.RunConfig(mode=name, img_size=32, weights="none", device="cpu", acol_width=8)
    torch.manual_seed(0)
    net = CAMModel.from_config(cfg.model_config(3))
    objective = method.objective(cfg, ["a", "b", "c"], _teacher_or_none(method, 3))
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    step = objective(net, images, labels, torch.Generator().manual_seed(0), 1)
    step.loss.backward()
    assert torch.isfinite(step.loss) and step.scores.shape == (4, 3) and step.terms
    assert all(p.grad is not None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.heads[0].parameters())
    assert method.label(cfg) and method.table_label(cfg, short=True)


# ------------------------------------------------------------------------ a toy method
def toy_objective(cfg):
    """Cross-entropy on the scores divided by --toy_temperature."""
    temperature = cfg.option("toy_temperature")

    def objective(model, images, labels, generator=None, epoch=1) -> Step:
        scores = model(images)[0]
        loss = classification_loss(scores / temperature, labels)
        return Step(loss, scores, {"ce_t": loss.detach()})
    return objective


TOY = Method("TOY", "cross-entropy at a temperature (a test's toy)", lambda cfg, classes, teacher: toy_objective(cfg),
             lambda cfg: f"toy T={cfg.option('toy_temperature'):g}", group="TOY mode",
             flags=(Flag("toy_temperature", "divides the scores", float, default=1.0,
                         range=Range(0, 100, "a temperature", open_low=True)),))


def test_a_toy_method_is_one_record(tiny_lab, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(methods, "METHODS", dict(METHODS))
    methods.register(TOY)
    monkeypatch.chdir(tmp_path)
    assert "--toy_temperature" in main.build_parser().format_help()
    argv = ["--mode", "TOY", "--data_root", str(tiny_lab), *TINY]
    assert main.main(argv + ["--toy_temperature", "0"]) == 2
    assert capsys.readouterr().err == "main.py: error: --toy_temperature must lie in (0, 100] (a temperature), got 0\n"
    assert main.main(argv + ["--toy_temperature", "2.5"]) == 0
    saved = json.loads((tmp_path / "checkpoints" / "toy" / "metrics.json").read_text())["args"]
    assert saved["mode"] == "TOY" and saved["options"] == {"toy_temperature": 2.5}
    cfg = train.RunConfig.from_args(saved)
    assert cfg.method.label(cfg) == "toy T=2.5"
    assert "ce_t" in (tmp_path / "checkpoints" / "toy" / "log.csv").read_text().splitlines()[0]
    # the option shapes the run: another temperature is another run
    assert main.main(argv + ["--toy_temperature", "3", "--resume"]) == 2
    assert "options" in capsys.readouterr().err


# ------------------------------------------------------------------------ a toy format
def _toy_read(root: Path, split: str, num_classes: int | None, metadata: Path | None) -> Listing:
    """``<root>/<split>.csv``: one ``<file>,<label>`` line per image of ``<root>/images/``."""
    rows = [line.split(",") for line in (root / f"{split}.csv").read_text().split()]
    names, labels = [n for n, _ in rows], [int(y) for _, y in rows]
    return Listing([root / f"{split}.csv", *(root / "images" / n for n in names)],
                   lambda options: decode_files(root / "images", names, labels, ["a", "b"], options),
                   image_dir=root / "images")


def _toy_example(top: Path) -> tuple[Path, None]:
    root = top / "toy"
    (root / "images").mkdir(parents=True)
    for split, ids in (("fit", range(16)), ("report", range(16, 22))):
        for i in ids:
            cv2.imwrite(str(root / "images" / f"{i}.png"), np.full((16, 16, 3), 250 * (i % 2), np.uint8))
        (root / f"{split}.csv").write_text("".join(f"{i}.png,{i % 2}\n" for i in ids))
    return root, None


TOY_FORMAT = Format("toy", "two grey levels (a test's toy)", ("fit", "report"),
                    {"train": ("fit",), "fit": ("fit",), "test": ("report",)}, _toy_read,
                    root_hint="it must hold fit.csv, report.csv and images/", example=_toy_example)


def test_a_toy_format_is_one_record(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(formats, "FORMATS", dict(FORMATS))
    formats.register(TOY_FORMAT)
    root, _ = check_format(TOY_FORMAT, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main.main(["--dataset", "toy", "--data_root", str(root), *TINY]) == 0
    assert main.main(["--dataset", "toy", "--data_root", str(tmp_path / "nowhere"), "--exp_id", "gone", *TINY]) == 2
    assert "(it must hold fit.csv, report.csv and images/)" in capsys.readouterr().err
    assert main.main(["--dataset", "toy", "--multi_label", "--data_root", str(root), *TINY]) == 2
    assert "--multi_label needs a dataset that labels every class" in capsys.readouterr().err
