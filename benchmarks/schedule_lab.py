"""Schedule lab: fixed grids, Nelder-Mead, the [GITS] dynamic programme and PAS on exact denoisers.

Two model-free cases, so the numbers speak of the step plans and not of a network: the exact denoiser
of the 8-square checkerboard on the DDPM table's range (sigma 0.01 .. 157, where eps-networks sample)
and the exact 8-gaussians mixture on EDM's (0.002 .. 80). At NFE budgets 5 and 10, every plan is
fitted on 512 calibration noises and measured on 10k other noises: RMSE (per-example norm) to the
adaptive PF-ODE solution (dopri5, rtol = atol = 1e-5). Calibration cost is counted in denoiser calls
and examples evaluated (budgets in evaluations; seconds only as an indication).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/schedule_lab.py

Writes benchmarks/results/schedule_lab.{json,md}.
"""

import json
import platform
import time
from pathlib import Path

import torch

from diffspace.data.gmm import eight_gaussians_mixture
from diffspace.data.toy import checkerboard_denoiser
from diffspace.paths.ddpm import DDPMDiscrete
from diffspace.samplers.grids import karras_sigmas, logsnr_sigmas
from diffspace.samplers.ode import sample_adaptive
from diffspace.samplers.optimize_grid import dp_schedule, optimize_sigmas, sample_schedule
from diffspace.samplers.pas import learn_pas, sample_euler_pas
from diffspace.samplers.registry import SAMPLERS

OUT = Path(__file__).resolve().parent / "results"
NFES, N_CALIB, N_TEST = (5, 10), 512, 10_000


class Counted:
    """A Denoiser that counts calls and examples."""

    def __init__(self, denoiser):
        self.denoiser, self.calls, self.examples = denoiser, 0, 0

    def __call__(self, x, sigma, **cond):
        self.calls, self.examples = self.calls + 1, self.examples + len(x)
        return self.denoiser(x, sigma, **cond)


def fitted(make, denoiser):
    """(plan, {calls, examples, seconds}) of make(counted denoiser)."""
    counted, t0 = Counted(denoiser), time.perf_counter()
    plan = make(counted)
    return plan, {"calls": counted.calls, "examples": counted.examples, "seconds": time.perf_counter() - t0}


def plans(denoiser, calib, nfe: int, lo: float, hi: float) -> dict:
    """{row: (run(x) -> samples, NFE used, calibration cost or None)} at this NFE budget."""
    euler, heun, dpm = SAMPLERS["euler"].fn, SAMPLERS["heun"].fn, SAMPLERS["dpmpp_2m"].fn
    karras, heun_n = karras_sigmas(nfe, lo, hi), (nfe + 1) // 2  # Heun: 2 (n - 1) + 1 calls
    rows = {
        "euler@karras": (lambda x: euler(denoiser, x, karras), nfe, None),
        "euler@logsnr": (lambda x: euler(denoiser, x, logsnr_sigmas(nfe, lo, hi)), nfe, None),
        "heun@karras": (lambda x: heun(denoiser, x, karras_sigmas(heun_n, lo, hi)), 2 * heun_n - 1, None),
        "dpmpp_2m@karras": (lambda x: dpm(denoiser, x, karras), nfe, None),
        "dpmpp_2m@logsnr": (lambda x: dpm(denoiser, x, logsnr_sigmas(nfe, lo, hi)), nfe, None),
    }
    pas, cost = fitted(lambda d: learn_pas(d, calib, karras, k=4), denoiser)
    rows["euler@karras + PAS"] = (lambda x: sample_euler_pas(denoiser, x, karras, pas=pas), nfe,
                                  cost | {"params": pas.n_params})
    budget = 200 * (nfe - 1) + 400  # Nelder-Mead runs of the n-step solver, as benchmarks/samplers.py
    for name, fn in (("euler", euler), ("dpmpp_2m", dpm)):
        grid, cost = fitted(lambda d, fn=fn: optimize_sigmas(fn, d, calib, nfe, lo, hi, max_evals=budget),
                            denoiser)
        rows[f"{name}@nelder-mead"] = (lambda x, fn=fn, grid=grid: fn(denoiser, x, grid), nfe, cost)
    plan, cost = fitted(lambda d: dp_schedule(d, calib, nfe, lo, hi), denoiser)
    rows["euler@dp"] = (lambda x: euler(denoiser, x, plan.sigmas), nfe, cost)
    rows["dpmpp_2m@dp"] = (lambda x: dpm(denoiser, x, plan.sigmas), nfe, cost)
    pas_dp, pas_cost = fitted(lambda d: learn_pas(d, calib, plan.sigmas, k=4), denoiser)
    rows["euler@dp + PAS"] = (lambda x: sample_euler_pas(denoiser, x, plan.sigmas, pas=pas_dp), nfe,
                              {k: v + cost[k] for k, v in pas_cost.items()} | {"params": pas_dp.n_params})
    mixed, cost = fitted(lambda d: dp_schedule(d, calib, nfe, lo, hi, orders=(1, 2)), denoiser)
    rows["dp, Euler or Heun per step"] = (
        lambda x: sample_schedule(denoiser, x, mixed.sigmas, orders=mixed.orders), mixed.nfe, cost)
    return rows


