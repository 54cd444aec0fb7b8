"""Sampler benchmark: every diffspace sampler and diffusers' schedulers drive the same network.

An eps-prediction MLP on the DDPM discrete-time VP schedule (T = 1000, linear betas), trained on the
2-D checkerboard by `diffspace train benchmarks/samplers.toml` (cached in benchmarks/cache/). From
the same 10k initial noises x_T ~ N(0, I) (VP space) each sampler runs at NFE budgets 5, 10, 20, 50.
Reported: RMSE to the adaptive PF-ODE solution from the same noise (dopri5, rtol = atol = 1e-5),
sliced W2 to held-out data, and the time per network call spent outside the network.

    make bench-samplers      (or: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers.py)

Writes benchmarks/results/samplers.{json,md,png}.
"""

import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffspace.cli.runs import load_run
from diffspace.data.toy import make_toy
from diffspace.eval.metrics import sliced_w2
from diffspace.samplers.grids import GRIDS
from diffspace.samplers.ode import CountingDenoiser, sample_adaptive
from diffspace.samplers.optimize_grid import optimize_sigmas
from diffspace.samplers.registry import SAMPLERS

ROOT = Path(__file__).resolve().parent
RUN_DIR = ROOT / "cache" / "samplers_ddpm_eps"
OUT = ROOT / "results"
NFES = (5, 10, 20, 50)
N, N_CALIB = 10_000, 512
GRID_NAMES = ("karras", "logsnr", "trailing")
# why fewer rows for some: the CPU budget (one 10k-batch call of this MLP is ~0.1-0.3 s on a shared core)
FEWER_GRIDS = {"ddim": ("trailing",), "heun": ("karras", "trailing"), "midpoint": ("karras", "trailing"),
               "rk4": ("karras", "trailing")}
OPTIMIZED = ("dpmpp_2m", "unipc")  # samplers that get a model-optimized grid
OPT_NFES = (5, 10)
# diffspace sampler <-> the diffusers scheduler of the same method (for the overhead ratio)
SAME_METHOD = {"ddim": "DDIM", "euler": "EulerDiscrete", "heun": "HeunDiscrete", "dpmpp_2m": "DPMSolver++2M",
               "dpmpp_3m": "DPMSolver++3M", "unipc": "UniPC", "deis": "DEIS"}


