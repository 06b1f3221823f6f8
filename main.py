"""The lab's command line: ``python main.py --mode CAM`` trains a model (``--cv 5``: 5-fold cross-validation), every flag from the method and format registries.

``python main.py --help`` lists every flag.
``torchrun --nproc_per_node N main.py ...`` trains one model on N processes (DDP), or with
``--cv`` spreads the folds over them.

A problem with the user's input ends in one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import model
import train
from camlab import ddp, formats, methods, runs, runtime, stream, synthetic
from camlab.utils import CHECKPOINT_DIR, DEVICES, CamlabError, OneLineParser, run_cli, safe_subdir

DEFAULTS = train.RunConfig()


def _flag_type(flag: methods.Flag):
    """argparse's type for a method's flag: its own, with a CamlabError's message as argparse's."""
    def convert(text: str):
        try:
            return flag.type(text)
        except CamlabError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None
    convert.__name__ = getattr(flag.type, "__name__", "value")
    return convert


def _add_method_flags(p: argparse.ArgumentParser) -> None:
    """One group of flags per registered method (``camlab.methods.Method.flags``)."""
    seen: set[str] = set()
    for method in methods.METHODS.values():
        fresh = [f for f in method.flags if f.name not in seen]
        if not fresh:
            continue
        group = p.add_argument_group(method.group or f"{method.name} mode")
        for flag in fresh:
            seen.add(flag.name)
            default = getattr(DEFAULTS, flag.name, flag.default)
            group.add_argument(f"--{flag.name}", default=list(default) if isinstance(default, tuple) else default,
                               type=_flag_type(flag) if flag.type is not str else None, nargs=flag.nargs,
                               choices=list(flag.choices) if flag.choices else None, help=flag.help)


def _zero_or_one(text: str) -> bool:
    """The course skeleton's ``--resume 1`` / ``--resume 0``."""
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"give no value, or 1 (resume) or 0 (do not), not {text!r}")
    return text == "1"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="main.py", description="Train class activation map (CAM) models.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--mode", default=DEFAULTS.mode, choices=list(methods.METHODS),
                     help="; ".join(f"{m.name}: {m.about}" for m in methods.METHODS.values()))
    presets = {name: m for m in methods.METHODS.values() for name in m.presets}
    run.add_argument("--preset", default=None, choices=list(presets),
                     help="set several of a method's flags together, as a reference configures it (flags given "
                          "explicitly win): " + "; ".join(f"{name} ({m.name}): " + ", ".join(
                              f"--{k} {v}" for k, v in m.presets[name].items()) for name, m in presets.items()))
    run.add_argument("--exp_id", default=None,
                     help="experiment name: outputs go to checkpoints/<exp_id>/; None takes the mode in lower case")
    run.add_argument("--cv", type=int, default=DEFAULTS.cv,
                     help="k-fold cross-validation over the training split (0: a single run)")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed)
    run.add_argument("--device", default=DEFAULTS.device, choices=DEVICES,
                     help="under torchrun, cuda means one GPU per process (NCCL), cpu the gloo backend")
    run.add_argument("--precision", default=DEFAULTS.precision, choices=runtime.PRECISIONS,
                     help="auto: bfloat16 autocast on a GPU, fp32 on the CPU")
    run.add_argument("--overwrite", action="store_true", help="replace an existing checkpoints/<exp_id>/")
    run.add_argument("--resume", nargs="?", const=True, default=False, type=_zero_or_one, metavar="1",
                     help="continue checkpoints/<exp_id>/ from its last.pth (same settings), exactly as if never "
                          "stopped (the course skeleton's --resume 1 and --resume 0 are read too)")
    run.add_argument("--export_skeleton", action="store_true",
                     help="train nothing: write a finished run's best weights as the course skeleton saves a run, "
                          "checkpoints/<exp_id>_checkpoint.pth with model_state_dict (docs/lab.md)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels wherever torch has them (exact repeats; slower on a GPU)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (one line per epoch stays)")

    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULTS.dataset, choices=list(formats.FORMATS),
                      help="; ".join(f"{f.name}: {f.about}" for f in formats.FORMATS.values()))
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
                      help=f"{', '.join(formats.multi_label_formats())}: train on every class present in an image (multi-hot, BCE; accuracy is "
                           "the exact match, with mAP and F1 in metrics.json); CSE becomes OC-CSE as published")
    data.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR-10 (needs a network)")
    data.add_argument("--skip_bad", action="store_true",
                      help="leave out images that cannot be decoded (each is listed) instead of stopping")
    data.add_argument("--img_size", type=int, default=DEFAULTS.img_size, help="training/eval resolution")
    data.add_argument("--max_pixels", type=int, default=DEFAULTS.max_pixels,
                      help="an image whose header declares more pixels is refused before it is decoded")
    data.add_argument("--data_in_memory", default=DEFAULTS.data_in_memory, choices=list(stream.IN_MEMORY),
                      help="; ".join(f"{k}: {v}" for k, v in stream.IN_MEMORY.items()) +
                           f" ({stream.RAM_SHARE:.0%} of the available RAM; a split in memory goes to the GPU when it "
                           f"takes at most {stream.DEVICE_SHARE:.0%} of its free memory). Either path draws the same "
                           "batches".replace("%", "%%"))
    data.add_argument("--workers", type=int, default=DEFAULTS.workers,
                      help="worker processes that decode a streamed split (pinned memory, persistent, "
                           f"{stream.PREFETCH} batches ahead each; 0: in the main process)")

    net = p.add_argument_group("model")
    net.add_argument("--weights", default=DEFAULTS.weights,
                     help="imagenet (torchvision's, random init if they cannot be had), none, or a .pth path")
    net.add_argument("--backbone", default=DEFAULTS.backbone, choices=list(model.BACKBONES))
    net.add_argument("--cut", default=DEFAULTS.cut, choices=list(model.STAGES),
                     help="last backbone stage kept (the lab cuts after layer2)")

    _add_method_flags(p)

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    opt.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size)
    opt.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate (cosine decay)")
    opt.add_argument("--val_fraction", type=float, default=DEFAULTS.val_fraction,
                     help="share of the training split held out to choose the best epoch (no --cv)")
    return p


