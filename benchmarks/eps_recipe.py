"""Why a diffspace-trained eps-network sampled badly with the ODE, and the diffusers recipe as a config.

Issue 13 item 7: the eps-MLP of the former benchmarks/samplers.toml (its settings are the ablation row
"residual MLP, recipe of samplers.toml") had an adaptive PF-ODE sliced W2 of 1.18 on the checkerboard
where a diffusers-style training of an MLP on the same DDPM table reached 0.033. This script trains,
each from scratch and single-threaded:

  reference   the recipe in plain PyTorch (`train_reference`, also the network of benchmarks/samplers.py):
              PlainMLP (4 x 128 SiLU on [x, 128 sinusoidal features of the integer timestep]), diffusers'
              float32 table (TABLE), x_t = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps with k ~ U{0..999}, eps
              MSE, Adam 5000 x 1024, lr 2e-3, 100 warmup steps, cosine to 2e-5, EMA 0.999 with the warmup
              of diffusers' EMAModel; with --seeds also the same batches through diffusers' own pieces
              (`DDPMScheduler.add_noise`, `EMAModel`, `get_timestep_embedding`: parts="diffusers");
  config      the same recipe through diffspace: `runs.train` on configs/ddpm-eps-checkerboard.toml
              (plain_mlp, proposal "table", `denoising_loss` with the eps weighting through NetDenoiser,
              the Trainer with lr_min and ema_decay / ema_warmup);
  and the config with one thing changed (VARIANTS, ABLATION).

Each network, as NetDenoiser(net, path, "eps") with its EMA weights and the table it was trained with
(the reference: diffusers' float32 table through `ddpm_from_scheduler_config`; a config run: its own
path), is sampled from the same 10k noises (x_T ~ N(0, I) at t = 1, sigma_max = 157) by the adaptive
PF-ODE (dopri5, rtol = atol = 1e-5) and compared with 10k held-out points: sliced W2 over 256 fixed
directions (diffspace.eval.metrics). Beside it: the same ODE with the checkerboard's exact denoiser
(the best any network can do on these noises), the held-out-vs-train floor, the ODE's NFE, the share
of samples outside [-2.5, 2.5]^2 and the largest sample norm, and the eps error at t = 1 against the
exact denoiser by the radius |x_T| (10k standard normal noises reach |x_T| = 4.5).

One evaluation is one draw: with --evals E every network, the floor and the exact denoiser are also
measured on realizations 1..E-1 (realization e: noises of seed e, held-out points of seed e), and the
report gives per realization the means and over all of them the spread, with how many evaluations land
at or below issue 13's bar (BAR), and the differences paired on the same realizations (recipe - exact
denoiser, recipe - recipe), in which the draw largely cancels. The floor and the exact denoiser alone
spread by about 0.008 (sd).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eps_recipe.py             # VARIANTS, 2 at a time
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eps_recipe.py --ablation  # one change at a time
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eps_recipe.py --seeds 6 --evals 8  # 3 recipes x 6 seeds
    .venv/bin/python benchmarks/eps_recipe.py [--ablation | --seeds 6] --report  # md from the json

Writes benchmarks/results/eps_recipe{,_ablation,_seeds}.{json,md}.
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from diffspace import runs
from diffspace.data.toy import checkerboard_denoiser, make_toy
from diffspace.eval.metrics import sliced_w2
from diffspace.nets.mlp import PlainMLP
from diffspace.param import NetDenoiser
from diffspace.paths.ddpm import DDPMDiscrete, ddpm_from_scheduler_config
from diffspace.samplers.ode import CountingDenoiser, sample_adaptive

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT.parent / "configs" / "ddpm-eps-checkerboard.toml"
CACHE = ROOT / "cache" / "eps_recipe_runs"  # the config variants' run directories
N, N_PROJ, RADII = 10_000, 256, (1.0, 2.0, 3.0, 4.0, 4.5, 5.0)
BAR = 0.036  # issue 13's must-show 5: the config's adaptive-ODE sliced W2 on the checkerboard
# diffusers' scheduler config of the recipe: DDPM, T = 1000, linear betas 1e-4..0.02
TABLE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}

# name -> --set overrides of the config, or (parts, seed) of the reference (`train_reference`)
VARIANTS = {
    "reference (plain PyTorch)": ("plain", 0),
    "config": [],
    "config, EMA without warmup": ["train.ema_warmup=false"],
    "config, residual MLP (today's `mlp`)": ["model.net=mlp"],
    "config, residual MLP without output LayerNorm": ["model.net=mlp", "model.mlp.out_norm=false"],
}
ABLATION = {
    "config": [],
    "proposal stratified (continuous t)": ["loss.proposal=stratified"],
    "EMA half-life 200 steps, no warmup": ["train.ema_decay=0.0", "train.ema_halflife_steps=200.0",
                                           "train.ema_warmup=false"],
    "lr to 0": ["train.lr_min=0.0"],
    "grad clip 1": ["train.grad_clip=1.0"],
    "4000 steps": ["train.steps=4000"],
    "seed 1": ["run.seed=1"],
    "residual MLP, recipe of samplers.toml": [
        "model.net=mlp", "loss.proposal=stratified", "train.ema_decay=0.0", "train.ema_halflife_steps=200.0",
        "train.lr_min=0.0", "train.grad_clip=1.0", "train.steps=4000", "train.ema_warmup=false"],
    "the same, without output LayerNorm": [
        "model.net=mlp", "model.mlp.out_norm=false", "loss.proposal=stratified", "train.ema_decay=0.0",
        "train.ema_halflife_steps=200.0", "train.lr_min=0.0", "train.grad_clip=1.0", "train.steps=4000",
        "train.ema_warmup=false"],
}


# ---- (a) the recipe in plain PyTorch ---------------------------------------------------------------

class DiffusersMLP(nn.Module):
    """PlainMLP's layers on [x, diffusers' `get_timestep_embedding(t, 128)`] with that function's
    defaults (sin before cos, frequency shift 1): the network as a diffusers user writes it.
    forward(x (B, 2), t (B,) or (1,)) -> (B, 2)."""

    def __init__(self):
        from diffusers.models.embeddings import get_timestep_embedding

        super().__init__()
        self.net, self.embed = PlainMLP(2, 128, 4).net, get_timestep_embedding

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(t.reshape(-1), 128).to(x.dtype).expand(x.shape[0], -1)
        return self.net(torch.cat([x, emb], dim=1))


class PlainEMA:
    """diffusers' EMAModel with its defaults, written out: at update n (from 0) the average moves towards the
    parameters with decay min(0.999, (1 + n) / (10 + n)), 0 at n = 0 (a copy)."""

    def __init__(self, parameters):
        self.shadow, self.n = [p.detach().clone() for p in parameters], 0

    @torch.no_grad()
    def step(self, parameters) -> None:
        decay = min(0.999, (1 + self.n) / (10 + self.n)) if self.n else 0.0
        for s, p in zip(self.shadow, parameters, strict=True):
            s.lerp_(p, 1 - decay)
        self.n += 1

    @torch.no_grad()
    def copy_to(self, parameters) -> None:
        for s, p in zip(self.shadow, parameters, strict=True):
            p.copy_(s)


def train_reference(dataset: str = "checkerboard", steps: int = 5000, seed: int = 0, batch: int = 1024,
                    cache: Path | None = None, parts: str = "plain") -> tuple[nn.Module, DDPMDiscrete]:
    """The diffusers way, written out, on toy set `dataset`: (the EMA network in eval mode, the path of
    the float32 table it was trained with). parts "plain": PlainMLP, the noising and the EMA written
    out; "diffusers": diffusers' own pieces, `DDPMScheduler.add_noise`, `EMAModel(decay=0.999)` and
    DiffusersMLP, on the same batches (same seed) and learning-rate schedule. With `cache` the weights
    are read from / written to cache/reference_{dataset}_{steps}_seed{seed}[_diffusers].safetensors.
    Raises ValueError for another `parts`."""
    if parts not in ("plain", "diffusers"):
        raise ValueError(f"parts is 'plain' or 'diffusers', got {parts!r}")
    path = ddpm_from_scheduler_config(TABLE)
    torch.manual_seed(seed)
    net = PlainMLP(2, 128, 4) if parts == "plain" else DiffusersMLP()
    suffix = "" if parts == "plain" else f"_{parts}"
    file = None if cache is None else cache / f"reference_{dataset}_{steps}_seed{seed}{suffix}.safetensors"
    if file is not None and file.exists():
        net.load_state_dict(load_file(file))
        return net.eval(), path
    warmup, lr, lr_min = 100, 2e-3, 2e-5
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def factor(s: int) -> float:  # linear warmup, then a cosine from lr to lr_min
        if s < warmup:
            return (s + 1) / warmup
        return (lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))) / lr

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    abar = path.alphas_cumprod.float()  # diffusers' float32 table, exactly
    if parts == "plain":
        def add_noise(x0, eps, k):  # diffusers' add_noise, written out
            return abar[k].sqrt()[:, None] * x0 + (1 - abar[k]).sqrt()[:, None] * eps
        ema = PlainEMA(net.parameters())
    else:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        add_noise, ema = DDPMScheduler(**TABLE).add_noise, EMAModel(net.parameters(), decay=0.999)
    data = make_toy(dataset, 100_000, seed, "train")
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (batch,), generator=g)]
        k = torch.randint(0, len(abar), (batch,), generator=g)
        eps = torch.randn(batch, 2, generator=g)
        loss = (net(add_noise(x0, eps, k), k.float()) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.step(net.parameters())
    ema.copy_to(net.parameters())
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(net.state_dict(), file)
    return net.eval(), path


# ---- (b) the config through diffspace --------------------------------------------------------------

def train_config(overrides: list[str], run_dir: Path) -> NetDenoiser:
    """`runs.train` on the config with overrides, in run_dir (replaced if it holds an earlier run of this
    script): the run's EMA Denoiser, on the path it was trained with."""
    run = runs.train(CONFIG, [*overrides, f"run.dir={run_dir}"], overwrite=True)
    cfg = run.cfg
    assert (cfg.model.path, cfg.model.parameterization, cfg.loss.weighting) == ("ddpm", "eps", "eps")
    return run.module


