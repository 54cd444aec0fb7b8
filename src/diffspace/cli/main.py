"""The `diffspace` command line. Bad input exits 2 with one line; a failed run exits 1."""

import argparse
import json
import shutil
import signal
import sys
from pathlib import Path

from diffspace.types import UserError

EPILOG = "Run `diffspace COMMAND --help` for the options of each command."


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"diffspace: error: {message}\n")


def _add_device(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run: auto picks CUDA when available")


def _add_sampling(p):
    p.add_argument("--sampler", help="sampler name (see `diffspace samplers`); default: the run's "
                                     "[sample] sampler")
    p.add_argument("--steps", type=int, help="number of steps; default: the run's [sample] steps")
    p.add_argument("--grid", help="noise-level grid: karras, logsnr, uniform_t, leading, trailing, "
                                  "linspace, or optimized (stored by `diffspace optimize-grid`); "
                                  "default: the run's [sample] grid")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (samples depend only on it)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="diffspace", formatter_class=_Formatter, epilog=EPILOG,
                description="Train, sample and evaluate diffusion and flow models in one design space.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a model from a TOML config",
                       description="Train from a TOML config; writes a run directory (config, "
                                   "checkpoints, log, loss plot).")
    t.add_argument("config", help="TOML config file (or a run directory with --resume)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in run.dir from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_device(t)

    s = sub.add_parser("sample", formatter_class=_Formatter, help="draw samples from a trained run",
                       description="Draw samples from a run directory or checkpoint file.")
    s.add_argument("run", help="run directory or checkpoint (.safetensors)")
    # why --num-samples: torchrun's own parser rejects "--n" as an ambiguous prefix of its options
    s.add_argument("--n", "--num-samples", dest="n", type=int, default=10_000, help="number of samples")
    s.add_argument("--out", default="",
                   help="output .npz/.npy/.csv (default: RUN/samples.npz; text runs: RUN/samples.txt)")
    s.add_argument("--prompt", default="", help="text runs: the text every sample continues")
    s.add_argument("--block", type=int, default=0,
                   help="text runs: block size L' for block diffusion / semi-AR decoding (0: the run's)")
    _add_sampling(s)
    _add_device(s)

    e = sub.add_parser("eval", formatter_class=_Formatter, help="evaluate a trained run",
                       description="Sample from a run and compare with held-out data; writes "
                                   "RUN/metrics.json and pictures, prints a summary.")
    e.add_argument("run", help="run directory or checkpoint (.safetensors)")
    e.add_argument("--n", "--num-samples", dest="n", type=int, default=0,
                   help="number of samples (0: the run's [eval] n)")
    e.add_argument("--json", default="", help="also write the metrics to this file")
    e.add_argument("--cfg", type=float, default=1.0,
                   help="image runs: classifier-free guidance scale w (1: the conditional model)")
    e.add_argument("--featurenet", default="",
                   help="image runs: feature-net artifact (default: RUN/featurenet.safetensors, trained "
                        "there on the run's data if missing)")
    e.add_argument("--nll", action="store_true",
                   help="continuous runs: also the PF-ODE NLL of the test split (nats, bits/dim, "
                        "standard error, NFE) and, for 8-bit-style image data, the DDPM bound")
    e.add_argument("--nll-n", type=int, default=1000, help="test examples used by --nll")
    e.add_argument("--ppl", action="store_true",
                   help="text runs: only bits/char and perplexity on the validation split")
    _add_sampling(e)
    _add_device(e)

    o = sub.add_parser("optimize-grid", formatter_class=_Formatter,
                       help="fit a sampler's noise grid to a trained run",
                       description="Choose the STEPS noise levels that minimize the sampler's error "
                                   "against the adaptive PF-ODE solution on a calibration batch, and store "
                                   "them in RUN/grids.json; then sample with --grid optimized.")
    o.add_argument("run", help="run directory")
    o.add_argument("--sampler", default="dpmpp_2m", help="deterministic sampler to fit the grid for")
    o.add_argument("--steps", type=int, default=5, help="number of steps of the grid")
    o.add_argument("--n-calib", type=int, default=512, help="calibration batch size")
    o.add_argument("--seed", type=int, default=0, help="calibration seed")
    _add_device(o)

    for name, what in (("train-featurenet", "a classifier whose features and predictions score "
                                              "image samples (FID, KID, precision/recall, CAS)"),
                       ("train-classifier", "a noise-aware classifier for classifier guidance")):
        c = sub.add_parser(name, formatter_class=_Formatter, help=f"train {what.split(' for ')[0]}",
                           description=f"Train {what}, offline, on an embedded or local image data set; "
                                       "saves a .safetensors artifact with a .json beside it.")
        c.add_argument("--data", default="digits", help="digits, lfw, folder or npz")
        c.add_argument("--path", default="", help="folder or .npz file for --data folder/npz")
        c.add_argument("--size", type=int, default=24, help="lfw image size (24 or 32)")
        c.add_argument("--out", required=True, help="output .safetensors file")
        c.add_argument("--steps", type=int, default=1500 if name == "train-featurenet" else 3000,
                       help="optimizer steps")
        c.add_argument("--seed", type=int, default=0, help="seed (also fixes the train/test split)")

    sub.add_parser("samplers", formatter_class=_Formatter, help="list the samplers",
                   description="List every sampler with its order, whether it is stochastic, and "
                               "its number of network evaluations for n steps.")

    i = sub.add_parser("info", formatter_class=_Formatter, help="describe a run or checkpoint",
                       description="Print a run's config, progress and metrics.")
    i.add_argument("run", help="run directory or checkpoint (.safetensors)")
    return p


def cmd_train(args) -> None:
    import torch

    from diffspace.cli.config import build, load_toml, to_dict, to_toml
    from diffspace.cli.runs import checkpoint_of
    from diffspace.cli.tasks import task_of
    from diffspace.train.distributed import init_distributed, peer_guard
    from diffspace.train.loop import train
    from diffspace.utils import resolve_device

    src = args.config
    if args.resume and Path(src).is_dir():
        from diffspace.train.checkpoint import load_checkpoint

        data = load_checkpoint(checkpoint_of(src))[1]["config"]
        from diffspace.cli.config import parse_override

        for text in args.set:
            keys, value = parse_override(text)
            node = data
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
    else:
        data = load_toml(src, args.set)
    task = task_of(data, src)
    cfg = build(task.config_cls, data, src)
    record = to_dict(cfg)
    if args.dry_run:
        print(to_toml(record))
        return
    if args.accumulate < 1:
        raise UserError(f"--accumulate must be >= 1, got {args.accumulate}")
    run_dir = Path(cfg.run.dir)
    device = init_distributed(resolve_device(args.device if args.device != "auto" else cfg.run.device))
    _prepare_run_dir(run_dir, args, to_toml(record))
    torch.manual_seed(cfg.run.seed)
    setup, extra = task.build_setup(cfg, device)
    with peer_guard(f"the last checkpoint in {run_dir / 'checkpoints'} is intact; continue with "
                    f"`diffspace train {run_dir} --resume` (under torchrun or not)"):
        tr = train(setup, cfg.train, run_dir, record, seed=cfg.run.seed, resume=args.resume,
                   accumulate=args.accumulate, progress=not args.no_progress, extra=extra)
    if tr.rank == 0:
        if task.after_train:
            task.after_train(run_dir)
        print(f"trained {tr.step} steps in {tr.elapsed:.0f} s; run directory: {run_dir}")


def _prepare_run_dir(run_dir: Path, args, config_toml: str) -> None:
    """Check the run directory on every rank, then let rank 0 alone clear it and write the config."""
    from diffspace.train.distributed import barrier, is_main

    if args.resume and not (run_dir / "checkpoints" / "last.safetensors").is_file():
        raise UserError(f"--resume: no checkpoint in {run_dir}")
    occupied = not args.resume and run_dir.exists() and any(run_dir.iterdir())
    if occupied and not args.overwrite:
        raise UserError(f"run directory {run_dir} is not empty; use --resume to continue it or "
                        "--overwrite to replace it")
    barrier()  # why: every rank looks before rank 0 changes anything, or they would see its config
    if is_main():
        if occupied:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_toml + "\n")


