"""The `diffspace` command line: argparse -> option dataclasses -> `diffspace.runs`, then printing, files
and exit codes. Bad input exits 2 with one line; a run that cannot go on exits 1 with one line."""

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from diffspace import __version__
from diffspace.rng import MAX_SEED
from diffspace.types import TrainingError, UserError

EPILOG = "Run `diffspace COMMAND --help` for the options of each command."


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # why: empty defaults mean "the run's own", said in the help
        return action.help if action.default in (None, "", []) else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # why: `--order 1` was read as optimize-grid's --orders
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"diffspace: error: {message}\n")


def _seed(text: str) -> int:
    """argparse type of every --seed: an integer in 0..MAX_SEED (torch's generators take 64-bit seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is in 0..{MAX_SEED}, got {value}")
    return value


def _given(text: str) -> str:
    """argparse type of every name and path: not empty (an empty --out or --json was taken as not given, an
    empty run as the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value; give a name")
    return text


def _add_device(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run: auto picks CUDA when available")


def _add_sampling(p):
    p.add_argument("--sampler", help="sampler name (see `diffspace samplers`); default: the run's "
                                     "[sample] sampler", type=_given)
    p.add_argument("--steps", type=int, help="number of steps; default: the run's [sample] steps")
    p.add_argument("--grid", help="continuous runs: noise-level grid: karras, logsnr, uniform_t, leading, "
                                  "trailing, linspace; karras_jumps or uniform_t_jumps (few-step grids that "
                                  "end on a jump to the data, docs/fewstep.md); or optimized (stored by "
                                  "`diffspace optimize-grid`); default: the run's [sample] grid", type=_given)
    p.add_argument("--seed", type=_seed, default=0, help="sampling seed (sample i depends only on it and i)")
    p.add_argument("--cfg", type=float, help="class-conditional runs: classifier-free guidance scale w "
                                             "(0: unconditional, 1: conditional); default: 1")
    p.add_argument("--sigma-min", type=float, help="continuous runs: lowest nonzero noise level of the grid "
                                                   "(default: the path's own)")
    p.add_argument("--sigma-max", type=float, help="continuous runs: the starting noise level (default: the "
                                                   "path's own, e.g. 157 for the DDPM table, like diffusers)")
    for name, (kind, users, meaning) in _sampler_options().items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction,
                           help=f"{', '.join(users)}: {meaning} (default: the sampler's)")
        else:
            p.add_argument(flag, type=kind, help=f"{', '.join(users)}: {meaning} (default: the sampler's)")


def _sampler_options() -> dict[str, tuple[type, list[str], str]]:
    """Every sampler option in the registry: name -> (type, samplers that take it, meaning)."""
    from diffspace.samplers.registry import SAMPLERS

    out: dict[str, tuple[type, list[str], str]] = {}
    for sampler, spec in SAMPLERS.items():
        for opt in spec.options:
            kind, users, meaning = out.get(opt.name, (opt.type, [], opt.meaning))
            out[opt.name] = (kind, [*users, sampler], meaning)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="diffspace", formatter_class=_Formatter, epilog=EPILOG,
                description="Train, sample and evaluate diffusion and flow models in one design space.")
    p.add_argument("--version", action="version", version=f"diffspace {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", formatter_class=_Formatter, help="train a model from a TOML config",
                       description="Train from a TOML config; writes a run directory (config, "
                                   "checkpoints, log, loss plot). Nothing is written before the config, "
                                   "data and model are known to be good.")
    t.add_argument("config", type=_given, help="TOML config file (or a run directory with --resume)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in the given directory (or run.dir) from its last checkpoint; "
                        "with a larger --set train.steps, extend a finished run")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a trained run in run.dir (only a directory diffspace created, holding "
                        "only its files)")
    t.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_device(t)

    s = sub.add_parser("sample", formatter_class=_Formatter, help="draw samples from a trained run",
                       description="Draw samples from a run directory or checkpoint file.")
    s.add_argument("run", type=_given, help="run directory or checkpoint (.safetensors)")
    # why --num-samples: torchrun's own parser rejects "--n" as an ambiguous prefix of its options
    s.add_argument("--n", "--num-samples", dest="n", type=int,
                   help="number of samples; default: the run's [sample] n")
    s.add_argument("--out", help="output .npz/.npy/.csv with its picture (images, points) beside it in .png, "
                                 "or .png for the picture with the .npz beside it; none of them may exist "
                                 "(default: RUN/samples.npz; text runs: RUN/samples.txt; these are the "
                                 "run's own files, which each sample command replaces)", type=_given)
    s.add_argument("--class", dest="class_labels", type=int, nargs="+", metavar="K",
                   help="class-conditional runs: the class of the samples (several are cycled; default: "
                        "0, 1, .., K-1 cycled)")
    s.add_argument("--classifier", type=_given, metavar="FILE",
                   help="image runs: classifier guidance by this noise-aware classifier (from `diffspace "
                        "train-classifier`) towards --class")
    s.add_argument("--classifier-scale", type=float, metavar="S",
                   help="scale s of --classifier guidance (0: none; default 1)")
    s.add_argument("--prompt", action="append",
                   help="text runs: the text every sample continues (once); text_to_image runs: a caption, "
                        "repeatable (each gets --n samples, one row of the --out .png grid)")
    s.add_argument("--block", type=int, help="text runs: block size L' for block / semi-AR decoding")
    s.add_argument("--temperature", type=float, help="text runs: sampling temperature; flow runs: x = "
                                                     "f^-1(T z) (default: the run's sample.temperature)")
    s.add_argument("--top-k", type=int, help="text runs: keep the k most probable tokens (0: all; default: "
                                             "the run's sample.top_k)")
    s.add_argument("--top-p", type=float, help="text runs: nucleus sampling mass (1: all; default: the run's "
                                               "sample.top_p)")
    _add_sampling(s)
    _add_device(s)

    e = sub.add_parser("eval", formatter_class=_Formatter, help="evaluate a trained run",
                       description="Sample from a run and compare with held-out data; writes "
                                   "RUN/metrics.json and pictures, prints a summary.")
    e.add_argument("run", type=_given, help="run directory (or its checkpoint file): the metrics and "
                                           "pictures are written there")
    e.add_argument("--n", "--num-samples", dest="n", type=int,
                   help="number of samples; default: the run's [eval] n (images: the test split)")
    e.add_argument("--json", type=_given, help="also write the metrics to this file")
    e.add_argument("--featurenet", help="image runs: feature-net artifact (default: RUN/featurenet."
                                        "safetensors, trained there on the run's data if missing)",
                                        type=_given)
    e.add_argument("--nll", action="store_true",
                   help="continuous runs: also the PF-ODE NLL of the test split (nats, bits/dim, "
                        "standard error, NFE) and, for 8-bit-style image data, the DDPM bound; flow, vae "
                        "and autoregressive runs: their exact NLL or bound (nll_kind) in the same units")
    e.add_argument("--nll-n", type=int, help="test examples used by --nll (default: continuous runs 1000, "
                                             "others the run's eval.nll_n)")
    e.add_argument("--ppl", action="store_true",
                   help="text runs: only bits/char and perplexity on the validation split")
    e.add_argument("--nfe", help="continuous runs: the quality-against-NFE curve at these numbers of network "
                                 "evaluations per sample, e.g. 1,2,4,8,35 (RUN/nfe.json, RUN/nfe.png)",
                                 type=_given)
    e.add_argument("--compare", type=_given, nargs="+", default=[], metavar="RUN",
                   help="with --nfe: more runs, each curve a line of RUN/nfe.png (and its own nfe.json)")
    _add_sampling(e)
    _add_device(e)

    d = sub.add_parser("distill", formatter_class=_Formatter, help="few-step students of a trained run",
                       description="Progressive distillation, consistency distillation or reflow from a "
                                   "trained continuous run; each round is a run directory OUT/round_K whose "
                                   "config names its teacher, evaluated after training; OUT/distill.json "
                                   "lists the rounds (see docs/fewstep.md).")
    d.add_argument("teacher", type=_given, help="the teacher's run directory (a continuous run)")
    d.add_argument("--method", required=True, choices=["progressive", "consistency", "reflow"])
    d.add_argument("--rounds", type=int, help="progressive: halvings (default: down to one step); reflow: "
                                              "k of the k-rectified flow (default 1); consistency: 1")
    d.add_argument("--steps", type=int, default=16,
                   help="progressive: the first student's steps (its teacher takes twice as many)")
    d.add_argument("--out", help="folder of the rounds (default: TEACHER-METHOD beside the teacher)",
                   type=_given)
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of every student's config, e.g. --set train.steps=800")
    d.add_argument("--overwrite", action="store_true", help="replace round directories diffspace made")
    d.add_argument("--featurenet", help="image runs: the feature net the rounds are evaluated with",
                   type=_given)
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_device(d)

    o = sub.add_parser("optimize-grid", formatter_class=_Formatter,
                       help="fit a sampler's noise grid to a trained run",
                       description="Choose the STEPS noise levels that minimize the sampler's error "
                                   "against the adaptive PF-ODE solution on a calibration batch, and store "
                                   "them in RUN/grids.json with the plan's error and the run's grid's, on "
                                   "the calibration batch and on other noises; then sample with --grid "
                                   "optimized.")
    o.add_argument("run", type=_given, help="run directory")
    o.add_argument("--sampler", default="dpmpp_2m", help="deterministic sampler to fit the grid for",
                   type=_given)
    o.add_argument("--steps", type=int, default=5, help="number of steps of the grid")
    o.add_argument("--n-calib", type=int, default=512, help="calibration batch size")
    o.add_argument("--seed", type=_seed, default=0, help="calibration seed")
    o.add_argument("--method", default="nelder-mead", choices=["nelder-mead", "dp", "learned"],
                   help="nelder-mead: search the grid for any deterministic sampler (budget in sampler "
                        "runs); dp: dynamic programming over candidate levels for euler/heun, --steps = NFE; "
                        "learned: learn dpmpp_2m's weights and levels (S4S), same NFE")
    # why: method-specific options default to None, so runs.optimize_grid refuses one its method ignores
    o.add_argument("--budget", type=int, help="nelder-mead: runs of the sampler (default 600); learned: Adam "
                                              "steps (default 600)")
    o.add_argument("--orders", default="", help="dp: solver orders to choose from per step, e.g. 1,2 "
                                                "(default: the sampler's own)")
    o.add_argument("--candidates", type=int, help="dp: candidate noise levels (default 64)")
    o.add_argument("--pas", action="store_true", help="euler: also learn PAS coordinates (no extra NFE)")
    o.add_argument("--pas-k", type=int, help="PAS: basis vectors per step (default 4)")
    o.add_argument("--pas-tol", type=float, help="PAS: keep a step's correction only if it lowers the error "
                                                 "by more than this fraction (default 0.01)")
    o.add_argument("--sigma-min", type=float, help="lowest nonzero noise level (default: the path's own)")
    o.add_argument("--sigma-max", type=float, help="starting noise level (default: the path's own)")
    o.add_argument("--overwrite", action="store_true",
                   help="store the new plan whatever is stored for SAMPLER:STEPS (otherwise a plan that "
                        "does better on held-out noise is kept, and one of other weights, range or NFE "
                        "is refused)")
    _add_device(o)

    for name, what in (("train-featurenet", "a classifier whose features and predictions score "
                                              "image samples (FID, KID, precision/recall, CAS)"),
                       ("train-classifier", "a noise-aware classifier for classifier guidance")):
        c = sub.add_parser(name, formatter_class=_Formatter, help=f"train {what.split(' for ')[0]}",
                           description=f"Train {what}, offline, on an embedded or local image data set; "
                                       "saves a .safetensors artifact with a .json beside it.")
        c.add_argument("--data", type=_given, default="digits", help="digits, lfw, folder or npz")
        c.add_argument("--path", default="", help="folder or .npz file for --data folder/npz")
        c.add_argument("--size", type=int, default=0,
                       help="lfw: image size 24 or 32 (0: 24); folder: the square side (0: the images' own "
                            "if all share one)")
        c.add_argument("--fit", default="crop", choices=["crop", "resize"],
                       help="folder: how images of another size are fitted (as data.image_fit)")
        c.add_argument("--out", type=_given, required=True, help="output .safetensors file")
        c.add_argument("--steps", type=int, default=1500 if name == "train-featurenet" else 3000,
                       help="optimizer steps")
        c.add_argument("--seed", type=_seed, default=0, help="seed (also fixes the train/test split)")

    x = sub.add_parser("export", formatter_class=_Formatter, help="export weights or a diffusers folder",
                       description="Write a run's weights without training state to one .safetensors file "
                                   "(its metadata in the header; `diffspace sample FILE --out S.npz` reads "
                                   "it), or with --format diffusers a folder that diffusers loads (UNet / "
                                   "DiT runs of the ddpm path, EDM preconditioning or linear flow; see "
                                   "docs/diffusers.md).")
    x.add_argument("run", type=_given, help="run directory or checkpoint (.safetensors)")
    x.add_argument("--out", required=True, help="the .safetensors file, or the folder for --format diffusers "
                                                "(never replaced: it must not exist)", type=_given)
    x.add_argument("--ema", action="store_true",
                   help="export the EMA weights (what `diffspace sample` uses); default: the raw weights")
    x.add_argument("--format", default="safetensors", choices=["safetensors", "diffusers"],
                   help="safetensors: one weights file; diffusers: a diffusers folder (needs the extra)")

    sub.add_parser("samplers", formatter_class=_Formatter, help="list the samplers",
                   description="List every sampler with its order, whether it is stochastic, and "
                               "its number of network evaluations for n steps.")

    i = sub.add_parser("info", formatter_class=_Formatter, help="describe a run or checkpoint",
                       description="Print a run's config, progress and metrics, its network's parameters "
                                   "and multiply-accumulates per example and, for convolutional nets, "
                                   "the receptive field (layer recursion and input-gradient support).")
    i.add_argument("run", type=_given, help="run directory or checkpoint (.safetensors)")

    r = sub.add_parser("report", formatter_class=_Formatter, help="write a run's HTML report",
                       description="Write RUN/report.html: one static page (no network, pictures inline) "
                                   "with the run's metrics beside their baselines and protocol, samples, "
                                   "learning curves, optimized grids, the NFE curve when present and the "
                                   "config. Run `diffspace eval RUN` first for metrics and pictures.")
    r.add_argument("run", type=_given, help="run directory or checkpoint (.safetensors)")
    return p


