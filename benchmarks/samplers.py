"""Sampler benchmark (issue 13): diffspace's samplers and diffusers' schedulers drive the same eps-prediction
network, side by side in one run.

The network is the "trained the diffusers way" baseline: `PlainMLP` (4 x 128 SiLU on [x, 128 sinusoidal
features of the integer timestep]), eps-MSE with t ~ U{0..999} on diffusers' float32 DDPM table (linear
betas 1e-4..0.02), Adam for 5000 steps, batch 1024, lr 2e-3 with 100 warmup steps and cosine decay to
2e-5, EMA 0.999 with diffusers' EMAModel warmup; trained here in plain PyTorch, seeded, one per data set
(checkerboard, moons), cached in benchmarks/cache/ (the recipe of benchmarks/eps_recipe.py). diffspace
sees it as NetDenoiser(net, path, "eps") with the path built from the same table
(`ddpm_from_scheduler_config`), sampling from the table's own sigma_max (timestep 999, like diffusers).

Accuracy: from the same N noises x_T ~ N(0, I) every sampler runs at NFE 5, 10, 20. RMSE =
sqrt(mean_i ||x_i - x_ref,i||^2), the per-sample norm, against the adaptive PF-ODE solution of the same
network from the same noise (dopri5, rtol = atol = 1e-5, denoised at sigma_min). diffusers: DDIM, Euler,
Heun, DPM-Solver++ 2M/3M, UniPC, DEIS, each at its default spacing, trailing spacing and Karras sigmas
(its best counts); diffspace: its deterministic samplers on karras / logsnr / trailing / uniform_t grids
and on grids optimized on a disjoint calibration batch (`optimize_sigmas`: Nelder-Mead with a budget in
evaluations). Everything is seeded and runs on one thread, so a rerun gives the same numbers.

Time: "outside the network" is a loop's time minus the network's own, per network call; for each pair
(diffspace sampler, diffusers scheduler of the same method) on the same network and batch, the median of
interleaved repeats. Both loops hand the network a (1,) timestep; the network's time per call inside
diffspace is reported beside its time when called directly with a (1,) timestep. Times are the process's
CPU time (`time.process_time`): on a shared machine wall-clock time charges the waits for a core to
whatever was running, and the part outside the network is a few percent of a run. The load average is
recorded before and after.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers.py           # results/samplers.{json,md,png}
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers.py --quick   # reduced check: samplers_quick.*
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers.py --report  # md and png again from the json
"""

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from diffspace.data.toy import make_toy
from diffspace.eval.metrics import sliced_w2
from diffspace.nets.mlp import PlainMLP
from diffspace.param import NetDenoiser
from diffspace.paths.ddpm import ddpm_from_scheduler_config
from diffspace.samplers.grids import GRIDS, sampling_range
from diffspace.samplers.ode import CountingDenoiser, sample_adaptive
from diffspace.samplers.optimize_grid import optimize_sigmas
from diffspace.samplers.registry import SAMPLERS
from diffspace.train.loop import make_ema

