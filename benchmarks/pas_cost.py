"""What PAS costs outside the network, and what issue 13's time bar leaves it (why its row fails).

Issue 13 asks that a diffspace sampler's time outside the network per call be at most half of diffusers'
scheduler of the same method. PAS-corrected Euler ([PAS], `samplers/pas.py`) is Euler plus, at each
corrected step, a per-example principal-component analysis of the example's own history. This script
measures, side by side in one run on the sampler benchmark's batch (10000 two-dimensional examples, one
thread, process CPU time, medians of interleaved repeats), with a network that costs nothing (a stored
output, so only the loops are timed):

  diffusers' Euler loop per call (trailing spacing, 20 calls, the scheduler built outside the clock)
  diffspace's Euler loop and its PAS loop per call, on the PAS plan the sampler benchmark fitted for the
  checkerboard at NFE 20 (grid and coordinates from `benchmarks/results/samplers.json`)
  per corrected step: PAS's basis and correction, the batched float64 eigendecomposition inside it
  alone, and one elementwise operation on the (B, D) batch (the unit of any per-example arithmetic)

The budget is what PAS may add to Euler and stay within the bar: 0.5 x diffusers' loop - diffspace's
Euler loop, per call, times the calls per corrected step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pas_cost.py      # results/pas_cost.{json,md}
"""

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from diffspace.param import NetDenoiser
from diffspace.paths.ddpm import ddpm_from_scheduler_config
from diffspace.samplers.ode import sample_euler
from diffspace.samplers.pas import PASCorrection, direction_basis, sample_euler_pas
from eps_recipe import TABLE
from samplers import GOAL_TIME, Stored, diffusers_run, diffusers_scheduler, steady_allocator

ROOT = Path(__file__).resolve().parent / "results"
BATCH, NFE, REPEATS = 10_000, 20, 15


def per_run(fn, runs: int = 1, setup=None) -> float:
    """Process CPU seconds of one call of fn(*setup()) (the mean of `runs`); setup runs untimed."""
    total = 0.0
    for _ in range(runs):
        args = () if setup is None else setup()
        t0 = time.process_time()
        fn(*args)
        total += time.process_time() - t0
    return total / runs


def main() -> None:
    torch.set_num_threads(1)
    allocator = steady_allocator()
    stored = json.loads((ROOT / "samplers.json").read_text())
    pas = PASCorrection.from_json(stored["accuracy"]["checkerboard"]["fitted"][str(NFE)]["euler+pas@dp"]
                                  ["cost"]["pas"])
    noise = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(3))
    free = Stored(eps)
    model = NetDenoiser(free, ddpm_from_scheduler_config(TABLE), "eps")
    x_init = noise * float(pas.sigmas[0])
    # one mid-trajectory history for the per-step parts: x_T / sigma_0 and ten directions
    history = [x_init / float(pas.sigmas[0])] + [eps + 0.1 * i * noise for i in range(10)]
    d, x = history[-1], x_init * 0.5
    coords = torch.tensor([1.0, 0.1, 0.0, 0.0], dtype=torch.float64)
    centred = torch.stack(history, 1).double()
    centred = centred - centred.mean(1, keepdim=True)
    cov = centred.mT @ centred  # (B, 2, 2): the eigenproblem PAS solves for two-dimensional data

    def correction():
        basis = direction_basis(history, d, x, x_init, pas.k)
        return d.norm(dim=1, keepdim=True) * torch.einsum("bkd,k->bd", basis, coords.to(d))

    parts = {
        "diffusers' Euler loop, per call": lambda sched: diffusers_run(sched, free, noise),
        "diffspace's Euler loop, per call": lambda: sample_euler(model, x_init, pas.sigmas),
        "diffspace's PAS loop, per call": lambda: sample_euler_pas(model, x_init, pas.sigmas, pas=pas),
        "PAS's basis and correction, per corrected step": correction,
        "of which the batched eigendecomposition": lambda: torch.linalg.eigh(cov),
        "one elementwise operation on (B, D)": lambda: d + d,
    }
    calls = {"diffusers' Euler loop, per call": NFE, "diffspace's Euler loop, per call": NFE,
             "diffspace's PAS loop, per call": NFE}
    setups = {"diffusers' Euler loop, per call": lambda: (diffusers_scheduler("Euler", "trailing", NFE),)}
    load_before = os.getloadavg()
    samples = {name: [] for name in parts}
    with torch.no_grad():
        for name, fn in parts.items():  # warm up
            per_run(fn, 1, setups.get(name))
        for rep in range(REPEATS):
            names = list(parts)
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                runs = 1 if name in calls else 20
                samples[name].append(1e6 * per_run(parts[name], runs, setups.get(name)) / calls.get(name, 1))
    us = {name: statistics.median(v) for name, v in samples.items()}
    corrected = len(pas.coords)
    theirs, euler = us["diffusers' Euler loop, per call"], us["diffspace's Euler loop, per call"]
    budget_per_call = GOAL_TIME * theirs - euler
    budget_per_step = budget_per_call * NFE / corrected
    result = {
        "command": "benchmarks/pas_cost.py", "allocator": allocator,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
                   f"{os.cpu_count()} cores",
        "batch": BATCH, "dim": 2, "nfe": NFE, "corrected_steps": corrected, "k": pas.k, "repeats": REPEATS,
        "us": us, "budget_us_per_call": budget_per_call, "budget_us_per_corrected_step": budget_per_step,
        "load": [load_before, os.getloadavg()],
    }
    (ROOT / "pas_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "## What PAS costs outside the network (issue 13's time bar)", "",
        f"`benchmarks/pas_cost.py` on {result['machine']}; load average {load_before[0]:.2f} at the start, "
        f"{result['load'][1][0]:.2f} at the end. Batch {BATCH} x 2, a network that costs nothing (a stored "
        f"output), the sampler benchmark's PAS plan for the checkerboard at NFE {NFE} ({corrected} corrected "
        f"steps, k = {pas.k}); medians of {REPEATS} interleaved repeats, process CPU time.", "",
        "| part | microseconds | multiple of the budget |", "|---|---|---|",
    ]
    pas_name, op = "diffspace's PAS loop, per call", us["one elementwise operation on (B, D)"]
    for name, v in us.items():
        added = (v - euler) / budget_per_call if name == pas_name else v / budget_per_step
        shown = "" if name in calls and name != pas_name else f"{added:.2f}"
        lines.append(f"| {name} | {v:.1f} | {shown} |")
    lines += [
        "",
        f"Budget: {GOAL_TIME} x diffusers' loop - diffspace's Euler loop = {budget_per_call:.1f} us per "
        f"call, {budget_per_step:.1f} us per corrected step ({NFE} calls, {corrected} corrected): what PAS "
        "may add to Euler within the bar. The last column divides by it: PAS's loop less Euler's per call, "
        "the other rows per corrected step; above 1, that part alone misses the bar by the factor. The "
        f"budget buys {budget_per_step / op:.1f} elementwise operations on the batch per corrected step.",
        "",
    ]
    (ROOT / "pas_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