def _given_sampler_options(args) -> dict:
    return {name: getattr(args, name) for name in _sampler_options() if getattr(args, name) is not None}


def cmd_train(args) -> None:
    from diffspace import runs
    from diffspace.config import to_dict, to_toml
    from diffspace.train.distributed import is_main

    if args.dry_run:
        print(to_toml(to_dict(runs.load_config(args.config, args.set, args.resume))))
        return
    try:
        run = runs.train(args.config, args.set, resume=args.resume, overwrite=args.overwrite,
                         accumulate=args.accumulate, device=args.device, progress=not args.no_progress)
    except KeyboardInterrupt:
        _say_resume(args)
        raise
    if is_main():
        print(f"trained {run.step} steps in {run.meta['elapsed']:.0f} s; run directory: {run.dir}")


def _say_resume(args) -> None:
    """After Ctrl-C: where the checkpoint is and the exact command that continues the run."""
    from diffspace import runs
    from diffspace.runs.rundir import checkpoint_of
    from diffspace.train.checkpoint import load_checkpoint

    run_dir = Path(args.config) if args.resume and Path(args.config).is_dir() else \
        Path(runs.load_config(args.config, args.set, args.resume).run.dir)
    try:
        step = load_checkpoint(checkpoint_of(run_dir))[1]["step"]
    except UserError:  # stopped before its first checkpoint
        print(f"diffspace: interrupted before the first checkpoint; nothing to resume in {run_dir}",
              file=sys.stderr)
        return
    given = (("--device", args.device, "auto"), ("--accumulate", args.accumulate, 1))
    flags = "".join(f" {flag} {value}" for flag, value, default in given if value != default)
    print(f"diffspace: interrupted; checkpoint at step {step} in {run_dir / 'checkpoints'}; continue with:\n"
          f"  diffspace train {run_dir} --resume{flags}", file=sys.stderr)