# ---- measurements ----------------------------------------------------------------------------------

def ode_samples(denoiser, path: DDPMDiscrete, realization: int = 0) -> tuple[torch.Tensor, int]:
    """The adaptive PF-ODE from the 10k noises of `realization` (seeded) at t = 1 (x_T ~ N(0, I)), and
    its NFE."""
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(realization))
    counter = CountingDenoiser(denoiser)
    with torch.no_grad():
        x = sample_adaptive(counter, noise * math.sqrt(1 + path.sigma_max**2), path.sigma_max,
                            path.sigma_min, rtol=1e-5, atol=1e-5)
    return x, counter.nfe


def eps_error_by_radius(denoiser, path: DDPMDiscrete) -> dict[str, float]:
    """RMS of eps_hat - eps_exact at t = 1 on 256 directions of x_T = r u, per radius r."""
    ang = torch.arange(256, dtype=torch.float64) * (2 * math.pi / 256)
    u = torch.stack([ang.cos(), ang.sin()], 1)
    sigma, out = path.sigma_max, {}
    for r in RADII:
        x = r * u * math.sqrt(1 + sigma**2)  # EDM space
        s = torch.full((len(x),), sigma, dtype=torch.float64)
        with torch.no_grad():
            x0_hat = denoiser(x.float(), s.float()).double()
        out[str(r)] = float(((checkerboard_denoiser(x, s) - x0_hat) / sigma).pow(2).sum(1).mean().sqrt())
    return out


