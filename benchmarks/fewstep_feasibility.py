"""Feasibility of few-step generation trained from scratch on a laptop CPU (issue 14, phase 1): MeanFlow
and improved consistency training (iCT) on the 2-D checkerboard, sliced W2 of 10 000 samples at 1, 2 and
4 network evaluations against the data baseline (10 000 held-out points against 10 000 training points),
the ratio to that baseline being the figure of merit (the issue's goal at 1 NFE: within 2x the teacher's).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep_feasibility.py meanflow --minutes 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep_feasibility.py ict --minutes 3

Each run trains on one thread for a budget of CPU minutes (a cosine schedule over the steps the first 20
steps' CPU time predicts; iCT's discretization curriculum runs over the same count), evaluates the EMA
weights, and appends its figures (with the loss curve and CPU seconds) to
benchmarks/results/fewstep_feasibility.json. The MeanFlow network is also sampled as a plain flow through
its r = t velocity (Heun, 35 NFE), the family's usual ODE route.
"""

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffspace.data.toy import make_toy
from diffspace.eval.metrics import sliced_w2
from diffspace.families.consistency import (
    consistency_training_loss,
    draw_pairs,
    ict_levels,
    ict_num_levels,
    ict_pair_probs,
)
from diffspace.losses.maps import adaptive_weight, draw_meanflow_times, meanflow_loss
from diffspace.nets.mlp import MLP
from diffspace.param import DenoiserFromVelocity
from diffspace.param.maps import ConsistencyPrecond, InstantVelocity, NetAverageVelocity
from diffspace.paths import LinearFlow
from diffspace.samplers.fewstep import sample_consistency, sample_flow_map, uniform_times
from diffspace.samplers.grids import karras_jumps_sigmas, karras_sigmas
from diffspace.samplers.ode import sample_heun

RESULTS = Path(__file__).parent / "results" / "fewstep_feasibility.json"
NFES = (1, 2, 4)


def train_for(model, step_loss, minutes: float, lr: float, ema_halflife: float, warmup: int = 100):
    """AdamW, warmup then cosine over the steps a budget of CPU minutes (this process's CPU time, so a
    busy machine does not shorten the training) allows; returns (EMA model, steps, curve)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5 ** (1 / ema_halflife)), use_buffers=True)
    start, step, total, curve, window = time.process_time(), 0, None, [], []
    while total is None or step < total:
        if step == 20:  # predict the step count from the first 20 steps
            total = max(21, int(minutes * 60 / ((time.process_time() - start) / 20)))
        frac = 0.0 if total is None else step / total
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        loss = step_loss(step, total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        window.append(loss.item())
        step += 1
        if step % 100 == 0:
            curve.append((step, sum(window) / len(window)))
            window = []
    return ema.module.eval(), step, curve


def meanflow(args, x_train, g):
    path = LinearFlow()
    model = NetAverageVelocity(MLP(2, args.hidden, args.depth, second_cond=True), args.time_scale)

    def step_loss(step, total):
        x0 = x_train[torch.randint(len(x_train), (args.batch,), generator=g)]
        eps = torch.randn(x0.shape, generator=g)
        t, r = draw_meanflow_times(args.batch, g, ratio=args.ratio)
        loss = meanflow_loss(model, x0, eps, t, r, path)
        return (adaptive_weight(loss, p=args.p) * loss).mean()

    ema, steps, curve = train_for(model, step_loss, args.minutes, args.lr, args.ema_halflife)
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        samples = {f"{n} NFE": sample_flow_map(ema, noise, uniform_times(n)) for n in NFES}
        # Karras levels over [0.002, 80], EDM's range, not the linear path's own [1e-4, 1e4] (docs/fewstep.md)
        heun = sample_heun(DenoiserFromVelocity(InstantVelocity(ema), path), noise * 80.0,
                           karras_sigmas(18, 0.002, 80.0))
    samples["heun 35 NFE (r = t velocity)"] = heun
    return samples, steps, curve


def ict(args, x_train, g):
    sigma_min, sigma_max = 0.002, 80.0  # [CM] App. C, [ICT]
    model = ConsistencyPrecond(MLP(2, args.hidden, args.depth, dropout=args.dropout),
                               sigma_data=args.sigma_data, sigma_min=sigma_min)

    def step_loss(step, total):
        levels = ict_levels(ict_num_levels(step, total or args.steps_guess), sigma_min, sigma_max)
        x0 = x_train[torch.randint(len(x_train), (args.batch,), generator=g)]
        z = torch.randn(x0.shape, generator=g)
        k = draw_pairs(args.batch, ict_pair_probs(levels), g)
        return consistency_training_loss(model, x0, z, k, levels).mean()

    ema, steps, curve = train_for(model, step_loss, args.minutes, args.lr, args.ema_halflife)
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        samples = {f"{n} NFE": sample_consistency(ema, noise * sigma_max,
                                                  karras_jumps_sigmas(n, sigma_min, sigma_max),
                                                  generator=torch.Generator().manual_seed(args.seed + 2))
                   for n in NFES}
    return samples, steps, curve


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["meanflow", "ict"])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-halflife", type=float, default=200.0, help="EMA half-life in steps (evaluation)")
    p.add_argument("--ratio", type=float, default=0.25, help="MeanFlow: fraction of rows with r != t")
    p.add_argument("--p", type=float, default=0.0, help="MeanFlow: adaptive weight power (paper: 1)")
    p.add_argument("--time-scale", type=float, default=1.0, help="MeanFlow: the net sees scale * t")
    p.add_argument("--dropout", type=float, default=0.0, help="iCT: dropout of the MLP")
    p.add_argument("--sigma-data", type=float, default=1.0, help="iCT: sigma_data of the parameterization")
    p.add_argument("--steps-guess", type=int, default=10_000, help="iCT: K for the first 20 steps")
    p.add_argument("--n", type=int, default=10_000, help="samples and held-out points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON list the record is appended to")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    x_train = make_toy("checkerboard", 100_000, args.seed, "train")
    x_test = make_toy("checkerboard", args.n, args.seed, "test")
    base = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:args.n]]
    baseline = sliced_w2(base, x_test)
    g = torch.Generator().manual_seed(args.seed)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    samples, steps, curve = (meanflow if args.method == "meanflow" else ict)(args, x_train, g)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sw2 = {k: sliced_w2(x, x_test) for k, x in samples.items()}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"method": args.method, "args": settings, "steps": steps, "cpu_s": round(cpu, 1),
              "wall_s": round(wall, 1), "sw2_data_baseline": baseline, "sw2": sw2,
              "sw2_ratio": {k: v / baseline for k, v in sw2.items()}, "loss_curve": curve,
              "machine": platform.machine(), "load_average_after": os.getloadavg(),
              "torch": torch.__version__}
    print(json.dumps({k: v for k, v in record.items() if k != "loss_curve"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps(old + [record], indent=1))


if __name__ == "__main__":
    main()