def _load(args):
    from diffspace import runs
    from diffspace.train.distributed import init_distributed
    from diffspace.utils import resolve_device

    return runs.load_run(args.run, init_distributed(resolve_device(args.device)))


def _write_array(x, out: Path, prompts: list[str] | None = None) -> None:
    """Samples to .npy, .npz (with the prompt of each sample, if any) or .csv."""
    import numpy as np

    from diffspace.files import atomic_write

    if out.suffix not in (".npy", ".npz", ".csv"):
        raise UserError(f"--out {out}: use a .npz, .npy or .csv file name")
    with atomic_write(out) as tmp:
        if out.suffix == ".npy":
            np.save(tmp, x.numpy())
        elif out.suffix == ".npz":
            np.savez(tmp, samples=x.numpy(), **({"prompts": np.array(prompts)} if prompts else {}))
        else:
            rows = x.flatten(1).tolist()
            tmp.write_text("\n".join(",".join(f"{v:.9g}" for v in row) for row in rows) + "\n")


def cmd_sample(args) -> None:
    from diffspace import runs
    from diffspace.eval.plots import labelled_grid, scatter_2d
    from diffspace.files import check_new_files, write_text
    from diffspace.runs.rundir import check_run_dir
    from diffspace.train.distributed import peer_guard

    run = _load(args)
    opts = runs.SampleOptions(
        n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps, grid=args.grid,
        sampler_options=_given_sampler_options(args), sigma_min=args.sigma_min,
        sigma_max=args.sigma_max, guidance=args.cfg,
        class_labels=tuple(args.class_labels) if args.class_labels else None, classifier=args.classifier,
        classifier_scale=args.classifier_scale,
        prompts=tuple(args.prompt) if args.prompt else None,
        block=args.block, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    suffixes = (".txt",) if run.task == "text" else (".npz", ".npy", ".csv", ".png")
    if args.out and Path(args.out).suffix not in suffixes:
        raise UserError(f"--out {args.out}: use a {', '.join(suffixes)} file name")
    if not args.out:
        check_run_dir(run.dir, "samples", "; give --out FILE")
    else:  # the file named, the arrays beside a .png, the picture beside the arrays: none may exist
        arrays = Path(args.out).with_suffix(".npz") if Path(args.out).suffix == ".png" else Path(args.out)
        # why args.out too: as typed, with a trailing '/' a Path drops ('x.png/' wrote over x.npz)
        check_new_files(args.out, arrays, *([] if run.task == "text" else [arrays.with_suffix(".png")]))
    with peer_guard("nothing was written"):
        samples = runs.sample(run, opts)
    if samples is None:  # a torchrun rank other than 0: it only helped
        return
    if isinstance(samples, list):  # text
        out = Path(args.out) if args.out else run.dir / "samples.txt"
        text = "".join(f"=== sample {i}\n{t}\n" for i, t in enumerate(samples))
        write_text(out, text)
        print(text, end="")
    else:
        out = Path(args.out) if args.out else run.dir / "samples.npz"
        rows = len(opts.prompts) if opts.prompts else 0  # text_to_image: one grid row per prompt
        per_row = len(samples) // rows if rows else 10
        if out.suffix == ".png":  # the grid, with the arrays beside it
            out = out.with_suffix(".npz")
        _write_array(samples, out, [p for p in opts.prompts for _ in range(per_row)] if rows else None)
        sc = run.cfg.sample
        what = f"{run.task}, step {run.step}"
        if hasattr(sc, "sampler"):
            grid = opts.grid or getattr(sc, "grid", None)  # why: say when an optimized plan drew the samples
            what = f"{opts.sampler or sc.sampler}, {opts.steps or sc.steps} steps"
            what += f", {grid} grid" if grid else ""
        if samples.ndim == 4:  # a titled grid: ten per row, or one row per prompt labelled with it
            title = (f"{run.dir.name} (step {run.step}): {what}, seed {opts.seed}"
                     + (f", cfg {opts.guidance:g}" if opts.guidance is not None else ""))
            labels = [p if len(p) <= 40 else p[:39] + "…" for p in opts.prompts] if rows else None
            labelled_grid((samples if rows else samples[:100]).clamp(-1, 1), out.with_suffix(".png"), per_row,
                          title, labels, cell_inches=max(0.45, samples.shape[-1] * 0.04))  # >= 4 px per pixel
        elif samples.ndim == 2 and samples.shape[1] >= 2:  # vector data: continuous and family runs
            from diffspace.runs import registries

            scatter_2d(samples, registries.load(run.cfg)["x_test"], out.with_suffix(".png"), what)
        if samples.ndim == 4 or (samples.ndim == 2 and samples.shape[1] >= 2):
            print(f"wrote {len(samples)} samples to {out} and the picture {out.with_suffix('.png')}")
            return
    print(f"wrote {len(samples)} samples to {out}")


def cmd_eval(args) -> None:
    from diffspace import runs
    from diffspace.files import check_new_files, write_text
    from diffspace.train.distributed import is_main, peer_guard

    if args.nfe is not None or args.compare:
        return _eval_nfe(args)
    run = _load(args)
    if args.json is not None:
        check_new_files(args.json)
    opts = runs.EvalOptions(
        n=args.n, seed=args.seed, sampler=args.sampler, steps=args.steps, grid=args.grid,
        sampler_options=_given_sampler_options(args), sigma_min=args.sigma_min,
        sigma_max=args.sigma_max, guidance=args.cfg, featurenet=args.featurenet,
        nll=args.nll, nll_n=args.nll_n, ppl_only=args.ppl)
    with peer_guard("no metrics were written"):
        metrics = runs.evaluate(run, opts)
    if not is_main():  # the other ranks only helped sample
        return
    if args.json is not None:
        write_text(args.json, json.dumps(metrics, indent=2) + "\n")
    print(f"evaluation of {run.dir} (step {run.step})")
    _print_metrics(metrics)


def _print_metrics(metrics: dict) -> None:
    """One indented line per metric, names aligned, floats to 5 significant digits."""
    width = max(map(len, metrics), default=0)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.5g}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def _eval_nfe(args) -> None:
    from diffspace.runs.nfe import nfe_curves
    from diffspace.train.distributed import is_main, peer_guard

    if args.nfe is None:
        raise UserError("--compare draws NFE curves: give --nfe too, e.g. --nfe 1,2,4,8,35")
    try:
        nfes = [int(v) for v in args.nfe.split(",")]
    except ValueError:
        raise UserError(f"--nfe takes integers like 1,2,4,8,35; got {args.nfe!r}") from None
    given = [flag for flag, value in (("--steps", args.steps), ("--cfg", args.cfg), ("--nll", args.nll),
                                      ("--nll-n", args.nll_n),
                                      ("--sigma-min", args.sigma_min), ("--sigma-max", args.sigma_max),
                                      ("--json", args.json)) if value not in (None, False)]
    given += ["--" + k.replace("_", "-") for k in _given_sampler_options(args)]
    if given:
        raise UserError(f"--nfe sets the steps and samples unguided over each run's range; drop {given[0]}")
    runs_ = [_load(args)] + [_load(argparse.Namespace(run=r, device=args.device)) for r in args.compare]
    earlier = [str(r.dir) for r in runs_ if (Path(r.dir) / "nfe.json").is_file()]
    with peer_guard("no NFE curve was written"):
        curves = nfe_curves(runs_, nfes, args.sampler, args.grid, args.n, args.seed, args.featurenet)
    if not is_main():
        return
    for label, rows in curves.items():
        key = "sw2_ratio" if "sw2_ratio" in rows[0] else "fid_ratio"
        print(f"{label}: {rows[0]['sampler']} on the {rows[0]['grid']} grid; {key} (1 = data baseline)"
              + (", cas" if "cas" in rows[0] else ""))
        for r in rows:
            extra = f"  cas {r['cas']:.3f}" if "cas" in r else ""
            asked = f", asked {r['nfe_asked']}" if r["nfe_asked"] != r["nfe"] else ""
            steps = f"{r['steps']} step" + ("s" if r["steps"] != 1 else "")
            print(f"  NFE {r['nfe']:>4} ({steps}{asked})  {r[key]:.4g}{extra}")
        if any(r["nfe_asked"] != r["nfe"] for r in rows):
            print(f"  ({rows[0]['sampler']} cannot take every NFE asked; --sampler euler does)")
    print(f"wrote {runs_[0].dir / 'nfe.png'} and nfe.json in each run directory"
          + (f" (replacing the earlier curves of {', '.join(earlier)})" if earlier else ""))


