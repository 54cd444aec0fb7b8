"""Text benchmark: AR, MDLM, SEDD (absorbing) and block diffusion (L' = 4, 16) with the same transformer,
data (the default pydoc corpus, bytes) and CPU-time training budget, trained by the library's loop.

Reports validation bits/char (exact for AR, NELBO bound with its Monte Carlo standard error for the
others), generation speed (tokens/s) at several step counts with and without caches, and the samples'
generative perplexity under the AR model together with their n-gram entropies and the data's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text.py    # 5 x 10 CPU-min training (2 at a time) + eval
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text.py --minutes 0.2 --runs /tmp/bt --out /tmp/t  # smoke

Writes benchmarks/results/text.json, text.md and text_curve.png (val bits/char at each quarter of the
training budget, the gap to AR against compute).
"""

import argparse
import copy
import json
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from diffspace.config import build, to_dict
from diffspace.discrete.kinds import KINDS
from diffspace.runs import load_run
from diffspace.runs.text import TextConfig, build_text_setup, eval_text, generate_tokens, load_text_data
from diffspace.train.loop import TrainConfig, train

# config sections per model; masked kinds train with the mask-count estimator and the bell-shaped draw
BELL = {"estimator": "count", "proposal": "logit_normal"}
MODELS = {"ar": {"model": {"kind": "ar"}}, "mdlm": {"model": {"kind": "mdlm"}, "loss": BELL},
          "sedd_absorb": {"model": {"kind": "sedd_absorb"}},
          "bd3_4": {"model": {"kind": "bd3", "block": 4}, "loss": BELL},
          "bd3_16": {"model": {"kind": "bd3", "block": 16}, "loss": BELL}}
# ablations of the NELBO estimator and the training draw (not run by default):
#   benchmarks/text.py --models mdlm_time mdlm_count mdlm bd3_4_time bd3_4_count bd3_4 --minutes 4 \
#       --runs runs/bench-text-ablation --out benchmarks/results/text_ablation
for _name, _model in (("mdlm", {"kind": "mdlm"}), ("bd3_4", {"kind": "bd3", "block": 4})):
    MODELS[f"{_name}_time"] = {"model": _model, "loss": {"estimator": "time", "proposal": "stratified"}}
    MODELS[f"{_name}_count"] = {"model": _model, "loss": {"estimator": "count", "proposal": "stratified"}}
DEFAULT_MODELS = ["ar", "mdlm", "sedd_absorb", "bd3_4", "bd3_16"]
# (label, sampler, steps, kv/no-change cache) rows of the speed table per model
SPEED = {"ar": [("ar", "auto", 0, True), ("ar", "auto", 0, False)],
         "mdlm": [("ancestral", "ancestral", s, c) for s in (16, 64, 256) for c in (True, False)],
         "sedd_absorb": [("tweedie", "tweedie", s, False) for s in (16, 64)],
         "bd3_4": [("bd3", "auto", s, c) for s in (1, 4) for c in (True, False)],
         "bd3_16": [("bd3", "auto", s, c) for s in (4, 16) for c in (True, False)]}


def config(name: str, args, run_dir: Path) -> TextConfig:
    model = {"dim": args.dim, "depth": args.depth, "heads": 4, **MODELS[name]["model"]}
    return build(TextConfig, {"task": "text", "run": {"dir": str(run_dir), "seed": 0},
                              "data": {"seq_len": args.seq_len}, "model": model,
                              "loss": MODELS[name].get("loss", {}),
                              "eval": {"max_chunks": args.val_chunks, "n_mc": args.n_mc, "n_samples": 32}})