class Stopwatch(torch.nn.Module):
    """A module (the raw network, or the whole Denoiser) with a stopwatch around its calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seconds = inner, 0.0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def load_model():
    """The trained NetDenoiser(net, DDPMDiscrete(), "eps") (EMA weights), its net under a stopwatch."""
    if not (RUN_DIR / "checkpoints" / "last.safetensors").exists():
        subprocess.run([sys.executable, "-m", "diffspace.cli.main", "train", str(ROOT / "samplers.toml"),
                        "--set", f"run.dir={RUN_DIR}", "--overwrite", "--no-progress"], check=True)
    module = load_run(RUN_DIR).module
    module.net = Stopwatch(module.net)
    return module


def steps_for(nfe_rule, budget: int) -> int:
    """The most steps whose NFE fits the budget."""
    n = 1
    while nfe_rule(n + 1) <= budget:
        n += 1
    return n


def run_timed(fn, watches: list[Stopwatch], calls: int):
    """(output, [ms per network call spent outside each watched module])."""
    for w in watches:
        w.seconds = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    total = time.perf_counter() - t0
    return out, [1e3 * (total - w.seconds) / calls for w in watches]


def diffspace_rows(model, x_init, path, opt_grids):
    """{key: {budget: (out, nfe, ms outside the net, ms outside the Denoiser)}} per sampler and grid."""
    rows, den = {}, Stopwatch(model)
    for name, spec in SAMPLERS.items():
        if spec.nfe is None:
            continue
        grids = ("karras",) if spec.stochastic else FEWER_GRIDS.get(name, GRID_NAMES)
        for grid in grids + (("opt",) if name in OPTIMIZED else ()):
            for budget in NFES:
                n = steps_for(spec.nfe, budget)
                if grid == "opt" and budget not in opt_grids[name]:
                    continue
                sigmas = opt_grids[name][budget] if grid == "opt" else GRIDS[grid](
                    n, path.sigma_min, path.sigma_max, path=path)
                g, counter = torch.Generator().manual_seed(7), CountingDenoiser(den)
                out, ms = run_timed(lambda: spec.fn(counter, x_init, sigmas, generator=g),  # noqa: B023
                                    [model.net, den], spec.nfe(n))
                assert counter.nfe == spec.nfe(n)
                rows.setdefault(f"{name}@{grid}", {})[budget] = (out, counter.nfe, *ms)
    return rows


def diffusers_methods():
    import diffusers as d

    table = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    return {
        "DDIM": lambda **kw: d.DDIMScheduler(**table, clip_sample=False, set_alpha_to_one=True, **kw),
        "EulerDiscrete": lambda **kw: d.EulerDiscreteScheduler(**table, **kw),
        "HeunDiscrete": lambda **kw: d.HeunDiscreteScheduler(**table, **kw),
        "DPMSolver++2M": lambda **kw: d.DPMSolverMultistepScheduler(**table, solver_order=2, **kw),
        "DPMSolver++3M": lambda **kw: d.DPMSolverMultistepScheduler(**table, solver_order=3, **kw),
        "UniPC": lambda **kw: d.UniPCMultistepScheduler(**table, **kw),
        "DEIS": lambda **kw: d.DEISMultistepScheduler(**table, solver_order=3, **kw),
    }


# trailing spacing ([ZSNR] Sec. 3.3) and Karras sigmas; DDIM has no Karras option: its default
# (leading) instead. The other defaults (linspace) visit almost the same timesteps as trailing.
DIFFUSERS_CONFIGS = {"trailing": {"timestep_spacing": "trailing"}, "karras": {"use_karras_sigmas": True}}
DDIM_CONFIGS = {"leading": {}, "trailing": {"timestep_spacing": "trailing"}}


def diffusers_sample(scheduler, net, noise):
    """The standard diffusers loop; returns x0 (VP space at t = 0 is x0)."""
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = net(scheduler.scale_model_input(x, t), t.float().expand(len(x)))
        x = scheduler.step(eps, t, x).prev_sample
    return x


def diffusers_rows(timed, noise):
    rows = {}
    for method, make in diffusers_methods().items():
        for cname, kw in (DDIM_CONFIGS if method == "DDIM" else DIFFUSERS_CONFIGS).items():
            for budget in NFES:
                n = 1
                while len(_timesteps(make(**kw), n + 1)) <= budget:
                    n += 1
                sched = make(**kw)
                sched.set_timesteps(n)
                calls = len(sched.timesteps)
                out, (ms,) = run_timed(lambda: diffusers_sample(sched, timed, noise), [timed], calls)  # noqa: B023
                rows.setdefault(f"{method}@{cname}", {})[budget] = (out, calls, ms, ms)
    return rows


def _timesteps(sched, n):
    sched.set_timesteps(n)
    return sched.timesteps


def optimized_grids(model, path, x_calib):
    """Model-optimized grids for OPTIMIZED samplers at OPT_NFES, from a calibration batch of noise
    disjoint from the evaluation noise."""
    with torch.no_grad():
        ref = sample_adaptive(model, x_calib, path.sigma_max, path.sigma_min, rtol=1e-5, atol=1e-5)
    grids = {}
    # why 200 (n - 1) + 400 evaluations: with 300, Nelder-Mead had not converged even at n = 5 (calibration
    # RMSE 0.17 against 0.070 with 1000, unipc, measured on this model)
    for name in OPTIMIZED:
        spec = SAMPLERS[name]
        for budget in OPT_NFES:
            n = steps_for(spec.nfe, budget)
            grids.setdefault(name, {})[budget] = optimize_sigmas(
                spec.fn, model, x_calib, n, path.sigma_min, path.sigma_max, reference=ref,
                starts=[GRIDS["trailing"](n, path=path)], max_evals=200 * (n - 1) + 400)
            shown = [round(v, 4) for v in grids[name][budget].tolist()]
            print(f"optimized grid {name} NFE {budget}: {shown}", flush=True)
    return grids


def metrics(rows, ref, heldout):
    rmse, sw2, nfe = {}, {}, {}
    for key, per in rows.items():
        rmse[key] = {b: float((r[0].double() - ref.double()).pow(2).mean().sqrt()) for b, r in per.items()}
        sw2[key] = {b: sliced_w2(r[0], heldout, n_proj=256) for b, r in per.items()}
        nfe[key] = {b: r[1] for b, r in per.items()}
    return rmse, sw2, nfe


def overheads(rows, column: int):
    """ms per step outside the net (column 2) or outside the Denoiser (column 3), per method: the
    minimum over its rows at NFE >= 20 (the machine is shared: the minimum is the least disturbed)."""
    out = {}
    for key, per in rows.items():
        ms = [r[column] for b, r in per.items() if b >= 20]
        if ms:
            out[method_of(key)] = min(ms + ([out[method_of(key)]] if method_of(key) in out else []))
    return out


def method_of(key: str) -> str:
    """'diffspace/dpmpp_2m@karras' -> 'diffspace/dpmpp_2m'."""
    return key.split("@")[0]


def is_stochastic(key: str) -> bool:
    lib, name = method_of(key).split("/")
    return lib == "diffspace" and SAMPLERS[name].stochastic


def best(rmse, nfe, prefix, budget, keys=None):
    """(key, rmse, actual NFE) of the lowest RMSE among deterministic rows with this prefix."""
    keys = [k for k in (keys or rmse) if k.startswith(prefix) and budget in rmse[k] and not is_stochastic(k)]
    key = min(keys, key=lambda k: rmse[k][budget])
    return key, rmse[key][budget], nfe[key][budget]


def _fmt(v: float) -> str:
    return f"{v:.2e}" if v < 0.01 else f"{v:.3f}"


def best_per_method(result):
    """{method: {budget: (key, rmse, nfe)}}: each method at its best grid / config per budget."""
    rmse, nfe = result["rmse"], result["actual_nfe"]
    methods = sorted({method_of(k) for k in rmse if not is_stochastic(k)})
    return {m: {b: best(rmse, nfe, m + "@", b) for b in NFES} for m in methods}


def write_plot(result, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same = {f"diffusers/{d}": f"diffspace/{n}" for n, d in SAME_METHOD.items()}
    methods = best_per_method(result)
    palette = plt.get_cmap("tab10").colors
    color = {m: palette[i % 10] for i, m in enumerate(sorted({same.get(m, m) for m in methods}))}
    fig, ax = plt.subplots(figsize=(7, 5))
    for method, per in methods.items():  # one colour per method: diffspace solid, diffusers dashed
        xs, ys = [per[b][2] for b in NFES], [per[b][1] for b in NFES]
        ax.plot(xs, ys, "-o" if method.startswith("diffspace") else "--s", ms=3, lw=1.2, label=method,
                color=color[same.get(method, method)])
    ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations)",
           ylabel="RMSE to the adaptive PF-ODE solution",
           title="Same eps-MLP, same 10k noises (best grid / config)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def _target_lines(result):
    lines = ["| NFE budget | diffspace best | diffusers best | ratio (target <= 0.5) |", "|---|---|---|---|"]
    for b in [b for b in NFES if b <= 20]:
        (k1, r1, n1), (k2, r2, n2) = result["best"][b]["diffspace"], result["best"][b]["diffusers"]
        lines.append(f"| {b} | {k1} ({n1} NFE): {_fmt(r1)} | {k2} ({n2} NFE): {_fmt(r2)} | {r1 / r2:.2f} |")
    return lines


def _overhead_lines(result):
    o = result["overhead_ms_per_step"]
    inner = result["overhead_outside_denoiser_ms_per_step"]
    lines = ["| method | diffspace ms/step | (sampler only) | diffusers ms/step | ratio (target <= 0.5) |",
             "|---|---|---|---|---|"]
    for name, dname in SAME_METHOD.items():
        a, a_inner, b = o[f"diffspace/{name}"], inner[f"diffspace/{name}"], o[f"diffusers/{dname}"]
        lines.append(f"| {name} / {dname} | {a:.3f} | {a_inner:.3f} | {b:.3f} | {a / b:.2f} |")
    return lines


def _full_table(result):
    rmse, sw2, nfe = result["rmse"], result["sw2"], result["actual_nfe"]
    head = ("| sampler@grid | " + " | ".join(f"RMSE @{b}" for b in NFES)
            + f" | SW2 @{NFES[1]} | SW2 @{NFES[-1]} |")
    lines = [head, "|---" * (len(NFES) + 3) + "|"]
    for key in rmse:
        cells = [f"{_fmt(rmse[key][b])} ({nfe[key][b]})" if b in rmse[key] else "" for b in NFES]
        w = [f"{sw2[key][b]:.4f}" if b in sw2[key] else "" for b in (NFES[1], NFES[-1])]
        lines.append(f"| {key} | " + " | ".join(cells + w) + " |")
    return lines


def _advice(result):
    """Advice sentences whose every number comes from this run."""
    per = best_per_method(result)
    lines = ["**How to choose** (from the numbers above):", ""]
    for b in NFES:
        k, r, n = result["best"][b]["diffspace"]
        lines.append(f"- NFE {b}: `{k}` is the most accurate diffspace choice (RMSE {_fmt(r)} at {n} NFE).")
    opt = [m for m in per if any(per[m][b][0].endswith("@opt") for b in NFES)]
    if opt:
        gains = []
        for m in opt:
            fixed = [result["rmse"][f"{m}@{g}"][NFES[0]] for g in GRID_NAMES]
            gains.append(f"{m.split('/')[1]} {min(fixed) / result['rmse'][f'{m}@opt'][NFES[0]]:.1f}x")
        lines.append("- An optimized grid is the biggest lever at few steps: at NFE "
                     f"{NFES[0]} it cuts the RMSE of the best fixed grid by " + ", ".join(gains)
                     + ". Compute it once per model (`optimize_sigmas`) and store it with the run.")
    sw = {k: v[NFES[-1]] for k, v in result["sw2"].items() if is_stochastic(k)}
    if sw:
        k = min(sw, key=sw.get)
        lines.append("- Stochastic samplers do not follow the ODE (their RMSE is not comparable); judged "
                     f"by sliced W2 at NFE {NFES[-1]} the best is `{k}` ({sw[k]:.4f}; the adaptive ODE: "
                     f"{result['sw2_baseline']['adaptive_reference']:.4f}).")
        ode = min(v[NFES[-1]] for k, v in result["sw2"].items() if not is_stochastic(k) and NFES[-1] in v)
        if sw[k] < 0.5 * ode:
            lines.append(
                f"- Here the noise the stochastic samplers add fixes what the ODE cannot (best ODE sliced W2 "
                f"{ode:.4f}): an eps-network is ill-conditioned at the top of the DDPM table, where x0_hat = "
                "(x_t - sigma_t eps_hat) / alpha_t multiplies its error by 1 / alpha_t = 157, and the "
                "deterministic flow carries that error to the end. Prefer v-, x0- or EDM-preconditioned "
                "models for few-step ODE sampling, or a stochastic sampler for an eps model.")
    return lines


def write_markdown(result, out: Path):
    base = result["sw2_baseline"]
    text = [
        "## Choosing a sampler", "",
        f"Measured by `make bench-samplers` ({result['setup']}; {result['machine']}). RMSE is to the "
        "adaptive ODE solution from the same noise (it measures the solver, not the model); sliced W2 is to "
        f"held-out data (held-out vs train: {base['heldout_vs_train']:.4f}; the adaptive solution: "
        f"{base['adaptive_reference']:.4f}). Grids: `karras` (rho = 7), `logsnr`, `trailing` (DDPM table), "
        f"`opt` (optimized for this model and solver on {N_CALIB} calibration noises, disjoint from the "
        f"{N} evaluation noises: `diffspace.samplers.optimize_grid.optimize_sigmas`, "
        f"{result['optimization_seconds']:.0f} s for all). diffusers configs: `trailing` spacing and "
        "`karras` sigmas (DDIM: its default `leading` and `trailing`). NFE in parentheses is the count used.",
        "", "![RMSE vs NFE](samplers.png)", "",
        "**Best deterministic result per NFE budget** (targets from issue 3):", "",
        *_target_lines(result), "",
        "**Time per step outside the network** (min over the rows at NFE 20 and 50; the diffspace column "
        "includes NetDenoiser's eps -> x0 conversion, the next one only the sampler itself):", "",
        *_overhead_lines(result), "", *_advice(result), "",
        "<details><summary>All rows</summary>", "", *_full_table(result), "", "</details>", "",
    ]
    out.write_text("\n".join(text))


def load_result(path: Path) -> dict:
    """The JSON back with integer NFE budgets as keys again."""
    def fix(d):
        return {int(k) if k.isdigit() else k: fix(v) if isinstance(v, dict) else v for k, v in d.items()}

    return fix(json.loads(path.read_text()))


def main():
    torch.manual_seed(0)
    model = load_model()
    path = model.path
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    calib = torch.randn(N_CALIB, 2, generator=torch.Generator().manual_seed(1))
    scale = math.sqrt(1 + path.sigma_max**2)  # x_T ~ N(0, I) in VP space is noise / alpha_T in sigma space
    x_init = noise * scale
    heldout = make_toy("checkerboard", N, seed=0, split="test")
    counter = CountingDenoiser(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = sample_adaptive(counter, x_init, path.sigma_max, path.sigma_min, rtol=1e-5, atol=1e-5)
    print(f"reference: {counter.nfe} NFE, {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    opt = optimized_grids(model, path, calib * scale)
    opt_seconds = time.perf_counter() - t0
    rows = {f"diffspace/{k}": v for k, v in diffspace_rows(model, x_init, path, opt).items()}
    rows.update({f"diffusers/{k}": v for k, v in diffusers_rows(model.net, noise).items()})
    rmse, sw2, nfe = metrics(rows, ref, heldout)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s), shared CPU",
        "setup": "eps-MLP (hidden 128, depth 4) on DDPM T=1000 linear betas, 2-D checkerboard; "
                 f"{N} noises; reference dopri5 rtol=atol=1e-5 ({counter.nfe} NFE)",
        "nfe_budgets": list(NFES), "rmse": rmse, "sw2": sw2, "actual_nfe": nfe,
        "sw2_baseline": {"heldout_vs_train": sliced_w2(make_toy("checkerboard", N, seed=0), heldout,
                                                       n_proj=256),
                         "adaptive_reference": sliced_w2(ref, heldout, n_proj=256)},
        "overhead_ms_per_step": overheads(rows, 2),
        "overhead_outside_denoiser_ms_per_step": overheads(rows, 3),
        "optimized_grids": {k: {b: g.tolist() for b, g in v.items()} for k, v in opt.items()},
        "optimization_seconds": opt_seconds,
        "best": {b: {lib: best(rmse, nfe, f"{lib}/", b) for lib in ("diffspace", "diffusers")}
                 for b in NFES},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "samplers.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, OUT / "samplers.md")
    write_plot(result, OUT / "samplers.png")
    print((OUT / "samplers.md").read_text())


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rebuild the Markdown and the plot from the JSON
        res = load_result(OUT / "samplers.json")
        write_markdown(res, OUT / "samplers.md")
        write_plot(res, OUT / "samplers.png")
    else:
        main()