def cmd_distill(args) -> None:
    from diffspace.runs.distill import DistillOptions, distill

    opts = DistillOptions(args.method, args.out, args.rounds, args.steps, tuple(args.set), args.overwrite,
                          args.featurenet)
    for run in distill(args.teacher, opts, args.device, progress=not args.no_progress):
        print(f"{run.dir}: {run.cfg.sample.sampler}, {run.cfg.sample.steps} steps, trained {run.step} steps "
              f"in {run.meta['elapsed']:.0f} s")


def cmd_optimize_grid(args) -> None:
    from diffspace import runs

    try:
        orders = tuple(int(o) for o in args.orders.split(",")) if args.orders else None
    except ValueError:
        raise UserError(f"--orders takes solver orders like 1,2; got {args.orders!r}") from None
    from diffspace.runs.sampling import GRIDS_FILE, describe_plan, read_plans

    run = _load(args)
    key = f"{args.sampler}:{args.steps}"
    sigmas = runs.optimize_grid(run, args.sampler, args.steps, args.n_calib, args.seed, args.sigma_min,
                                args.sigma_max, args.method, args.budget, orders, args.candidates, args.pas,
                                args.pas_k, args.pas_tol, args.overwrite)
    levels = ", ".join(f"{v:.4g}" for v in sigmas.tolist())
    what = "solver (weights and grid)" if args.method == "learned" else "grid"
    nfe = f" (NFE {args.steps})" if args.method == "dp" else ""  # why: a DP plan's --steps counts calls
    # why: the plans live in the run's directory, also when RUN named a checkpoint file in it
    print(f"stored the {len(sigmas) - 1}-step {what}{nfe} for {args.sampler} in {run.dir / GRIDS_FILE}: "
          f"{levels}")
    entry = read_plans(Path(run.dir) / GRIDS_FILE)[key]
    print(describe_plan(key, entry))
    from diffspace.runs.rundir import CHECKPOINT

    latest = not Path(args.run).is_file() or Path(args.run).resolve() == (run.dir / CHECKPOINT).resolve()
    src = run.dir if latest else args.run  # why: the plan of an earlier checkpoint is for its weights
    print(f"sample with: diffspace sample {src} --sampler {args.sampler} --steps {args.steps} "
          "--grid optimized")


