"""Data-parallel scaling on this machine: training throughput at world size 1 and 2 (CPU, gloo) and the
share of a step spent in gradient communication.

Each case runs the library's Trainer (the code path of `torchrun ... diffspace train`) in processes
started with torch.multiprocessing and joined through `init_distributed`, on the demo config's model
and global batch. The communication share is measured by timing the same two ranks with DDP's
gradient all-reduce switched off (`no_sync`): share = 1 - t(no sync) / t(sync). Wall-clock and
per-rank CPU times are both reported, because the machine is shared.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py                 # 2-3 min on a quiet machine
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py --steps 2 --repeats 1 --out /tmp/scaling  # smoke

Writes benchmarks/results/scaling.json and scaling.md (machine, load and thread counts named in both).
"""

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.multiprocessing as mp

from diffspace.config import build, load_toml
from diffspace.runs.continuous import ContinuousConfig, build_setup
from diffspace.train.distributed import barrier, init_distributed, shutdown
from diffspace.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"demo MLP 256x4": ["model.mlp.hidden=256", "model.mlp.depth=4"],
          "wider MLP 512x4": ["model.mlp.hidden=512", "model.mlp.depth=4"]}
# (world size, threads per rank, gradient all-reduce on)
CASES = [(1, 1, True), (1, 2, True), (2, 1, True), (2, 1, False)]


def _config(overrides: list[str], batch: int) -> ContinuousConfig:
    data = load_toml(ROOT / "configs" / "demo.toml",
                     [*overrides, "data.n_train=20000", "data.n_test=1000", f"train.batch_size={batch}"])
    return build(ContinuousConfig, data, "demo.toml")


def _worker(rank: int, world: int, port: int, overrides: list[str], args, threads: int, sync: bool,
            results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    device = init_distributed(torch.device("cpu"))
    cfg = _config(overrides, args.batch)
    torch.manual_seed(0)
    setup, _ = build_setup(cfg, device)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(setup, cfg.train, Path(tmp), {}, seed=0)
        quiet = nullcontext if sync or world == 1 else tr.ddp.no_sync
        times = []
        for r in range(args.repeats + 1):  # the first round warms up (allocations, gloo buffers)
            barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                with quiet():
                    tr.train_step()
            barrier()
            if r:
                times.append(((time.perf_counter() - wall) / args.steps,
                              (time.process_time() - cpu) / args.steps))
    n_params = sum(p.numel() for p in setup.model.parameters())
    allreduce = _allreduce_s(n_params, device, args.repeats) if world > 1 else 0.0
    if rank == 0:
        results.put({"params": n_params, "times": times, "allreduce_s": allreduce})
    shutdown()


def _allreduce_s(n: int, device: torch.device, rounds: int) -> float:
    """Fastest all-reduce of n float32 values (all gradients in one piece) over `rounds` tries."""
    import torch.distributed as dist

    x, best = torch.zeros(n, device=device), float("inf")
    for _ in range(rounds + 1):
        barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        best = min(best, time.perf_counter() - t0)
    return best


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(overrides: list[str], args, world: int, threads: int, sync: bool) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_worker, (world, _free_port(), overrides, args, threads, sync, results), nprocs=world,
                       join=True, start_method="spawn")
    got = results.get()
    # why min: on a shared machine the fastest round is the one least disturbed by other jobs
    wall = min(t[0] for t in got["times"])
    cpu = statistics.median(t[1] for t in got["times"])
    return {"world_size": world, "threads_per_rank": threads, "grad_allreduce": sync, "params": got["params"],
            "global_batch": args.batch, "step_ms": 1e3 * wall, "cpu_ms_per_rank": 1e3 * cpu,
            "samples_per_s": args.batch / wall, "wall_ms_repeats": [1e3 * t[0] for t in got["times"]],
            "allreduce_all_grads_ms": 1e3 * got["allreduce_s"]}


def _machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "backend": "gloo (CPU)",
            "shared": "yes: other jobs ran on the same 2 cores (see load averages)"}