def heldout(realization: int) -> torch.Tensor:
    """The 10k held-out checkerboard points of `realization`."""
    return make_toy("checkerboard", N, realization, "test")


def measure(denoiser, path: DDPMDiscrete, evals: int = 1) -> dict:
    """Sliced W2 of the ODE's samples to the held-out points, at realizations 0..evals-1 (each its own
    noises and held-out points): "sw2" at realization 0, "sw2_evals" all of them; the rest at 0."""
    x, nfe = ode_samples(denoiser, path)
    sw2 = [sliced_w2(x, heldout(0), n_proj=N_PROJ)]
    sw2 += [sliced_w2(ode_samples(denoiser, path, e)[0], heldout(e), n_proj=N_PROJ) for e in range(1, evals)]
    return {"sw2": sw2[0], "sw2_evals": sw2, "nfe": nfe,
            "outside": float((x.abs() > 2.5).any(1).double().mean()), "largest": float(x.norm(dim=1).max()),
            "eps_error_t1": eps_error_by_radius(denoiser, path)}


def seeds(k: int) -> dict[str, tuple[str, int] | list[str]]:
    """The reference (plain and with diffusers' own parts) and the config each at seeds 0..k-1: how far
    one training's W2 is from another's."""
    return ({f"reference, seed {s}": ("plain", s) for s in range(k)}
            | {f"diffusers' parts, seed {s}": ("diffusers", s) for s in range(k)}
            | {f"config, seed {s}": [f"run.seed={s}"] for s in range(k)})