def cmd_train_images_classifier(args) -> None:
    from diffspace.eval.featurenet import train_classifier, train_featurenet

    fn = train_featurenet if args.command == "train-featurenet" else train_classifier
    info = fn(args.data, args.out, steps=args.steps, seed=args.seed, path=args.path or None, size=args.size,
              fit=args.fit)
    print(f"wrote {args.out}: " + json.dumps(info))


def cmd_export(args) -> None:
    from diffspace import runs

    run = runs.load_run(args.run, ema=args.ema)
    export = runs.export_diffusers if args.format == "diffusers" else runs.export_weights
    out = export(run, args.out)
    print(f"wrote the {run.meta['weights']} weights of {args.run} (step {run.step}) to {out}")


def cmd_samplers(args) -> None:
    from diffspace.discrete.kinds import KINDS
    from diffspace.samplers.registry import describe_samplers

    print("continuous runs (images, vectors):\n" + describe_samplers())
    print("\ntext runs (task = \"text\"): the samplers of each model.kind, its default first; each takes "
          "--temperature, --top-k, --top-p and (where the kind allows) --prompt")
    width = max(map(len, KINDS))
    for name, kind in KINDS.items():
        samplers = [s + ("" if spec.reads_steps else " (one call per token, no --steps)")
                    + (" (--block)" if spec.block else "") for s, spec in kind.samplers.items()]
        print(f"  {name:<{width}}  {', '.join(samplers)}")