ROOT = Path(__file__).resolve().parent
CACHE, OUT = ROOT / "cache", ROOT / "results"
TABLE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
SAMPLER_NAMES = ("euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "deis")  # deterministic
GRID_NAMES = ("karras", "logsnr", "trailing", "uniform_t")
OPTIMIZED = ("dpmpp_2m", "dpmpp_3m", "unipc")  # samplers that also get a grid optimized for the model
# diffspace sampler -> the diffusers scheduler of the same method (the timing pairs)
SAME_METHOD = {"ddim": "DDIM", "euler": "Euler", "heun": "Heun", "dpmpp_2m": "DPM++2M", "dpmpp_3m": "DPM++3M",
               "unipc": "UniPC", "deis": "DEIS"}


@dataclass(frozen=True)
class Setup:
    datasets: tuple[str, ...] = ("checkerboard", "moons")
    n: int = 10_000  # evaluation noises
    n_calib: int = 512  # calibration noises for the optimized grids (a disjoint seed)
    nfes: tuple[int, ...] = (5, 10, 20)
    train_steps: int = 5000
    evals_per_step: int = 200  # Nelder-Mead budget: evals_per_step * (n - 1) + 400 evaluations
    repeats: int = 15  # interleaved timing repeats
    timing_nfe: int = 20
    out: str = "samplers"


FULL = Setup()
QUICK = Setup(datasets=("checkerboard",), n=2000, n_calib=256, nfes=(5, 10), train_steps=1000,
              evals_per_step=40, repeats=5, timing_nfe=10, out="samplers_quick")


# ---- the network, trained the diffusers way ---------------------------------------------------------

def train_eps_mlp(dataset: str, steps: int, alphas_cumprod: torch.Tensor) -> PlainMLP:
    """The eps-MLP of the module docstring (EMA weights), trained once and cached."""
    torch.manual_seed(0)
    net = PlainMLP(2, hidden=128, depth=4, freq_dim=128)
    file = CACHE / f"eps_plain_mlp_{dataset}_{steps}.safetensors"
    if file.exists():
        net.load_state_dict(load_file(file))
        return net.eval()
    ema = make_ema(net, 0.999, warmup=True)  # diffusers' EMAModel: decay min(0.999, (1 + n) / (10 + n))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    warmup = 100
    sched = SequentialLR(opt, [LinearLR(opt, 0.01, 1.0, warmup),
                               CosineAnnealingLR(opt, steps - warmup, eta_min=2e-5)], [warmup])
    data, g = make_toy(dataset, 100_000, seed=0), torch.Generator().manual_seed(1)
    acp, t0 = alphas_cumprod.float(), time.perf_counter()
    for _ in range(steps):
        x0 = data[torch.randint(len(data), (1024,), generator=g)]
        t = torch.randint(len(acp), (1024,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = acp[t][:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # diffusers' add_noise
        loss = (net(x_t, t.float()) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(net)
    print(f"trained the eps-MLP on {dataset}: {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    CACHE.mkdir(exist_ok=True)
    save_file(ema.module.state_dict(), file)
    return ema.module.eval()


class Stopwatch(torch.nn.Module):
    """The network with a stopwatch (process CPU time, see the module docstring) around its calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def forward(self, *args, **kwargs):
        t0 = time.process_time()
        out = self.inner(*args, **kwargs)
        self.seconds += time.process_time() - t0
        self.calls += 1
        return out


# ---- the two samplers' runs -------------------------------------------------------------------------

def steps_for(nfe_rule, budget: int) -> int:
    """The most steps whose NFE fits the budget."""
    n = 1
    while nfe_rule(n + 1) <= budget:
        n += 1
    return n


def diffspace_run(name: str, model, x, sigmas):
    return SAMPLERS[name].fn(model, x, sigmas)


def diffusers_schedulers():
    import diffusers as d

    return {
        "DDIM": lambda **kw: d.DDIMScheduler(**TABLE, clip_sample=False, set_alpha_to_one=True, **kw),
        "Euler": lambda **kw: d.EulerDiscreteScheduler(**TABLE, **kw),
        "Heun": lambda **kw: d.HeunDiscreteScheduler(**TABLE, **kw),
        "DPM++2M": lambda **kw: d.DPMSolverMultistepScheduler(**TABLE, solver_order=2, **kw),
        "DPM++3M": lambda **kw: d.DPMSolverMultistepScheduler(**TABLE, solver_order=3, **kw),
        "UniPC": lambda **kw: d.UniPCMultistepScheduler(**TABLE, **kw),
        "DEIS": lambda **kw: d.DEISMultistepScheduler(**TABLE, solver_order=3, **kw),
    }


def diffusers_configs(method: str) -> dict:
    """Each scheduler's default spacing, trailing spacing ([ZSNR] Sec. 3.3) and Karras sigmas (not DDIM)."""
    out = {"default": {}, "trailing": {"timestep_spacing": "trailing"}}
    return out if method == "DDIM" else out | {"karras": {"use_karras_sigmas": True}}


def diffusers_scheduler(method: str, config: str, budget: int):
    """A scheduler set to the most steps whose network calls fit the budget."""
    make, n = diffusers_schedulers()[method], 1
    while True:
        sched = make(**diffusers_configs(method)[config])
        sched.set_timesteps(n + 1)
        if len(sched.timesteps) > budget:
            break
        n += 1
    sched = make(**diffusers_configs(method)[config])
    sched.set_timesteps(n)
    return sched


def diffusers_run(sched, net, noise):
    """The standard diffusers loop from x_T ~ N(0, I); the net gets a (1,) timestep, as under diffspace."""
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = net(sched.scale_model_input(x, t), t.reshape(1).float())
        x = sched.step(eps, t, x).prev_sample
    return x


# ---- accuracy --------------------------------------------------------------------------------------

def rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """sqrt(mean_i ||x_i - x_ref,i||^2): the per-sample norm, not averaged over coordinates."""
    return float((out.double() - ref.double()).pow(2).sum(1).mean().sqrt())


def optimized_grids(model, path, x_calib, setup: Setup) -> dict:
    """{sampler: {budget: grid}} optimized on the calibration noises (a seed apart from the evaluation's)."""
    lo, hi = sampling_range(path)
    with torch.no_grad():
        ref = sample_adaptive(model, x_calib, hi, lo, rtol=1e-5, atol=1e-5)
    grids = {}
    for name in OPTIMIZED:
        for budget in setup.nfes:
            n = steps_for(SAMPLERS[name].nfe, budget)
            starts = [GRIDS[g](n, lo, hi, path=path) for g in ("trailing", "uniform_t")]
            grids.setdefault(name, {})[budget] = optimize_sigmas(
                SAMPLERS[name].fn, model, x_calib, n, lo, hi, reference=ref, starts=starts,
                max_evals=setup.evals_per_step * (n - 1) + 400)
    return grids


def accuracy(dataset: str, model, path, setup: Setup) -> dict:
    lo, hi = sampling_range(path)
    noise = torch.randn(setup.n, 2, generator=torch.Generator().manual_seed(0))
    calib = torch.randn(setup.n_calib, 2, generator=torch.Generator().manual_seed(1))
    scale = math.sqrt(1 + hi**2)  # x_T ~ N(0, I) in VP space is noise / alpha_T in sigma space
    counter, t0 = CountingDenoiser(model), time.perf_counter()
    with torch.no_grad():
        ref = sample_adaptive(counter, noise * scale, hi, lo, rtol=1e-5, atol=1e-5)
    ref_nfe, ref_seconds, t0 = counter.nfe, time.perf_counter() - t0, time.perf_counter()
    opt = optimized_grids(model, path, calib * scale, setup)
    opt_seconds = time.perf_counter() - t0
    rows = {}
    with torch.no_grad():
        for name in SAMPLER_NAMES:
            spec = SAMPLERS[name]
            for grid in GRID_NAMES + (("optimized",) if name in OPTIMIZED else ()):
                for budget in setup.nfes:
                    n = steps_for(spec.nfe, budget)
                    sigmas = opt[name][budget] if grid == "optimized" else GRIDS[grid](n, lo, hi, path=path)
                    out = diffspace_run(name, model, noise * scale, sigmas)
                    rows.setdefault(f"diffspace/{name}@{grid}", {})[budget] = (rmse(out, ref), spec.nfe(n))
        for method in diffusers_schedulers():
            for config in diffusers_configs(method):
                for budget in setup.nfes:
                    sched = diffusers_scheduler(method, config, budget)
                    out = diffusers_run(sched, model.net, noise)
                    rows.setdefault(f"diffusers/{method}@{config}", {})[budget] = (rmse(out, ref),
                                                                                    len(sched.timesteps))
    heldout = make_toy(dataset, setup.n, seed=0, split="test")
    return {
        "rows": rows,
        "best": {b: {lib: best(rows, lib, b) for lib in ("diffspace", "diffusers")} for b in setup.nfes},
        "reference": {"nfe": ref_nfe, "seconds": ref_seconds,
                      "sw2_adaptive_ode": sliced_w2(ref, heldout, n_proj=256),
                      "sw2_data_floor": sliced_w2(make_toy(dataset, setup.n, seed=0), heldout, n_proj=256)},
        "optimization_seconds": opt_seconds,
        "optimized_grids": {k: {b: g.tolist() for b, g in v.items()} for k, v in opt.items()},
    }


def best(rows: dict, lib: str, budget: int) -> tuple[str, float, int]:
    """(row, RMSE, NFE) of the lowest RMSE of a library at an NFE budget."""
    keys = [k for k in rows if k.startswith(lib + "/") and budget in rows[k]]
    key = min(keys, key=lambda k: rows[k][budget][0])
    return key, *rows[key][budget]


# ---- time ------------------------------------------------------------------------------------------

def _timed(fn, watch: Stopwatch) -> tuple[float, float]:
    """(microseconds per network call outside the network, inside it) of one run of fn."""
    watch.seconds, watch.calls = 0.0, 0
    t0 = time.process_time()
    fn()
    total = time.process_time() - t0
    return 1e6 * (total - watch.seconds) / watch.calls, 1e6 * watch.seconds / watch.calls


def timing(model, path, setup: Setup) -> dict:
    """Per method pair, medians over interleaved repeats of microseconds per network call: time outside
    the network under diffspace and under diffusers, and the network's own time under both and called
    directly with a (1,) timestep. The direct calls run in the same sampler loop (a Denoiser that is the
    bare network), so the memory allocator sees the same pattern of calls: the network's own time then
    differs only by what NetDenoiser hands it."""
    lo, hi = sampling_range(path)
    noise = torch.randn(setup.n, 2, generator=torch.Generator().manual_seed(2))
    net, watch = model.net, Stopwatch(model.net)
    model.net = watch
    x_init, one_timestep = noise * math.sqrt(1 + hi**2), torch.tensor([500.0])

    def direct(x, sigma):  # the bare network as the Denoiser, called with a (1,) timestep
        return watch(x, one_timestep)

    keys = ("ours", "theirs", "net_ours", "net_theirs", "net_direct")
    samples = {name: {k: [] for k in keys} for name in SAME_METHOD}
    load_before = os.getloadavg()
    with torch.no_grad():
        for rep in range(setup.repeats):
            for name, method in SAME_METHOD.items():
                sigmas = GRIDS["trailing"](steps_for(SAMPLERS[name].nfe, setup.timing_nfe), lo, hi, path=path)
                sched = diffusers_scheduler(method, "trailing", setup.timing_nfe)
                runs = [("ours", "net_ours", lambda: diffspace_run(name, model, x_init, sigmas)),  # noqa: B023
                        ("theirs", "net_theirs", lambda: diffusers_run(sched, watch, noise)),  # noqa: B023
                        (None, "net_direct", lambda: diffspace_run(name, direct, noise, sigmas))]  # noqa: B023
                for outside, inside, fn in runs[rep % 3:] + runs[:rep % 3]:  # why: no run always goes first
                    out, net_time = _timed(fn, watch)
                    samples[name][inside].append(net_time)
                    if outside is not None:
                        samples[name][outside].append(out)
    model.net = net
    medians = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in samples.items()}
    return {"us_per_call": medians,
            "load_before": load_before, "load_after": os.getloadavg(), "repeats": setup.repeats,
            "nfe": setup.timing_nfe, "batch": setup.n}


# ---- report ----------------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return f"{v:.2e}" if v < 0.01 else f"{v:.3f}"


def write_markdown(result: dict, out: Path) -> None:
    s = result["setup"]
    lines = [
        "## Samplers at the limit (issue 13)", "",
        f"`benchmarks/samplers.py{' --quick' if s['out'] != 'samplers' else ''}` on {result['machine']}. The "
        f"eps-MLP trained the diffusers way ({s['train_steps']} steps, module docstring), {s['n']} noises; "
        "RMSE = sqrt(mean_i ||x_i - x_ref,i||^2) against the adaptive PF-ODE solution of the same network "
        "from the same noise; diffusers' best of default spacing, trailing and Karras sigmas. NFE in "
        "parentheses is the count used.", "",
    ]
    for dataset, acc in result["accuracy"].items():
        ref = acc["reference"]
        lines += [f"### {dataset}", "",
                  f"Reference: {ref['nfe']} NFE. Sliced W2 to held-out data (256 projections): adaptive ODE "
                  f"{ref['sw2_adaptive_ode']:.4f}, data floor {ref['sw2_data_floor']:.4f}. Optimized grids: "
                  f"{acc['optimization_seconds']:.0f} s.", "",
                  "| NFE | diffspace best | diffusers best | ratio (goal <= 0.5) |", "|---|---|---|---|"]
        for b, pair in acc["best"].items():
            (k1, r1, n1), (k2, r2, n2) = pair["diffspace"], pair["diffusers"]
            lines.append(f"| {b} | {k1} ({n1}): {_fmt(r1)} | {k2} ({n2}): {_fmt(r2)} | {r1 / r2:.2f} |")
        budgets = list(acc["best"])
        lines += ["", "<details><summary>All rows</summary>", "",
                  "| sampler@grid | " + " | ".join(f"RMSE @{b}" for b in budgets) + " |",
                  "|---" * (len(budgets) + 1) + "|"]
        for key, per in acc["rows"].items():
            cells = [f"{_fmt(per[b][0])} ({per[b][1]})" if b in per else "" for b in budgets]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines += ["", "</details>", ""]
    t = result["timing"]
    lines += [f"### Time per network call (microseconds; {t['batch']} samples, {t['nfe']} NFE, trailing "
              f"spacing, median of {t['repeats']} interleaved repeats; load average "
              f"{t['load_before'][0]:.2f} before, {t['load_after'][0]:.2f} after)", "",
              "| method | outside the net: diffspace | diffusers | ratio (goal <= 0.5) | net under diffspace "
              "| net called directly, (1,) timestep | ratio (goal 1 +- 0.05) |", "|---" * 7 + "|"]
    for name, m in t["us_per_call"].items():
        lines.append(f"| {name} / {SAME_METHOD[name]} | {m['ours']:.1f} | {m['theirs']:.1f} | "
                     f"{m['ours'] / m['theirs']:.2f} | {m['net_ours']:.0f} | {m['net_direct']:.0f} | "
                     f"{m['net_ours'] / m['net_direct']:.3f} |")
    ours = [m["ours"] for m in t["us_per_call"].values()]
    theirs = [m["theirs"] for m in t["us_per_call"].values()]
    geo = math.exp(statistics.fmean(math.log(a / b) for a, b in zip(ours, theirs, strict=True)))
    lines += ["", f"Geometric mean of the outside-the-network ratios: {geo:.2f}.", ""]
    out.write_text("\n".join(lines))


def write_plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(result["accuracy"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = result["accuracy"][dataset]["rows"]
        methods = sorted({k.split("@")[0] for k in rows})
        for i, method in enumerate(methods):
            keys = [k for k in rows if k.startswith(method + "@")]
            budgets = sorted({b for k in keys for b in rows[k]})
            ys = [min(rows[k][b][0] for k in keys if b in rows[k]) for b in budgets]
            style = "-o" if method.startswith("diffspace") else "--s"
            color = plt.get_cmap("tab20").colors[i % 20]
            ax.plot(budgets, ys, style, ms=3, lw=1.2, label=method, color=color)
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="RMSE to the adaptive PF-ODE solution",
               title=f"{dataset}: best grid / config per method")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def load_result(path: Path) -> dict:
    """The JSON back, with integer NFE budgets as keys again."""
    def fix(d):
        return {int(k) if k.isdigit() else k: fix(v) if isinstance(v, dict) else v for k, v in d.items()}

    return fix(json.loads(path.read_text()))


def main(setup: Setup) -> None:
    torch.manual_seed(0)
    path = ddpm_from_scheduler_config(TABLE)
    result = {"setup": asdict(setup),
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} thread(s), {os.cpu_count()} cores",
              "accuracy": {}}
    models = {}
    for dataset in setup.datasets:
        net = train_eps_mlp(dataset, setup.train_steps, path.alphas_cumprod)
        models[dataset] = model = NetDenoiser(net, path, "eps")
        result["accuracy"][dataset] = accuracy(dataset, model, path, setup)
        print(json.dumps(result["accuracy"][dataset]["best"]), flush=True)
    result["timing"] = timing(models[setup.datasets[0]], path, setup)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{setup.out}.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, OUT / f"{setup.out}.md")
    write_plot(result, OUT / f"{setup.out}.png")
    print((OUT / f"{setup.out}.md").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the reduced check (samplers_quick.*)")
    parser.add_argument("--report", action="store_true", help="rebuild the Markdown and plot from the JSON")
    args = parser.parse_args()
    chosen = QUICK if args.quick else FULL
    if args.report:
        res = load_result(OUT / f"{chosen.out}.json")
        write_markdown(res, OUT / f"{chosen.out}.md")
        write_plot(res, OUT / f"{chosen.out}.png")
    else:
        main(chosen)
