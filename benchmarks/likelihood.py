"""Test NLL of diffusion and flow-matching models against the data's true differential entropy, beside a
neural spline flow (zuko, the `bench` extra) trained for the same wall-clock time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/likelihood.py            # the full run
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/likelihood.py --quick    # a smoke run, nothing written
    # or one process per dataset (--datasets checkerboard --out A.json, ...), then --merge A.json B.json

Every diffusion model trains with the lead's trainer (diffspace.train.loop) for the same number of
steps and batch size; its EMA model's NLL on held-out points is the PF-ODE likelihood with the exact
divergence (diffspace.samplers.likelihood, D = 2) in float64. The flow trains for the median wall-clock
of the diffusion models on the same data. True entropies are for the data exactly as diffspace.data.toy
generates it: checkerboard is uniform on 8 unit squares (log 8); 8-gaussians is the mixture
diffspace.data.gmm.eight_gaussians_mixture(), its entropy a Monte Carlo average of the exact log-density.
Writes benchmarks/results/likelihood.json and likelihood.md.
"""

import argparse
import copy
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffspace.config import build, to_dict
from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.data.toy import make_toy
from diffspace.eval.bits import summarize
from diffspace.runs import load_run
from diffspace.runs.continuous import ContinuousConfig, as_denoiser, build_path, build_setup, load_data
from diffspace.samplers.likelihood import log_likelihood, velocity_log_likelihood
from diffspace.train.loop import train

RESULTS = Path(__file__).parent / "results"

# one entry per model family: what differs from the shared [model]/[loss] defaults
MODELS = {
    "edm": {"model": {"path": "edm", "parameterization": "edm", "sigma_data": 1.0},
            "loss": {"weighting": "edm", "proposal": "lognormal", "p_mean": -1.2, "p_std": 1.2}},
    "vp-eps": {"model": {"path": "vp", "parameterization": "eps"},
               "loss": {"weighting": "eps", "proposal": "uniform"}},
    "cosine-v": {"model": {"path": "cosine", "parameterization": "v"},
                 "loss": {"weighting": "v", "proposal": "uniform"}},
    "linear-fm": {"model": {"path": "linear", "parameterization": "velocity"},
                  "loss": {"objective": "flow", "proposal": "uniform"}},
    # a variant, not one of the four families: EDM with its sigma proposal moved toward small noise,
    # where the NLL is decided (sharp cell edges); run it with --models edm-lowsigma
    "edm-lowsigma": {"model": {"path": "edm", "parameterization": "edm", "sigma_data": 1.0},
                     "loss": {"weighting": "edm", "proposal": "lognormal", "p_mean": -2.0, "p_std": 1.6}},
}
FAMILIES = ("edm", "vp-eps", "cosine-v", "linear-fm")
DATASETS = ("checkerboard", "8gaussians")


def true_entropy(name: str, n_mc: int) -> tuple[float, float]:
    """(entropy in nats, its Monte Carlo standard error) of the data as generated."""
    if name == "checkerboard":
        return math.log(8.0), 0.0  # uniform density 1/8 on total area 8
    gm = eight_gaussians_mixture()
    nll = -gm.log_prob(gm.sample(n_mc, torch.Generator().manual_seed(123)))
    return float(nll.mean()), float(nll.std()) / math.sqrt(n_mc)


def true_nll_test(name: str, n: int, seed: int) -> float:
    """Mean exact -log p over the held-out points the models are scored on: the gap to it is the
    models' excess NLL without the test set's own sampling error."""
    x = make_toy(name, n, seed, "test").double()
    if name == "checkerboard":
        return math.log(8.0)  # every point lies on a cell of density 1/8
    return float(-eight_gaussians_mixture().log_prob(x).mean())


def config(model: str, data: str, args, run_dir: str) -> ContinuousConfig:
    spec = MODELS[model]
    raw = {"run": {"dir": run_dir, "seed": args.seed, "device": "cpu"},
           "data": {"name": data, "n_train": args.n_train, "n_test": args.n_test},
           "model": {"net": "mlp", "mlp": {"hidden": args.hidden, "depth": args.depth}, **spec["model"]},
           "loss": spec["loss"],
           "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                     "warmup_steps": 100, "ema_halflife_steps": args.steps / 20, "log_every": 10**9,
                     "ckpt_every": 10**9}}
    return build(ContinuousConfig, raw, f"benchmark:{model}/{data}")