def apply_preset(args: argparse.Namespace, argv: list[str] | None) -> argparse.Namespace:
    """``--preset``'s settings, over the flags not given explicitly in ``argv``."""
    if args.preset is None:
        return args
    owner = next(m for m in methods.METHODS.values() if args.preset in m.presets)
    if owner.name != args.mode:
        raise CamlabError(f"--preset {args.preset} configures --mode {owner.name}, not --mode {args.mode}")
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    given = vars(quiet.parse_args(argv))
    for key, value in owner.presets[args.preset].items():
        if key not in given:
            setattr(args, key, value)
    return args


def config_from_args(args: argparse.Namespace) -> train.RunConfig:
    names = {f.name for f in fields(train.RunConfig)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values["exp_id"] = args.mode.lower() if args.exp_id is None else args.exp_id
    values["progress"] = not args.quiet
    values["delta"] = tuple(values["delta"])
    values["options"] = {f.name: getattr(args, f.name) for f in methods.get(args.mode).flags if f.name not in names}
    return train.RunConfig(**values).checked()


def export_skeleton(args: argparse.Namespace) -> None:
    """``--export_skeleton``: checkpoints/<exp_id>/best.pth -> checkpoints/<exp_id>_checkpoint.pth."""
    exp_id = args.mode.lower() if args.exp_id is None else args.exp_id
    run_dir = safe_subdir(CHECKPOINT_DIR, exp_id)
    out = model.export_skeleton(run_dir, CHECKPOINT_DIR / f"{exp_id}_checkpoint.pth", overwrite=args.overwrite)
    print(f"wrote {out} (model_state_dict: the weights of {run_dir / 'best.pth'}, under the skeleton's names)")


def run(args: argparse.Namespace) -> None:
    if args.export_skeleton:
        return export_skeleton(args)
    cfg = config_from_args(args)
    cfg.run_dir()  # refuse an --exp_id that escapes checkpoints/ before any work
    if cfg.resume and cfg.overwrite:
        raise CamlabError("--resume continues a run and --overwrite replaces it: choose one")
    if cfg.resume:
        runs.prepare_run_dir(cfg.run_dir(), overwrite=False, resume=True)  # is there a run to go on with?
    if cfg.method.teacher:
        train.teacher_checkpoint(cfg)
    with ddp.distributed(cfg.device):  # one process, or one of those torchrun started
        train.train_CV(cfg) if cfg.cv else train.train(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli("main.py", lambda: run(apply_preset(args, argv)))


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        ddp.exit_process(code)  # a torchrun worker: see exit_process for why not sys.exit
    sys.exit(code)