def run_variant(item: tuple[str, tuple[str, int] | list[str]], evals: int = 1) -> tuple[str, dict]:
    """Train variant `item` (name, (parts, seed) of the reference or the config's overrides) and
    `measure` it."""
    name, overrides = item
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if isinstance(overrides, tuple):
        parts, seed = overrides
        net, path = train_reference(seed=seed, parts=parts)
        denoiser = NetDenoiser(net, path, "eps")
    else:
        denoiser = train_config(overrides, CACHE / name.replace(" ", "_").replace(",", ""))
        path = denoiser.path
    train_s = time.perf_counter() - t0
    res = measure(denoiser, path, evals)
    if isinstance(overrides, tuple):
        overrides = {"parts": overrides[0], "seed": overrides[1]}
    res |= {"overrides": overrides, "train_s": train_s}
    print(f"{name}: sliced W2 {res['sw2']:.4f} ({train_s:.0f} s)", flush=True)
    return name, res


def baselines(evals: int = 1) -> dict:
    """The floor (10k training points of realization e against its held-out points) and the exact
    denoiser through the same ODE, at realizations 0..evals-1."""
    floor = [sliced_w2(make_toy("checkerboard", N, e, "train"), heldout(e), n_proj=N_PROJ)
             for e in range(evals)]
    return {"heldout_vs_train": floor[0], "floor_evals": floor,
            "exact_denoiser": measure(checkerboard_denoiser, ddpm_from_scheduler_config(TABLE), evals)}


# ---- report ----------------------------------------------------------------------------------------