class Float32Net(torch.nn.Module):
    """Runs a float32 network inside a float64 solve (the noise embedding is float32 by design)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, noise_cond, **cond):
        return self.net(x.float(), noise_cond.float(), **cond).to(x.dtype)


def model_nll(cfg: ContinuousConfig, module, x: torch.Tensor, args) -> tuple[torch.Tensor, float]:
    """Per-example NLL (float64 PF-ODE state, exact divergence) and the NFE of the solve."""
    module = copy.deepcopy(module).eval()
    module.net = Float32Net(module.net)  # every wrapper (EDMPrecond, NetDenoiser, NetVelocity) has .net
    path, x = build_path(cfg), x.double()
    kw = dict(divergence="exact", rtol=args.tol, atol=args.tol)
    if cfg.loss.objective == "flow":
        r = velocity_log_likelihood(module, x, path, **kw)
    else:
        r = log_likelihood(as_denoiser(cfg, module), x, path, **kw)
    return r.nll, r.nfe


def run_diffusion(model: str, data: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(model, data, args, tmp)
        torch.manual_seed(cfg.run.seed)
        setup, _ = build_setup(cfg, torch.device("cpu"))
        d = load_data(cfg)
        t0 = time.perf_counter()
        tr = train(setup, cfg.train, Path(tmp), to_dict(cfg), seed=cfg.run.seed, progress=False)
        seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    nll, nfe = model_nll(cfg, tr.ema.module, d["x_test"], args)
    return {**summarize(nll, 2), "nfe": nfe, "train_seconds": seconds, "steps": tr.step,
            "eval_seconds": time.perf_counter() - t1}


def run_flow(data: str, seconds: float, args) -> dict:
    """zuko's neural spline flow, Adam on the same training set and batch size, for `seconds`."""
    try:
        import zuko
    except ImportError as e:
        raise SystemExit("the flow baseline needs the bench extra: pip install -e '.[bench]'") from e
    torch.manual_seed(args.seed)
    cfg = config("edm", data, args, "unused")
    d = load_data(cfg)
    flow = zuko.flows.NSF(features=2, transforms=args.flow_transforms, bins=args.flow_bins,
                          hidden_features=(args.hidden,) * 2)
    opt = torch.optim.Adam(flow.parameters(), lr=args.flow_lr)
    g = torch.Generator().manual_seed(args.seed)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(len(d["x_train"]), (args.batch_size,), generator=g)
        loss = -flow().log_prob(d["x_train"][idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    with torch.no_grad():
        nll = -flow().log_prob(d["x_test"])
    return {**summarize(nll.double(), 2), "train_seconds": time.perf_counter() - t0, "steps": steps,
            "transforms": args.flow_transforms, "bins": args.flow_bins}


def run_images(run_dir: str, args) -> dict:
    """Bits/dim of a trained image run on its test split: dequantized PF-ODE NLL (Hutchinson) and the
    DDPM bound of the same Denoiser on the standard 1000-step schedule, with and without labels."""
    from diffspace.data.quantized import Grid
    from diffspace.eval.bits import nll_report
    from diffspace.paths import DDPMDiscrete

    run = load_run(run_dir)
    d = load_data(run.cfg)
    x, y = d["x_test"][:args.image_n], d.get("y_test")
    den, path, k = as_denoiser(run.cfg, run.module), build_path(run.cfg), run.cfg.model.num_classes
    out = {"run": run_dir, "data": run.cfg.data.name, "step": run.step, "levels": args.image_levels}
    labels = {"unconditional": torch.full((len(x),), k)} if k else {"unconditional": None}
    if k and y is not None:
        labels["conditional"] = y[:len(x)]
    for name, lab in labels.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            out[name] = nll_report(den, path, x, grid=Grid(args.image_levels), bound_path=DDPMDiscrete(),
                                   bound_n_t=args.bound_n_t, batch_size=len(x), rtol=1e-5, atol=1e-5,
                                   cond={} if lab is None else {"class_labels": lab})
        out[name]["seconds"] = time.perf_counter() - t0
        print(f"{run.cfg.data.name} {name}: {out[name]}", flush=True)
    return out


def markdown(res: dict) -> str:
    lines = ["# Likelihood: test NLL (nats) against the true differential entropy", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']}", "",
             "Gap: model NLL minus the exact NLL of the same test points (log 8 for checkerboard). "
             "Diffusion models share one step budget; NLL is the PF-ODE NLL with the exact divergence "
             "(float64 state). The flow trains for the median wall-clock of the four families on the same "
             "data. Seconds were measured on a 2-core machine shared with other jobs, so equal step "
             "counts took unequal times; read them with the step counts.", "",
             "| model | " + " | ".join(f"{d} NLL (gap)" for d in res["datasets"])
             + " | train s (steps) | NFE |",
             "|---|" + "---|" * len(res["datasets"]) + "---|---|"]
    rows = [(m, res["nll"][m]) for m in res["nll"]] + [("NSF flow (zuko)", res["flow"])]
    for name, per in rows:
        ds = [d for d in res["datasets"] if d in per]
        cells = [f"{per[d]['nll_nats']:.3f} ± {per[d]['nll_stderr']:.3f} "
                 f"({per[d]['nll_nats'] - res['true_nll_test'][d]:+.3f})" if d in per else "-"
                 for d in res["datasets"]]
        secs = "/".join(f"{per[d]['train_seconds']:.0f} ({per[d]['steps']})" for d in ds)
        nfe = "/".join(str(round(per[d]["nfe"])) if "nfe" in per[d] else "-" for d in ds)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs} | {nfe} |")
    truth = [f"{res['true_entropy'][d]:.3f} ± {res['true_entropy_stderr'][d]:.3f}" for d in res["datasets"]]
    lines.append("| true entropy | " + " | ".join(truth) + " | | |")
    on_test = [f"{res['true_nll_test'][d]:.3f}" for d in res["datasets"]]
    lines.append("| exact NLL of the test points | " + " | ".join(on_test) + " | | |")
    if "images" in res:
        im = res["images"]
        title = f"## Bits/dim on {im['data']} ({im['levels']} levels), run `{im['run']}` step {im['step']}"
        lines += ["", title, "", "| labels | PF-ODE bits/dim | DDPM bound bits/dim | NFE |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['bits_per_dim']:.3f} ± {v['bits_per_dim_stderr']:.3f} | "
                  f"{v['bound_bits_per_dim']:.3f} ± {v['bound_bits_per_dim_stderr']:.3f} | {v['nfe']:.0f} |"
                  for k, v in im.items() if isinstance(v, dict)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--flow-transforms", type=int, default=4)
    p.add_argument("--flow-bins", type=int, default=16)
    p.add_argument("--flow-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flow", action="store_true", help="skip the flow baseline")
    p.add_argument("--models", default=",".join(FAMILIES))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--image-run", default="", help="also report bits/dim of this trained image run")
    p.add_argument("--image-n", type=int, default=360)
    p.add_argument("--image-levels", type=int, default=17, help="grey levels of the data (digits: 17)")
    p.add_argument("--bound-n-t", type=int, default=100, help="timesteps per example for the DDPM bound")
    p.add_argument("--quick", action="store_true", help="tiny budget, print only")
    p.add_argument("--out", default=str(RESULTS / "likelihood.json"))
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge per-dataset result files and write "
                   "the final likelihood.json and .md (run datasets as separate processes, then merge)")
    args = p.parse_args()
    if args.merge:
        return write(merge([json.loads(Path(f).read_text()) for f in args.merge]), Path(args.out))
    if args.image_run and not args.datasets:
        res = {"images": run_images(args.image_run, args)}
        return Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if args.quick:
        args.steps, args.n_test, args.n_train = 100, 200, 5000
    models, datasets = args.models.split(","), args.datasets.split(",")
    defaults = vars(p.parse_args([]))
    changed = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
               for k, v in vars(args).items() if v != defaults[k]]
    res = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/likelihood.py " + " ".join(changed),
           "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} thread(s), CPU",
           "datasets": datasets, "nll": {m: {} for m in models}, "flow": {},
           "true_entropy": {}, "true_entropy_stderr": {}, "true_nll_test": {}}
    for data in datasets:
        res["true_entropy"][data], res["true_entropy_stderr"][data] = true_entropy(data, 1_000_000)
        res["true_nll_test"][data] = true_nll_test(data, args.n_test, args.seed)
        for m in models:
            res["nll"][m][data] = r = run_diffusion(m, data, args)
            print(f"{data} {m}: NLL {r['nll_nats']:.4f} ± {r['nll_stderr']:.4f} "
                  f"(true {res['true_entropy'][data]:.4f}), {r['train_seconds']:.0f} s, NFE {r['nfe']}",
                  flush=True)
        if args.no_flow:
            continue
        budget = statistics.median(res["nll"][m][data]["train_seconds"] for m in models)
        res["flow"][data] = r = run_flow(data, budget, args)
        print(f"{data} NSF: NLL {r['nll_nats']:.4f} ± {r['nll_stderr']:.4f}, {r['steps']} steps", flush=True)
    if not args.quick:
        write(res, Path(args.out))


def merge(parts: list[dict]) -> dict:
    toy = [r for r in parts if "datasets" in r]
    res = {**toy[0], "datasets": list(dict.fromkeys(d for r in toy for d in r["datasets"])),
           "command": " ; ".join(r["command"] for r in toy)}
    for key in ("flow", "true_entropy", "true_entropy_stderr", "true_nll_test"):
        res[key] = {k: v for r in toy for k, v in r.get(key, {}).items()}
    models = list(dict.fromkeys(m for r in toy for m in r["nll"]))
    res["nll"] = {m: {d: v for r in toy for d, v in r["nll"].get(m, {}).items()} for m in models}
    for d in res["datasets"]:  # files written before true_nll_test existed: recompute (seed 0)
        n = next(per[d]["n"] for per in res["nll"].values() if d in per)
        res["true_nll_test"].setdefault(d, true_nll_test(d, n, 0))
    for r in parts:
        if "images" in r:
            res["images"] = r["images"]
    return res


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