def summarize(rows: list[dict]) -> dict:
    """Ratios per model: speed-up of 2 ranks over 1 rank (1 and 2 threads) and the communication share,
    from wall-clock time and from CPU time (what all-reduce costs the rank's own threads)."""
    def get(*case):
        return next(r for r in rows if (r["world_size"], r["threads_per_rank"], r["grad_allreduce"]) == case)

    two, no_sync = get(2, 1, True), get(2, 1, False)
    return {"speedup_ws2_vs_ws1_1thread": two["samples_per_s"] / get(1, 1, True)["samples_per_s"],
            "speedup_ws2_vs_ws1_2threads": two["samples_per_s"] / get(1, 2, True)["samples_per_s"],
            "comm_share_ws2": 1 - no_sync["step_ms"] / two["step_ms"],
            "allreduce_share_ws2": two["allreduce_all_grads_ms"] / two["step_ms"],
            "comm_cpu_share_ws2": 1 - no_sync["cpu_ms_per_rank"] / two["cpu_ms_per_rank"],
            # CPU work of one process over the total of two for the same batch: 1 = no overhead
            "cpu_efficiency_ws2": get(1, 1, True)["cpu_ms_per_rank"] / (2 * two["cpu_ms_per_rank"])}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Data-parallel scaling (CPU, gloo)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. **Shared machine, 2 cores**: "
             f"load average {report['load_before']} before and {report['load_after']} after, so absolute "
             "times are noisy; compare within a row group. Global batch "
             f"{report['args']['batch']}; step ms is the fastest of {report['args']['repeats']} rounds of "
             f"{report['args']['steps']} steps after a warm-up round, CPU ms (all threads of one rank, "
             "gloo's included) their median.", "",
             "| model | params | world size | threads/rank | grad all-reduce | step ms | CPU ms/rank "
             "| samples/s |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, rows in report["models"].items():
        for r in rows:
            lines.append(f"| {name} | {r['params']:,} | {r['world_size']} | {r['threads_per_rank']} | "
                         f"{'on' if r['grad_allreduce'] else 'off (no_sync)'} | {r['step_ms']:.1f} | "
                         f"{r['cpu_ms_per_rank']:.1f} | {r['samples_per_s']:,.0f} |")
    lines += ["", "| model | speed-up 2 ranks vs 1 rank x 1 thread | vs 1 rank x 2 threads | "
              "communication share of a 2-rank step: wall | CPU | all-reduce alone | "
              "CPU efficiency of 2 ranks |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {s['speedup_ws2_vs_ws1_1thread']:.2f} | "
                     f"{s['speedup_ws2_vs_ws1_2threads']:.2f} | {100 * s['comm_share_ws2']:.0f} % | "
                     f"{100 * s['comm_cpu_share_ws2']:.0f} % | {100 * s['allreduce_share_ws2']:.0f} % | "
                     f"{s['cpu_efficiency_ws2']:.2f} |")
    lines += ["", "Communication share = 1 - t(2 ranks, no_sync) / t(2 ranks): the part of a step that "
              "gradient all-reduce adds (gloo over loopback TCP, partly overlapped with backward); with "
              "wall-clock t it includes waiting for the other rank, with CPU t only the work of "
              "reducing and copying gradients; all-reduce alone = the fastest all-reduce of all gradients in "
              "one piece over the 2-rank step time (an upper bound: DDP overlaps it with backward). "
              "CPU efficiency = CPU time of one process / total CPU "
              "time of two for the same global batch (1 = no overhead); it depends little on the "
              "load, unlike the wall-clock columns. When other jobs load the cores, OpenMP's 2-thread "
              "rows suffer most (its threads wait for each other at every operation)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per case")
    p.add_argument("--batch", type=int, default=1024, help="global batch (the demo config's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    args = p.parse_args()
    report = {"machine": _machine(), "args": vars(args), "models": {}, "summary": {},
              "load_before": [round(x, 2) for x in os.getloadavg()]}
    for name, overrides in MODELS.items():
        rows = [run_case(overrides, args, *case) for case in CASES]
        report["models"][name], report["summary"][name] = rows, summarize(rows)
        for r in rows:
            print(f"{name}: ws={r['world_size']} threads={r['threads_per_rank']} sync={r['grad_allreduce']} "
                  f"{r['step_ms']:.1f} ms/step, {r['samples_per_s']:,.0f} samples/s")
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scaling.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