def cmd_info(args) -> None:
    """What a run directory holds. Only reads: the checkpoint is required (UserError without it); a file
    it cannot read (log.jsonl, metrics.json, grids.json) is one 'unreadable' line and the rest is shown."""
    from diffspace import runs
    from diffspace.config import to_toml
    from diffspace.files import read_json
    from diffspace.runs.rundir import checkpoint_of
    from diffspace.train.loop import read_log

    ckpt = checkpoint_of(args.run)
    run = runs.load_run(ckpt)
    print(f"checkpoint  {ckpt}\ntask        {run.task}\nstep        {run.step} of "
          f"{run.meta['config']['train']['steps']}\nelapsed     {run.meta['elapsed']:.0f} s")
    net = runs.network_info(run)
    print(f"parameters  {net['parameters']:,}")
    if "macs_per_sample" in net:
        print(f"MACs        {net['macs_per_sample']:,} per example ({net['macs_of']})")
    if "receptive_field_px" in net:
        H, W = net["input_px"]
        rows, cols = net["gradient_support_px"]
        whole = f"; {', '.join(net['global_ops'])} see the whole image" if net["global_ops"] else ""
        print(f"receptive   {net['receptive_field_px']:g} px by the layer recursion; the centre output "
              f"pixel's input gradient spans {rows} x {cols} of the {H} x {W} input{whole}")
    try:
        rows = read_log(run.dir / "log.jsonl")
    except UserError as e:
        rows = []
        print(f"log         unreadable: {e}")
    if rows:
        print(f"last loss   {rows[-1]['loss']:.5g} at step {rows[-1]['step']}")
    if (run.dir / "metrics.json").is_file():
        try:
            m = read_json(run.dir / "metrics.json")
        except UserError as e:
            print(f"metrics     unreadable: {e}")
        else:
            stale = "" if m.get("step") == run.step else f" (stale: from step {m.get('step')})"
            print(f"metrics{stale}")
            _print_metrics(m)
    if run.task == "continuous":
        from diffspace.runs.sampling import GRIDS_FILE, describe_plan, plan_problem, read_plans

        try:
            plans = read_plans(run.dir / GRIDS_FILE)
        except UserError as e:  # why: info reports what it can; a bad grids.json is one line of it
            plans = {}
            print(f"plans       unreadable: {e}")
        for key, entry in plans.items():  # sample them with --grid optimized
            problem = plan_problem(run, key, entry)
            print(f"plan        {describe_plan(key, entry)}" + (f" [unusable: {problem}]" if problem else ""))
    print("\n" + to_toml(run.meta["config"]))