def write_markdown(result: dict, out: Path) -> None:
    base = result["baselines"]
    lines = [
        "## eps-networks on the DDPM table: recipe and ODE sampling", "",
        f"Measured by `{result['command']}` ({result['machine']}). Adaptive PF-ODE (dopri5, rtol = atol "
        f"= 1e-5) from the same {N} noises at t = 1; sliced W2 ({N_PROJ} directions) to {N} held-out points. "
        f"Held-out vs train: {base['heldout_vs_train']:.4f}; the same ODE with the exact denoiser of the "
        f"checkerboard: {base['exact_denoiser']['sw2']:.4f} ({base['exact_denoiser']['nfe']} NFE). "
        "'outside': share of samples outside [-2.5, 2.5]^2 (the data fill [-2, 2]^2); 'largest': the "
        "largest sample norm. 'eps error at t = 1': RMS of eps_hat - eps_exact at x_T = r u over 256 "
        "directions u.", "",
        "| network and recipe | sliced W2 | NFE | outside | largest | eps error at t = 1, r = "
        + " / ".join(str(r) for r in RADII) + " | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["variants"].items():
        err = " / ".join(f"{r['eps_error_t1'][str(x)]:.1e}" for x in RADII)
        lines.append(f"| {name} | {r['sw2']:.4f} | {r['nfe']} | {r['outside']:.4f} | {r['largest']:.1f} | "
                     f"{err} | {r['train_s']:.0f} |")
    lines += ["", "Overrides of `configs/ddpm-eps-checkerboard.toml` per row:", ""]
    lines += [f"- {name}: `{' '.join(r['overrides'])}`" for name, r in result["variants"].items()
              if isinstance(r["overrides"], list) and r["overrides"]]
    by_recipe: dict[str, list[float]] = {}
    for name, r in result["variants"].items():
        if ", seed " in name:
            by_recipe.setdefault(name.split(", seed ")[0], []).append(r["sw2"])
    if by_recipe:
        lines += ["", "Per recipe over its seeds: sliced W2 mean +- sd (smallest .. largest):", ""]
        lines += [f"- {recipe}: {statistics.mean(v):.4f} +- {statistics.stdev(v):.4f} over {len(v)} seeds "
                  f"({min(v):.4f} .. {max(v):.4f})" for recipe, v in by_recipe.items()]
    if len(base.get("floor_evals", [])) > 1:
        lines += realizations_markdown(result)
    out.write_text("\n".join(lines) + "\n")


def realizations_markdown(result: dict) -> list[str]:
    """The section on evaluation realizations: per realization the floor, the exact denoiser and each
    recipe's mean over its seeds; per recipe the spread over seeds x realizations and how often one
    evaluation lands at or below issue 13's bar."""
    base, variants = result["baselines"], result["variants"]
    k = len(base["floor_evals"])
    rows = {"held-out vs train (floor)": [base["floor_evals"]],
            "exact denoiser": [base["exact_denoiser"]["sw2_evals"]]}
    for name, r in variants.items():
        rows.setdefault(name.split(", seed ")[0], []).append(r["sw2_evals"])
    lines = ["", f"### Over {k} evaluation realizations", "",
             f"Realization e draws its own {N} noises (seed e) and {N} held-out points (test split, seed e); "
             "the floor compares the training split of seed e with them. Realization 0 is the one above. "
             "Sliced W2 per realization (a recipe: the mean over its seeds):", "",
             "| realization | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for e in range(k):
        lines.append(f"| {e} | " + " | ".join(f"{statistics.mean(run[e] for run in runs_):.4f}"
                                              for runs_ in rows.values()) + " |")
    lines += ["", f"Over every evaluation (seeds x realizations): mean +- sd (smallest .. largest), and the "
              f"share at or below {BAR} (issue 13's bar):", ""]
    for name, runs_ in rows.items():
        v = [x for run in runs_ for x in run]
        lines.append(f"- {name}: {statistics.mean(v):.4f} +- {statistics.stdev(v):.4f} over {len(v)} "
                     f"({min(v):.4f} .. {max(v):.4f}); <= {BAR}: {sum(x <= BAR for x in v)} of {len(v)}")
    lines += paired_markdown(result) if any(", seed " in name for name in variants) else []
    return lines


def paired_markdown(result: dict) -> list[str]:
    """Differences paired on the same realizations (which share their draw): each recipe of `--seeds`
    against the exact denoiser, and against each other recipe at the same seed index (the plain and
    diffusers' recipes then share initial weights and batches). Mean, and its standard error from the
    spread over seeds (of the per-seed mean over realizations) and over realizations (of the
    per-realization mean over seeds)."""
    exact = result["baselines"]["exact_denoiser"]["sw2_evals"]
    by_recipe: dict[str, dict[int, list[float]]] = {}
    for name, r in result["variants"].items():
        if ", seed " in name:
            recipe, seed = name.split(", seed ")
            by_recipe.setdefault(recipe, {})[int(seed)] = r["sw2_evals"]
    recipes = list(by_recipe)
    pairs = [(f"{a} - exact denoiser", by_recipe[a], {s: exact for s in by_recipe[a]}) for a in recipes]
    pairs += [(f"{a} - {b}", by_recipe[a], by_recipe[b])
              for i, a in enumerate(recipes) for b in recipes[i + 1:]]
    lines = ["", "Paired differences (the same realizations; between recipes also the same seed index): "
             "mean, and its standard error from the spread over seeds / over realizations:", ""]
    for name, a, b in pairs:
        d = {s: [x - y for x, y in zip(a[s], b[s], strict=True)] for s in a if s in b}
        per_seed = [statistics.mean(v) for v in d.values()]
        per_eval = [statistics.mean(col) for col in zip(*d.values(), strict=True)]
        se = [statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
              for v in (per_seed, per_eval)]
        mean = round(statistics.mean(per_seed), 4) + 0.0  # why: no "-0.0000"
        lines.append(f"- {name}: {mean:+.4f}, standard error {se[0]:.4f} over "
                     f"{len(per_seed)} seeds / {se[1]:.4f} over {len(per_eval)} realizations")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ablation", action="store_true", help="one change at a time (ABLATION)")
    ap.add_argument("--seeds", type=int, default=0, metavar="K",
                    help="the reference (plain and with diffusers' own pieces) and the config at seeds "
                         "0..K-1 (eps_recipe_seeds.*)")
    ap.add_argument("--evals", type=int, default=1, metavar="E",
                    help="evaluate every network (and the floor and the exact denoiser) on realizations "
                         "0..E-1, each its own noises and held-out points")
    ap.add_argument("--jobs", type=int, default=2, help="variants trained at once, one thread each")
    ap.add_argument("--report", action="store_true", help="rewrite the md from the json")
    args = ap.parse_args()
    if args.seeds == 1 or args.seeds < 0:
        ap.error(f"--seeds takes K >= 2 (a spread needs two trainings), got {args.seeds}")
    if args.evals < 1:
        ap.error(f"--evals takes E >= 1, got {args.evals}")
    if args.report and args.evals != 1:
        ap.error("--report rewrites the md from the json, which holds its own evaluations; drop --evals")
    stem = ROOT / "results" / ("eps_recipe_ablation" if args.ablation else "eps_recipe_seeds" if args.seeds
                               else "eps_recipe")
    if args.report:
        write_markdown(json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".md"))
        return
    torch.set_num_threads(1)
    variants = ABLATION if args.ablation else seeds(args.seeds) if args.seeds else VARIANTS
    with ProcessPoolExecutor(args.jobs) as pool:
        done = dict(pool.map(partial(run_variant, evals=args.evals), variants.items()))
    result = {
        "command": "benchmarks/eps_recipe.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"1 thread per variant, {args.jobs} at once, shared CPU",
        "baselines": baselines(args.evals), "variants": {name: done[name] for name in variants},
    }
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, stem.with_suffix(".md"))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