def cpu_seconds_per_step(setup, batch: int, n: int = 6) -> float:
    """CPU time of one optimizer step, measured on a copy (the machine is shared, so wall-clock time
    would hand each model a different share of the CPU)."""
    model = copy.deepcopy(setup.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(123)
    for i in range(n + 1):
        if i == 1:
            t0 = time.process_time()
        loss = setup.loss(model, setup.batch(g, batch)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.process_time() - t0) / n


def train_one(name: str, args, root: Path) -> dict:
    """Train for an equal CPU-time budget: steps = budget / measured CPU seconds per step, keeping the
    checkpoints at each quarter of the budget for the learning curve."""
    torch.set_num_threads(1)
    cfg = config(name, args, root / name)
    torch.manual_seed(0)
    setup, data = build_text_setup(cfg, torch.device("cpu"))
    per_step = cpu_seconds_per_step(setup, args.batch)
    quarter = max(int(60 * args.minutes / per_step) // 4, 25)
    tc = TrainConfig(steps=4 * quarter, batch_size=args.batch, lr=args.lr, warmup_steps=50, schedule="cosine",
                     ema_halflife_steps=50.0, log_every=50, ckpt_every=quarter, keep_every=quarter)
    (root / name).mkdir(parents=True, exist_ok=True)
    c0 = time.process_time()
    tr = train(setup, tc, root / name, to_dict(cfg), seed=0, progress=False,
               extra={"n_tokens": data.tok.size})
    cpu = time.process_time() - c0
    print(f"{name}: {tr.step} steps, {cpu:.0f} CPU s, {tr.elapsed:.0f} wall s", flush=True)
    return {"train_steps": tr.step, "train_cpu_seconds": cpu, "cpu_seconds_per_step": per_step}


def train_all(args, root: Path) -> dict[str, dict]:
    """Each model in its own process, `args.jobs` at a time, one thread each."""
    if args.jobs == 1:
        return {name: train_one(name, args, root) for name in args.models}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = {name: pool.submit(train_one, name, args, root) for name in args.models}
        return {name: f.result() for name, f in futures.items()}


def learning_curve(name: str, args, root: Path, info: dict) -> list[dict]:
    """Validation bits/char of the EMA weights at each quarter of the budget."""
    rows = []
    for ckpt in sorted((root / name / "checkpoints").glob("step_*.safetensors")):
        run = load_run(ckpt)
        m = eval_text(run.module, run.cfg, load_text_data(run.cfg), ppl_only=True)
        cpu_minutes = run.step * info["train_cpu_seconds"] / info["train_steps"] / 60
        rows.append({"step": run.step, "cpu_minutes": cpu_minutes,
                     "bits_per_char": m["bits_per_char"], "bits_per_char_stderr": m["bits_per_char_stderr"]})
    return rows


def speed_rows(name: str, net, cfg, n_tokens: int, n: int) -> list[dict]:
    rows = []
    for label, sampler, steps, cache in SPEED.get(name, []):
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        out = generate_tokens(net, cfg, n_tokens, n, g, sampler, steps, kv_cache=cache)
        dt = time.perf_counter() - t0
        rows.append({"model": name, "sampler": label, "steps": steps or cfg.data.seq_len, "cache": cache,
                     "nfe": out.nfe, "tokens_per_s": n * cfg.data.seq_len / dt})
    return rows


def default_steps(cfg) -> int:
    """Steps for the quality samples: one token per step on average (per block for bd3)."""
    return cfg.model.block if KINDS[cfg.model.kind].t_per_block else cfg.data.seq_len


def run(args) -> dict:
    root = Path(args.runs)
    infos = train_all(args, root)
    nets = {name: load_run(root / name) for name in args.models}
    ar_net = nets["ar"].module if "ar" in nets else None
    results, speed = {}, []
    for name, r in nets.items():
        cfg, data, net, info = r.cfg, load_text_data(r.cfg), r.module, infos[name]
        with torch.no_grad():
            m = eval_text(net, cfg, data, ar_net, seed=0, steps=default_steps(cfg))
            speed += speed_rows(name, net, cfg, data.tok.size, args.speed_n)
            g = torch.Generator().manual_seed(3)
            sample = generate_tokens(net, cfg, data.tok.size, 2, g, steps=default_steps(cfg)).tokens
        kind = KINDS[cfg.model.kind]
        draws = "-" if kind.autoregressive else cfg.loss.proposal
        if kind.counts:
            draws = f"{cfg.loss.estimator}, {draws}"
        results[name] = {**info, **m, "sample_steps": default_steps(cfg), "training_draws": draws,
                         "curve": learning_curve(name, args, root, info),
                         "samples": [data.tok.decode(r) for r in sample.tolist()]}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "samples"}), flush=True)
    return {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"1 thread per model, {args.jobs} model(s) at a time",
            "settings": vars(args), "models": results, "speed": speed}