def run_case(denoiser, lo: float, hi: float, dim: int = 2) -> dict:
    calib = torch.randn(N_CALIB, dim, generator=torch.Generator().manual_seed(1)) * hi
    test = torch.randn(N_TEST, dim, generator=torch.Generator().manual_seed(0)) * hi
    with torch.no_grad():
        ref = sample_adaptive(denoiser, test, hi, lo, rtol=1e-5, atol=1e-5)
    out = {}
    for nfe in NFES:
        for row, (run, used, cost) in plans(denoiser, calib, nfe, lo, hi).items():
            with torch.no_grad():
                err = float((run(test) - ref).pow(2).sum(1).mean().sqrt())
            out.setdefault(row, {})[nfe] = {"rmse": err, "nfe": used, "cost": cost}
            print(f"  NFE {nfe} {row}: {err:.4f}", flush=True)
    return out


def write_markdown(result: dict, path: Path) -> None:
    lines = ["## Step plans on exact denoisers", "",
             f"Measured by `benchmarks/schedule_lab.py` ({result['machine']}). RMSE (per-example norm) to "
             f"the adaptive PF-ODE solution of {N_TEST} held-out noises; plans fitted on {N_CALIB} other "
             "noises. "
             "Cost: denoiser calls / examples evaluated / seconds to fit (DP: reference solve, one call per "
             "candidate level, and for Heun one stacked call per level; PAS adds its parameters). NFE in "
             "parentheses where a plan uses fewer calls than the budget.", ""]
    for case, rows in result["cases"].items():
        lines += [f"**{case}**", "", "| plan | " + " | ".join(f"RMSE @ NFE {b}" for b in NFES)
                  + " | fitting cost @ NFE " + str(NFES[-1]) + " |", "|---" * (len(NFES) + 2) + "|"]
        for row, per in rows.items():
            cost = per[NFES[-1]]["cost"]
            text = "" if cost is None else f"{cost['calls']} / {cost['examples']} / {cost['seconds']:.1f} s"
            text += f", {cost['params']} parameters" if cost and "params" in cost else ""
            cells = [f"{per[b]['rmse']:.4f}" + (f" ({per[b]['nfe']})" if per[b]["nfe"] != b else "")
                     for b in NFES]
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {text} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main():
    torch.set_num_threads(1)
    path = DDPMDiscrete()
    cases = {
        f"checkerboard, DDPM range (sigma {path.sigma_min:.3g} .. {path.sigma_max:.4g})":
            (checkerboard_denoiser, path.sigma_min, path.sigma_max),
        "8 gaussians, EDM range (sigma 0.002 .. 80)": (eight_gaussians_mixture().denoiser, 0.002, 80.0),
    }
    result = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         "1 thread, shared CPU", "cases": {}}
    for name, (den, lo, hi) in cases.items():
        print(name, flush=True)
        result["cases"][name] = run_case(den, lo, hi)
    OUT.mkdir(exist_ok=True)
    (OUT / "schedule_lab.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, OUT / "schedule_lab.md")
    print((OUT / "schedule_lab.md").read_text())


if __name__ == "__main__":
    main()