def _load(args):
    from diffspace.cli.runs import load_run
    from diffspace.train.distributed import init_distributed
    from diffspace.utils import resolve_device

    args.device_obj = init_distributed(resolve_device(args.device))
    return load_run(args.run, args.device_obj)


def cmd_sample(args) -> None:
    from diffspace.cli.tasks import task_of
    from diffspace.train.distributed import peer_guard

    run = _load(args)
    with peer_guard("nothing was written"):
        task_of(run.meta["config"], args.run).sample(run, args)


def cmd_eval(args) -> None:
    from diffspace.cli.tasks import task_of
    from diffspace.train.distributed import is_main, peer_guard

    run = _load(args)
    with peer_guard("no metrics were written"):
        metrics = task_of(run.meta["config"], args.run).evaluate(run, args)
    if not is_main():  # the other ranks only helped sample
        return
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    width = max(len(k) for k in metrics)
    print(f"evaluation of {run.dir} (step {run.step})")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.5g}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def cmd_optimize_grid(args) -> None:
    from diffspace.cli.continuous_run import optimize_grid_cmd

    optimize_grid_cmd(_load(args), args)


def cmd_train_images_classifier(args) -> None:
    from diffspace.eval.featurenet import train_classifier, train_featurenet

    if args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    fn = train_featurenet if args.command == "train-featurenet" else train_classifier
    info = fn(args.data, args.out, steps=args.steps, seed=args.seed, path=args.path or None, size=args.size)
    print(f"wrote {args.out}: " + json.dumps(info))


def cmd_samplers(args) -> None:
    from diffspace.samplers.registry import describe_samplers

    print(describe_samplers())


def cmd_info(args) -> None:
    from diffspace.cli.config import to_toml
    from diffspace.cli.runs import checkpoint_of, run_dir_of
    from diffspace.train.checkpoint import load_checkpoint

    ckpt = checkpoint_of(args.run)
    tensors, meta = load_checkpoint(ckpt)
    n_params = sum(v.numel() for k, v in tensors.items() if k.startswith("model."))
    run_dir = run_dir_of(ckpt)
    print(f"checkpoint  {ckpt}\nstep        {meta['step']} of {meta['config']['train']['steps']}")
    print(f"elapsed     {meta['elapsed']:.0f} s\nparameters  {n_params:,}")
    log = run_dir / "log.jsonl"
    if log.is_file() and log.read_text().strip():
        last = json.loads(log.read_text().strip().splitlines()[-1])
        print(f"last loss   {last['loss']:.5g} at step {last['step']}")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        print("metrics     " + json.dumps(json.loads(metrics.read_text())))
    print("\n" + to_toml(meta["config"]))


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "info": cmd_info,
            "optimize-grid": cmd_optimize_grid, "samplers": cmd_samplers,
            "train-featurenet": cmd_train_images_classifier, "train-classifier": cmd_train_images_classifier}


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # why: `diffspace ... | head` exits quietly
    args = build_parser().parse_args(argv)
    from diffspace.train.distributed import shutdown
    from diffspace.train.loop import TrainingError

    try:
        COMMANDS[args.command](args)
    except UserError as e:
        print(f"diffspace: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"diffspace: {args.command} stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffspace: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