def plot_curves(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in res["models"].items():
        c = m["curve"]
        ax.errorbar([r["cpu_minutes"] for r in c], [r["bits_per_char"] for r in c],
                    yerr=[r["bits_per_char_stderr"] for r in c], marker="o", capsize=2, label=name)
    ax.set_xlabel("training CPU-minutes (one thread)")
    ax.set_ylabel("val bits/char (AR exact, others NELBO)")
    ax.set_title("Text models at equal compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = ["# Text benchmark (`benchmarks/text.py`)\n",
             f"Machine: {res['machine']}. Same transformer (dim {s['dim']}, depth {s['depth']}, 4 heads, "
             f"byte tokens, context {s['seq_len']}), pydoc corpus, {s['minutes']} CPU-minutes of training "
             f"each (steps = budget / measured CPU s per step; batch {s['batch']}, lr {s['lr']} cosine, "
             "EMA weights evaluated; `draws`: the training estimator and draw of t or of the mask rate, "
             "see docs/text.md; every diffusion bound is the unbiased NELBO). Tokens/s are "
             "wall-clock: compare within a run. Network calls are per sequence (the no-change cache "
             "skips a sequence that did not change).\n",
             "| model | draws | steps | val bits/char | ± s.e. | bound | vs AR | gen-ppl (AR) | H1 | H2 "
             "| H3 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ar = res["models"].get("ar", {}).get("bits_per_char")
    for name, m in res["models"].items():
        rel = f"{100 * (m['bits_per_char'] / ar - 1):+.1f} %" if ar else "-"
        lines.append(f"| {name} | {m.get('training_draws', '-')} | {m['train_steps']} | "
                     f"{m['bits_per_char']:.3f} | "
                     f"{m['bits_per_char_stderr']:.3f} | {m['bound']} | {rel} | "
                     f"{m.get('gen_ppl', float('nan')):.2f} | "
                     f"{m['sample_entropy_1gram_bits']:.2f} | {m['sample_entropy_2gram_bits']:.2f} | "
                     f"{m['sample_entropy_3gram_bits']:.2f} |")
    d = next(iter(res["models"].values()))
    lines.append(f"| *data (val)* | | | | | | | {d.get('data_gen_ppl', float('nan')):.2f} | "
                 f"{d['data_entropy_1gram_bits']:.2f} | {d['data_entropy_2gram_bits']:.2f} | "
                 f"{d['data_entropy_3gram_bits']:.2f} |")
    lines += ["\nH1-H3: entropy (bits) of the pooled 1-, 2-, 3-grams of 32 samples (data: 32 val chunks).\n",
              f"## Learning curves\n\n![bits/char against CPU-minutes]({Path(s['out']).name}_curve.png)\n",
              "| model | " + " | ".join(f"{q}/4 budget" for q in range(1, 5)) + " |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(f"{r['bits_per_char']:.3f} ({r['cpu_minutes']:.1f} min)"
                                          for r in m["curve"]) + " |" for name, m in res["models"].items()]
    lines += ["", "## Generation speed\n", "| model | sampler | steps | cache | network calls | tokens/s |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['sampler']} | {r['steps']} | {'on' if r['cache'] else 'off'} | "
              f"{r['nfe']:.1f} | {r['tokens_per_s']:.0f} |" for r in res["speed"]]
    lines.append("\n## Samples\n")
    for name, m in res["models"].items():
        lines.append(f"**{name}** ({m['sample_steps']} steps): `{m['samples'][0]!r}`\n")
    return "\n".join(lines) + "\n"


def kv_cache_speedup(seq_len: int = 256, n: int = 8) -> list[dict]:
    """Cached vs uncached decoding of one untrained network at a longer context, timed in CPU seconds
    (robust to a shared machine), with a check that both give the same tokens."""
    from diffspace.discrete.attention import context
    from diffspace.discrete.processes import Absorbing
    from diffspace.discrete.sampling import sample_ar, sample_bd3
    from diffspace.discrete.schedules import make_schedule
    from diffspace.nets.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    mask = 256
    tc = TransformerConfig(vocab_size=mask + 1, max_len=seq_len, dim=128, depth=3, heads=4)
    net = Transformer(tc).eval()
    proc, x = Absorbing(make_schedule("loglinear"), mask), torch.full((n, seq_len), mask)
    bd3 = lambda block, kv, g: sample_bd3(context(net, block, kv_cache=kv), x, block, block, proc, g)
    cases = {"ar": lambda kv, g: sample_ar(context(net, 1, kv_cache=kv), x[:, :0], seq_len, mask, g),
             "bd3 L'=4, 4 steps/block": lambda kv, g: bd3(4, kv, g),
             "bd3 L'=16, 16 steps/block": lambda kv, g: bd3(16, kv, g)}
    rows = []
    for name, fn in cases.items():
        cpu, toks = {}, {}
        for kv in (True, False):
            c0 = time.process_time()
            toks[kv] = fn(kv, torch.Generator().manual_seed(0)).tokens
            cpu[kv] = time.process_time() - c0
        rows.append({"decoder": name, "seq_len": seq_len, "n": n,
                     "same_tokens": torch.equal(toks[True], toks[False]),
                     "cached_tok_per_cpu_s": n * seq_len / cpu[True],
                     "uncached_tok_per_cpu_s": n * seq_len / cpu[False], "speedup": cpu[False] / cpu[True]})
    return rows


def generalization_gap(args) -> list[dict]:
    """Bits/char of each trained run's final EMA weights on training chunks next to validation chunks
    (same count, same Monte Carlo draws): a model that memorizes the small corpus shows a gap."""
    from diffspace.data.text import eval_chunks
    from diffspace.discrete.evaluate import bits_report
    from diffspace.runs.text import nelbo_values

    rows = []
    for name in args.models:
        r = load_run(Path(args.runs) / name)
        data, e = load_text_data(r.cfg), r.cfg.eval
        row = {"model": name, "step": r.step}
        for split, stream in (("train", data.train), ("val", data.val)):
            chunks = eval_chunks(stream, r.cfg.data.seq_len, e.max_chunks)
            vals = nelbo_values(r.module, r.cfg, data.tok.size, chunks, e.n_mc)
            exact = KINDS[r.cfg.model.kind].autoregressive
            row[split] = bits_report(vals, stream.chars_per_token, exact)["bits_per_char"]
        rows.append(row)
        print(row, flush=True)
    return rows


def gap_markdown(rows: list[dict], runs: str) -> str:
    lines = ["# Train vs validation bits/char (`benchmarks/text.py --gap-only`)\n",
             f"Final EMA weights of the runs in `{runs}`; the same number of chunks and Monte Carlo draws "
             "on each split.\n", "| model | steps | train bits/char | val bits/char | gap |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['step']} | {r['train']:.3f} | {r['val']:.3f} | "
              f"{r['val'] - r['train']:+.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def kv_markdown(rows: list[dict]) -> str:
    lines = ["# KV-cache decoding speed-up (`benchmarks/text.py --kv-only`)\n",
             "Untrained transformer (dim 128, depth 3), one thread, tokens per CPU second.\n",
             "| decoder | context | same tokens | cached tok/s | uncached tok/s | speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['decoder']} | {r['seq_len']} | {r['same_tokens']} | {r['cached_tok_per_cpu_s']:.0f} | "
              f"{r['uncached_tok_per_cpu_s']:.0f} | {r['speedup']:.1f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of training per model")
    p.add_argument("--jobs", type=int, default=2, help="models trained at once (one process and thread each)")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-chunks", type=int, default=128)
    p.add_argument("--n-mc", type=int, default=8)
    p.add_argument("--speed-n", type=int, default=16)
    p.add_argument("--runs", default="runs/bench-text")
    p.add_argument("--out", default="benchmarks/results/text")
    p.add_argument("--kv-only", action="store_true", help="only the KV-cache speed-up table (<out>_kv.*)")
    p.add_argument("--gap-only", action="store_true",
                   help="only train vs val bits/char of the runs already in --runs (<out>_gap.*)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.gap_only:
        rows = generalization_gap(args)
        Path(f"{out}_gap.json").write_text(json.dumps(rows, indent=2) + "\n")
        Path(f"{out}_gap.md").write_text(gap_markdown(rows, args.runs))
        print(gap_markdown(rows, args.runs))
        return
    if args.kv_only:
        rows = kv_cache_speedup()
        Path(f"{out}_kv.json").write_text(json.dumps(rows, indent=2) + "\n")
        Path(f"{out}_kv.md").write_text(kv_markdown(rows))
        print(kv_markdown(rows))
        return
    res = run(args)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    plot_curves(res, Path(f"{out}_curve.png"))
    print(markdown(res))


if __name__ == "__main__":
    main()