def cmd_report(args) -> None:
    from diffspace.runs.report import write_report

    print(f"wrote {write_report(args.run)}")


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "info": cmd_info,
            "optimize-grid": cmd_optimize_grid, "samplers": cmd_samplers, "export": cmd_export,
            "train-featurenet": cmd_train_images_classifier, "train-classifier": cmd_train_images_classifier,
            "report": cmd_report, "distill": cmd_distill}


_OOM_HINTS = {"train": "; use a smaller train.batch_size, or --accumulate N for the same batch in N smaller "
                       "passes (a run with a checkpoint continues with --resume)",
              "sample": "; nothing was written", "eval": "; nothing was written"}


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # why: `diffspace ... | head` exits quietly
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="diffspace: %(message)s", stream=sys.stderr)
    from diffspace.train.distributed import shutdown

    try:
        COMMANDS[args.command](args)
    except UserError as e:
        print(f"diffspace: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"diffspace: {args.command} stopped: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        from diffspace.utils import out_of_memory

        what = out_of_memory(e)
        if what is None:
            raise
        hint = _OOM_HINTS.get(args.command, "")
        print(f"diffspace: {args.command} stopped: {what}{hint}", file=sys.stderr)
        return 1
    except OSError as e:  # a read-only folder, a full disk, a name taken by a folder: what the system said
        where = f": {e.filename}" if e.filename else ""
        print(f"diffspace: {args.command} stopped: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command != "train":  # train said where its checkpoint is and how to resume
            print("diffspace: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
