"""camlab's command line: ``python main.py --mode CAM`` trains a CAM model (``--cv 5`` runs
5-fold cross-validation instead). ``python main.py --help`` lists every flag.
``torchrun --nproc_per_node N main.py ...`` trains one model on N processes (DDP), or with
``--cv`` spreads the folds over them.

A problem with the user's input ends in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import dataloader
import model
import synthetic
import train
import transforms
from camlab.utils import DEVICES, CamlabError, OneLineParser, run_cli

DEFAULTS = train.RunConfig()


def _transform_name(name: str) -> str:
    try:
        transforms.parse_transform(name)
    except CamlabError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None
    return name


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="main.py", description="Train class activation map (CAM) models.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--mode", default=DEFAULTS.mode, choices=list(train.OBJECTIVES),
                     help="CAM: classification (task 1); SEG: plus the equivariance loss (task 2); "
                          "ACOL: complementary/adversarial heads on erased features; CSE: class-specific "
                          "erasing judged by a frozen CAM classifier")
    run.add_argument("--exp_id", default=None,
                     help="experiment name: outputs go to checkpoints/<exp_id>/; None takes the mode in lower case")
    run.add_argument("--cv", type=int, default=DEFAULTS.cv,
                     help="k-fold cross-validation over the training split (0: a single run)")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed)
    run.add_argument("--device", default=DEFAULTS.device, choices=DEVICES,
                     help="under torchrun, cuda means one GPU per process (NCCL), cpu the gloo backend")
    run.add_argument("--precision", default=DEFAULTS.precision, choices=train.PRECISIONS,
                     help="auto: bfloat16 autocast on a GPU, fp32 on the CPU")
    run.add_argument("--overwrite", action="store_true", help="replace an existing checkpoints/<exp_id>/")
    run.add_argument("--resume", action="store_true",
                     help="continue checkpoints/<exp_id>/ from its last.pth (same settings), exactly as if never stopped")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels wherever torch has them (exact repeats; slower on a GPU)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (one line per epoch stays)")

    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULTS.dataset, choices=list(dataloader.DATASETS),
                      help="lab: the handout's folder layout (the embedded synthetic set by default); "
                           "cifar10: the python-pickle CIFAR-10; folder: an ImageFolder tree; "
                           "wsol: wsolevaluation's metadata format (CUB, ILSVRC, OpenImages; needs --metadata); "
                           "voc: PASCAL VOC 2012 with its segmentation masks (single-label: each image's largest class); "
                           "multi: the embedded multi-object scenes, 1-3 classes per image, in VOC's layout")
    data.add_argument("--data_root", default=None,
                      help="dataset folder; None takes data/synthetic for lab and data/synthetic_multi for multi "
                           "(generated when missing), data/<dataset> otherwise")
    data.add_argument("--metadata", default=DEFAULTS.metadata,
                      help="wsol: the metadata folder of one dataset (e.g. wsolevaluation/metadata/CUB)")
    data.add_argument("--body_evidence", type=float, default=None,
                      help="the embedded benchmark's dial in [0, 1]: the share of bodies whose stripes carry "
                           f"their class's evidence (default {synthetic.BODY_EVIDENCE:g}: data/synthetic; any other "
                           "value: data/synthetic_be<value> or data/synthetic_multi_be<value>, generated when missing)")
    data.add_argument("--multi_label", action="store_true",
                      help="voc, multi: train on every class present in an image (multi-hot, BCE; accuracy is "
                           "the exact match, with mAP and F1 in metrics.json); CSE becomes OC-CSE as published")
    data.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR-10 (needs a network)")
    data.add_argument("--skip_bad", action="store_true",
                      help="leave out images that cannot be decoded (each is listed) instead of stopping")
    data.add_argument("--img_size", type=int, default=DEFAULTS.img_size, help="training/eval resolution")

    net = p.add_argument_group("model")
    net.add_argument("--weights", default=DEFAULTS.weights,
                     help="imagenet (torchvision's, random init if they cannot be had), none, or a .pth path")
    net.add_argument("--backbone", default=DEFAULTS.backbone, choices=list(model.BACKBONES))
    net.add_argument("--cut", default=DEFAULTS.cut, choices=list(model.STAGES),
                     help="last backbone stage kept (the lab cuts after layer2)")

    seg = p.add_argument_group("SEG mode (equivariance loss)")
    seg.add_argument("--transform", default=DEFAULTS.transform, type=_transform_name,
                     help=f"one of {', '.join(transforms.TRANSFORMS)}, or several joined with '+' "
                          f"(applied left to right, e.g. rotate+hflip)")
    seg.add_argument("--scale", type=float, default=DEFAULTS.scale, help="factor of the scale transform")
    seg.add_argument("--rot_deg", type=float, default=DEFAULTS.rot_deg,
                     help="rotate draws an angle per image in [-rot_deg, rot_deg]")
    seg.add_argument("--shift", type=float, default=DEFAULTS.shift,
                     help="translate draws a shift per image up to this fraction of the side")
    seg.add_argument("--cam", default=DEFAULTS.cam, choices=list(model.SEG_CAM_FORMS),
                     help="lab: softmax-weighted sum of feature maps; class: fc weights of the label, "
                          "ReLU, divided by its max (SSENet)")
    seg.add_argument("--ser_weight", type=float, default=DEFAULTS.ser_weight,
                     help="weight of the equivariance loss L_ser")

    acol = p.add_argument_group("ACOL mode (adversarial complementary learning)")
    acol.add_argument("--recipe", default=DEFAULTS.recipe,
                      help="one letter per classifier head, starting with p: "
                           + "; ".join(f"{k}: {v}" for k, v in model.HEAD_KINDS.items())
                           + " (pp is the paper's ACoL)")
    acol.add_argument("--delta", type=float, nargs="+", default=list(DEFAULTS.delta),
                      help="erasing threshold of each head after the first (one value: all)")
    acol.add_argument("--acol_head", default=DEFAULTS.acol_head, choices=list(model.HEAD_TYPES),
                      help="what every head is: " + "; ".join(f"{k}: {v.about}" for k, v in model.HEAD_TYPES.items()))
    acol.add_argument("--acol_width", type=int, default=DEFAULTS.acol_width,
                      help="hidden channels of each conv head's two 3x3 convolutions (the default is the paper's)")
    acol.add_argument("--acol_grow", type=int, default=DEFAULTS.acol_grow,
                      help="grow the erased region by this many feature cells (0: the paper's, where the map >= delta)")

    cse = p.add_argument_group("CSE mode (class-specific adversarial erasing)")
    cse.add_argument("--oc_exp", default=None,
                     help="exp_id of a finished CAM run: the frozen ordinary classifier")
    cse.add_argument("--erase_weight", type=float, default=DEFAULTS.erase_weight,
                     help="weight of the erasing loss in epoch 1")
    cse.add_argument("--erase_growth", type=float, default=DEFAULTS.erase_growth,
                     help="added to the erasing weight every epoch (OC-CSE: 0.3 + 0.05 epoch)")
    cse.add_argument("--area_weight", type=float, default=DEFAULTS.area_weight,
                     help="weight of the mask-area term that keeps erasing masks to the object")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    opt.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size)
    opt.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate (cosine decay)")
    opt.add_argument("--val_fraction", type=float, default=DEFAULTS.val_fraction,
                     help="share of the training split held out to choose the best epoch (no --cv)")
    return p


def config_from_args(args: argparse.Namespace) -> train.RunConfig:
    values = {f.name: getattr(args, f.name) for f in fields(train.RunConfig) if hasattr(args, f.name)}
    values["exp_id"] = args.mode.lower() if args.exp_id is None else args.exp_id
    values["progress"] = not args.quiet
    values["delta"] = tuple(values["delta"])
    return train.RunConfig(**values).checked()


def run(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    cfg.run_dir()  # refuse an --exp_id that escapes checkpoints/ before any work
    if cfg.resume and cfg.overwrite:
        raise CamlabError("--resume continues a run and --overwrite replaces it: choose one")
    if cfg.resume:
        train.prepare_run_dir(cfg.run_dir(), overwrite=False, resume=True)  # is there a run to go on with?
    if cfg.mode == "CSE":
        train.oc_checkpoint(cfg)
    with train.distributed(cfg.device):  # one process, or one of those torchrun started
        train.train_CV(cfg) if cfg.cv else train.train(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("main.py", lambda: run(args))


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        train.exit_process(code)  # a torchrun worker: see exit_process for why not sys.exit
    sys.exit(code)
