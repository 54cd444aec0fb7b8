"""Few-step generation against its teacher (issue 14): every method of docs/fewstep.md at 1, 2 and 4
network evaluations per sample beside the EDM teacher sampled with Heun at 35 NFE, on the 2-D
checkerboard, everything trained and sampled through the runs layer (`runs.train`, `distill`,
`nfe_curve`) exactly as `diffspace train / distill / eval --nfe` do.

Rows: the teacher (configs/demo.toml; Heun 18 steps = 35 NFE, and Euler at 1/2/4 NFE for scale),
MeanFlow and iCT from scratch (configs/checkerboard-meanflow.toml, checkerboard-ict.toml), and from the
teacher: progressive distillation (16 -> 8 -> 4 -> 2 -> 1 DDIM steps, the round with N steps is the row
at N NFE), consistency distillation and reflow (1-rectified flow, Euler in uniform t). Figure of merit:
sliced W2 of 5000 samples against 5000 held-out points over the data baseline (5000 training
points against the same held-out ones), for the teacher and each method; the issue's targets are the
best method within 2x / 1.5x / 1.2x the teacher's 35-NFE ratio at 1 / 2 / 4 NFE. Beside each row: the
CPU-minutes of its training (this process's CPU time on one thread, time.process_time; distillation
rows count the student only, the teacher's own minutes are on its row) and its learning curve.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep.py            # about 20 CPU-minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep.py --quick    # the pipeline in about 2 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep.py --digits-teacher RUN
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep.py --add iCT,progressive,reflow  # digits rows
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewstep.py --rescore  # digits, rows not yet scored
    .venv/bin/python benchmarks/fewstep.py --table                      # .md and .png from the .json

Writes benchmarks/results/fewstep.json, fewstep.md and fewstep.png (quality against NFE, one line per
method, and the learning curves). `--digits-teacher RUN` (a trained configs/digits-edm.toml run, copied)
writes fewstep_digits.*: every method against it, MeanFlow and iCT from scratch
(configs/digits-meanflow.toml, digits-ict.toml), progressive distillation (8 -> 4 -> 2 -> 1 DDIM steps),
consistency distillation and reflow (on 10 000 teacher pairs, not 20 000: CPU budget), feature FID over
its real baseline on the digits feature net of benchmarks/families.py (CAS in the JSON), each student's
training capped at 8 wall-clock minutes (train.minutes, progressive's rounds 2 each; the row gives the
steps reached). `--add METHOD,...` trains only those digits rows against the cached teacher
(benchmarks/cache/fewstep/digits-teacher), puts them into fewstep_digits.json in place of the method's
old rows, and rescores (below) the new rows.
One seed: read differences of less than about 20 % as noise (two runs of one iCT command differed 2.4
against 3.9 in benchmarks/fewstep_feasibility.py).

`--rescore` (digits, no training) scores every row of fewstep_digits.json again from its cached run under
benchmarks/cache/fewstep on DRAWS independent draws of as many samples as the test split (so each
draw's FID carries the same small-sample bias as the real baseline): one seeded call of DRAWS x 359
samples, draw k its samples k x 359 .. (k + 1) x 359 - 1 (draw 0 is the one `--digits-teacher`
scores; rows already scored on DRAWS draws are kept, the same seeds giving the same numbers), each row
the mean over the draws with its standard error; beside FID the unbiased KID (MMD^2
against all training features), precision/recall and CAS, and the FID of all the draws pooled (a
check on the small-sample bias). Must-show 2 then holds at an NFE only if the best method's factor is
below its target by more than two standard errors (delta method over the paired draws: draw k of every
row shares its seeds), fails if above it by as much, and is undecided otherwise; the table gives every
method's factor too. The CPU-minutes and learning curves stay those of training; `--rescore --table`
rewrites the digits .md and .png from the .json.
"""

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from diffspace import runs  # noqa: E402
from diffspace.discrete.evaluate import mean_stderr  # noqa: E402
from diffspace.eval.featurenet import features, load_classifier, predict  # noqa: E402
from diffspace.eval.image_eval import balanced_labels  # noqa: E402
from diffspace.eval.image_metrics import feature_stats, frechet_distance, mmd2_unbiased, precision_recall  # noqa: E402
from diffspace.eval.metrics import bootstrap_se  # noqa: E402
from diffspace.runs.continuous import load_data  # noqa: E402
from diffspace.runs.distill import DistillOptions, distill  # noqa: E402
from diffspace.runs.nfe import nfe_curve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "cache" / "fewstep"
NFES = (1, 2, 4)
TARGETS = {1: 2.0, 2: 1.5, 4: 1.2}  # issue 14, must-show 2: best method / teacher at 35 NFE
C = lambda name: str(ROOT / "configs" / f"{name}.toml")  # noqa: E731

# training steps of each row (full run); --quick divides them by QUICK
STEPS = {"teacher": 3000, "MeanFlow": 2500, "iCT": 5000, "progressive": 500, "consistency distillation": 2000,
         "reflow": 2500}
QUICK = 40
METHODS = {"progressive": "progressive", "consistency distillation": "consistency", "reflow": "reflow"}
PD_STEPS = 16  # progressive distillation's first student (its teacher: DDIM on 32 levels)
# digits: every method's training steps (progressive: per round), each student capped at DIGITS_MINUTES of
# wall clock (train.minutes; progressive: its rounds share them), reflow on DIGITS_PAIRS teacher pairs
DIGITS_STEPS = {"MeanFlow": 1500, "iCT": 4000, "progressive": 800, "consistency distillation": 1000,
                "reflow": 5000}
DIGITS_MINUTES, DIGITS_PD_STEPS, DIGITS_PAIRS = 8, 8, 10_000
FEATURENET = str(ROOT / "benchmarks" / "cache" / "families" / "featurenet-digits.safetensors")
N_EVAL = 5000  # samples and held-out points per row (--quick: 1000); the students inherit the teacher's
DRAWS = 40  # --rescore: independent draws of the test split's size per row
METRICS = ("fid", "kid", "precision", "recall", "cas")  # --rescore: each a mean and a standard error


def _cpu(fn):
    start = time.process_time()
    out = fn()
    return out, (time.process_time() - start) / 60


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _rows(run, nfes, sampler=None, grid=None) -> list[dict]:
    drop = ("nfe_asked", "seed", "step")
    n = None if run.cfg.images else run.cfg.eval.n  # images: the test split
    return [{k: v for k, v in r.items() if k not in drop}
            for r in nfe_curve(run, nfes, sampler, grid, n, featurenet=FEATURENET if n is None else None)]


def _entry(method, run, cpu_min, rows, curve, **extra) -> dict:
    return {"method": method, "run": os.path.relpath(run.dir, ROOT), "train_steps": run.step,
            "cpu_min": None if cpu_min is None else round(cpu_min, 2), "rows": rows, "curve": curve, **extra}


def teacher(steps: dict, n: int) -> tuple[dict, object]:
    cfg = runs.load_config(C("demo"), [f"run.dir={RUNS / 'teacher'}", f"train.steps={steps['teacher']}",
                                       "sample.steps=18", f"eval.n={n}"])
    run, cpu = _cpu(lambda: runs.train(cfg, overwrite=True))
    rows = _rows(run, [35], "heun", "karras") + _rows(run, NFES, "euler", "karras")
    return _entry("teacher (EDM)", run, cpu, rows, _curve(run.dir)), run


def digits_teacher(source: Path) -> tuple[dict, object]:
    """A trained configs/digits-edm.toml run, copied (its nfe.json is written here, not in `source`)."""
    shutil.copytree(source, RUNS / "digits-teacher", dirs_exist_ok=True)
    run = runs.load_run(RUNS / "digits-teacher")
    rows = _rows(run, [35], "heun", "karras") + _rows(run, NFES, "euler", "karras")
    return _entry("teacher (EDM, not trained here)", run, None, rows, _curve(run.dir)), run


def scratch(method: str, config: str, steps: dict, n: int | None) -> dict:
    sets = [f"run.dir={RUNS / config}", f"train.steps={steps[method]}"] + ([f"eval.n={n}"] if n else [])
    cap = [f"train.minutes={DIGITS_MINUTES}"] if config.startswith("digits") else []
    cfg = runs.load_config(C(config), sets + cap)
    run, cpu = _cpu(lambda: runs.train(cfg, overwrite=True))
    return _entry(method, run, cpu, _rows(run, NFES), _curve(run.dir))


def distilled(method: str, teacher_run, steps: dict, out: str = "") -> list[dict]:
    """The method's students; progressive: one entry per round (each at its own N), else the last round."""
    name, images = METHODS[method], teacher_run.cfg.images
    pd_steps = DIGITS_PD_STEPS if images else PD_STEPS
    sets = [f"train.steps={steps[method]}", f"train.batch_size={64 if images else 256}"]
    if images:  # progressive: the rounds (1 + log2 of its first student's steps) share the minutes
        rounds = pd_steps.bit_length() if name == "progressive" else 1
        sets += [f"train.minutes={DIGITS_MINUTES / rounds}"] + ([f"fewstep.pairs={DIGITS_PAIRS}"]
                                                                  if name == "reflow" else [])
    if name == "progressive":  # fine-tuning the teacher's network: a smaller step ([PD] Sec. 4)
        sets += ["train.lr=5e-4", "train.warmup_steps=50"]
    opts = DistillOptions(name, str(RUNS / (out or name)), steps=pd_steps, overrides=tuple(sets),
                          overwrite=True, featurenet=FEATURENET if images else None)
    students, cpu = _cpu(lambda: distill(teacher_run.dir, opts))
    record = json.loads((RUNS / (out or name) / "distill.json").read_text())["rounds"]
    if name != "progressive":
        s = students[-1]
        extra = {"straightness": [r["straightness"] for r in record], "pairs": s.cfg.fewstep.pairs} \
            if name == "reflow" else {}
        return [_entry(method, s, cpu, _rows(s, NFES), _curve(s.dir), **extra)]
    per_round = cpu / len(students)
    return [_entry(f"{method} (round {k + 1})", s, per_round * (k + 1), _rows(s, [s.cfg.sample.steps]),
                   _curve(s.dir)) for k, s in enumerate(students)]


def _draw_scores(f, hits, ref_feats, ref_stats) -> dict:
    """One draw's features f (n, D) and CAS hits (n,): feature FID against the training statistics, the
    unbiased KID ([KID] MMD^2 against all training features), precision/recall against them, CAS."""
    precision, recall = precision_recall(ref_feats, f)
    return {"fid": frechet_distance(*ref_stats, *feature_stats(f)), "kid": mmd2_unbiased(f, ref_feats),
            "precision": precision, "recall": recall, "cas": float(hits.double().mean())}


def rescore(result: dict, draws: int) -> None:
    """--rescore: each row of the digits result again from its cached run on `draws` draws of the test
    split's size (one seeded call, sample i from stream i, draw k = samples k n .. (k + 1) n - 1), and the
    FID of all the draws together (fid_all: less small-sample bias, no real baseline of that size)."""
    net, meta = load_classifier(FEATURENET, "featurenet")
    teacher_run = runs.load_run(ROOT / result["entries"][0]["run"])
    data = load_data(teacher_run.cfg)
    n, K = len(data["x_test"]), teacher_run.cfg.model.num_classes
    ref_feats = features(net, data["x_train"])
    ref_stats = feature_stats(ref_feats)
    fid = lambda f: frechet_distance(*ref_stats, *feature_stats(f))  # noqa: E731
    labels = balanced_labels(n * draws, K)  # runs.sample's labels
    base = _draw_scores(features(net, data["x_test"]), predict(net, data["x_test"]) == data["y_test"],
                        ref_feats, ref_stats)
    for e in result["entries"]:
        run = runs.load_run(ROOT / e["run"])
        for i, r in enumerate(e["rows"]):
            if r.get("draws") == draws:  # scored already (same seeds: the same numbers again)
                continue
            x = runs.sample(run, runs.SampleOptions(n=n * draws, sampler=r["sampler"], steps=r["steps"],
                                                    grid=r["grid"]))
            f, hits = features(net, x), predict(net, x) == labels
            per = [_draw_scores(f[k * n:(k + 1) * n], hits[k * n:(k + 1) * n], ref_feats, ref_stats)
                   for k in range(draws)]
            row = {k: r[k] for k in ("nfe", "sampler", "steps", "grid")} | {"n": n, "draws": draws}
            for m in METRICS:
                row[m], row[f"{m}_se"] = mean_stderr(torch.tensor([p[m] for p in per]))
                row[f"{m}_real_baseline"] = base[m]
            row |= {"fid_ratio": row["fid"] / base["fid"], "fid_ratio_se": row["fid_se"] / base["fid"],
                    "fid_draws": [p["fid"] for p in per], "kid_draws": [p["kid"] for p in per],
                    "fid_all": fid(f), "fid_all_se": bootstrap_se(fid, f),
                    "featurenet_test_accuracy": meta["test_accuracy"]}
            e["rows"][i] = row
    half = len(ref_feats) // 2  # two halves of the training split: a KID of expectation 0 on fixed sets
    result |= {"mode": f"full, rescored on {draws} draws", "draws": draws,
               "kid_train_halves": mmd2_unbiased(ref_feats[:half], ref_feats[half:])}


def _factor_se(best: list[float], ref: list[float]) -> float:
    """Standard error of mean(best) / mean(ref) over paired draws (delta method: the quotient's relative
    error is the mean of best_k / mean(best) - ref_k / mean(ref), which keeps their covariance)."""
    b, r = torch.tensor(best, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    return float(b.mean() / r.mean()) * mean_stderr(b / b.mean() - r / r.mean())[1]


def must_show(entries: list[dict], key: str) -> dict:
    """At each N of NFES: the best method's ratio, the teacher's 35-NFE ratio, their quotient, the target.
    Rows scored on draws (--rescore) add the quotient's standard error; "holds" is then True only below
    the target by more than two of them, False above it by as much, None (undecided) in between."""
    ref_row = next(r for r in entries[0]["rows"] if r["nfe"] == 35)
    ref, out = ref_row[key], {}
    for n, target in TARGETS.items():
        cands = [(r[key], e["method"], r) for e in entries[1:] for r in e["rows"] if r["nfe"] == n]
        best, who, row = min(cands, key=lambda c: c[0])
        out[n] = {"best": who, "ratio": best, "teacher_35": ref, "factor": best / ref, "target": target,
                  "holds": best / ref <= target}
        if "fid_draws" in row:
            se = _factor_se(row["fid_draws"], ref_row["fid_draws"])
            margin = (target - best / ref) / se
            out[n] |= {"ratio_se": row[f"{key}_se"], "teacher_35_se": ref_row[f"{key}_se"], "factor_se": se,
                       "holds": True if margin > 2 else False if margin < -2 else None}
            pooled = row["fid_all"] / ref_row["fid_all"]  # the same quotient with less small-sample bias
            rel = [(r["fid_all_se"] / r["fid_all"]) ** 2 for r in (row, ref_row)]
            out[n] |= {"factor_all": pooled, "factor_all_se": pooled * sum(rel) ** 0.5}
    return out


def _metric_line(result: dict) -> str:
    first = result["entries"][0]["rows"][0]
    if result["metric"] == "sw2_ratio":
        return (f"Sliced W2 of {first['n']} samples over the data baseline "
                f"({first['sw2_data_baseline']:.4f}, as many training points against the same held-out ones)")
    draws = (f"mean +- standard error over {result['draws']} independent draws of {first['n']} samples, "
             "draw k the samples k n .. (k + 1) n - 1 of one seeded call" if "draws" in result
             else f"{first['n']} samples")
    return (f"Feature FID ({draws}; the test split's size, balanced over the classes, unguided) "
            f"over the real baseline ({first['fid_real_baseline']:.3f}: the test split against the training "
            "statistics), on benchmarks/cache/families/featurenet-digits.safetensors"
            + ("" if "draws" in result else "; CAS in the JSON"))


def _se_line(result: dict) -> str:
    if "draws" in result:
        return ("Standard errors: the standard deviation over the draws / sqrt(draws); the factor's by the "
                "delta method over the paired draws (draw k of every row uses the same seeds). A target "
                "holds only if the factor is below it by more than two standard errors, fails if above it by "
                "as much, and is undecided otherwise.")
    vectors = result["metric"] == "sw2_ratio"
    se, base = ("sw2_se", "sw2_data_baseline") if vectors else ("fid_se", "fid_real_baseline")
    ses = [r[se] / r[base] for e in result["entries"] for r in e["rows"]]
    return (f"Bootstrap standard errors of the rows, in the table's units: {min(ses):.2f} to {max(ses):.2f} "
            "(differences smaller than about twice that are noise).")


VERDICT = {True: "yes", False: "**no**", None: "undecided"}


def _cell(row: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
    """The value, with its standard error where the row has one (--rescore)."""
    se = f" +- {scale * row[key + '_se']:.{digits}f}" if key + "_se" in row else ""
    return f"{scale * row[key]:.{digits}f}{se}"


def _draws_lines(result: dict) -> list[str]:
    """--rescore: every method's quotient at 1 / 2 / 4 NFE (a progressive round at its own NFE), and the
    best's again on the FID of each row's draws pooled (less small-sample bias)."""
    ref = next(r for r in result["entries"][0]["rows"] if r["nfe"] == 35)
    quotient = lambda r: f"{r['fid'] / ref['fid']:.2f}x +- {_factor_se(r['fid_draws'], ref['fid_draws']):.2f}"  # noqa: E731
    each = "; ".join(e["method"] + " " + " / ".join(map(quotient, e["rows"]))
                     + ("" if len(e["rows"]) == len(NFES) else f" at {e['rows'][0]['nfe']} NFE")
                     for e in result["entries"][1:])
    pooled = "; ".join(f"{n} NFE {m['factor_all']:.2f}x +- {m['factor_all_se']:.2f}"
                       for n, m in result["must_show"].items())
    return [f"Each method's quotient over the teacher's 35-NFE FID at 1 / 2 / 4 NFE: {each}.", "",
            f"Small-sample bias check: the FID of all {ref['n'] * result['draws']} samples of a row together "
            f"(bootstrap standard errors; no real baseline of that size, the quotient needs none): the "
            f"teacher's at 35 NFE {ref['fid_all']:.3f} +- {ref['fid_all_se']:.3f} (against "
            f"{ref['fid']:.3f} on {ref['n']}); the best method's quotient over it: {pooled}."]


def _other_metrics(result: dict) -> list[str]:
    """--rescore: KID, precision, recall and CAS of each row (means over the draws, standard errors)."""
    base = result["entries"][0]["rows"][0]
    lines = [f"Other metrics of the same draws (real baseline, the test split: KID x 1000 "
             f"{1000 * base['kid_real_baseline']:.2f}, precision {base['precision_real_baseline']:.2f}, "
             f"recall {base['recall_real_baseline']:.2f}, CAS {base['cas_real_baseline']:.3f}). KID: the "
             "unbiased MMD^2 against all training features, free of the FID's sample-size bias, but not a "
             "ratio to its baseline: on one fixed reference set it carries that set's offset (the two "
             f"halves of the training split against each other: {1000 * result['kid_train_halves']:.2f}, "
             "expectation 0), so read only differences between rows (lower: nearer the training "
             "features). Precision/recall: k = 3 manifolds of the training features.", "",
             "| method | NFE | KID x 1000 | precision | recall | CAS |", "|---|---|---|---|---|---|"]
    for e in result["entries"]:
        for r in e["rows"]:
            lines.append(f"| {e['method']} | {r['nfe']} | {_cell(r, 'kid', 1000)} | "
                         f"{_cell(r, 'precision')} | {_cell(r, 'recall')} | {_cell(r, 'cas', digits=3)} |")
    return lines


def write_table(result: dict, stem: str) -> None:
    key, data = result["metric"], result["data"]
    lines = [f"# Few-step generation against the 35-NFE teacher ({data})", "",
             f"Written by `benchmarks/fewstep.py` ({result['mode']}); torch {result['torch']}, one thread, "
             f"load average after {result['load_average_after']}. {_metric_line(result)}; one seed.", "",
             "| method | sampler | train steps | CPU-min | 1 NFE | 2 NFE | 4 NFE | 35 NFE | other NFE |",
             "|---|---|---|---|---|---|---|---|---|"]
    places = 3 if "draws" in result else 2  # why: the standard errors over draws are below 0.01
    for e in result["entries"]:
        by = {r["nfe"]: r for r in e["rows"]}
        cells = [_cell(by[n], key, digits=places) if n in by else "" for n in (*NFES, 35)]
        cells.append(", ".join(f"{n}: {_cell(r, key, digits=places)}" for n, r in by.items()
                               if n not in (*NFES, 35)))
        samplers = ", ".join(sorted({r["sampler"] for r in e["rows"]}))
        cpu = "n/a" if e["cpu_min"] is None else f"{e['cpu_min']:.1f}"
        method = e["method"] + (f" ({e['pairs']} teacher pairs)" if "pairs" in e else "")
        lines.append(f"| {method} | {samplers} | {e['train_steps']} | {cpu} | {' | '.join(cells)} |")
    lines += ["", "CPU-min: this process's CPU time (one thread) for the row's training and the evaluation "
              "`distill` runs after each round; distillation rows count the student only (the teacher's "
              "minutes are on its row). Progressive round k: rounds 1..k, the method's total split evenly "
              "over its rounds (equal steps each). Teacher rows at 1/2/4 NFE: Euler on its Karras grid "
              "(Heun's 2n - 1 calls cannot make 2 or 4; that grid's last step goes from sigma_min to 0, so "
              f"Euler's 2 NFE is about its 1 NFE). Learning curves: {stem}.png.",
              "", _se_line(result), "", "Must-show 2 (best method's ratio / the teacher's at 35 NFE):", "",
              "| NFE | best method | ratio | teacher 35 NFE | factor | target | holds |",
              "|---|---|---|---|---|---|---|"]
    for n, m in result["must_show"].items():
        factor = f"{m['factor']:.2f}x" + (f" +- {m['factor_se']:.2f}" if "factor_se" in m else "")
        ratio, teacher_35 = _cell(m, "ratio", digits=places), _cell(m, "teacher_35", digits=places)
        lines.append(f"| {n} | {m['best']} | {ratio} | {teacher_35} | {factor} | "
                     f"{m['target']}x | {VERDICT[m['holds']]} |")
    if "draws" in result:
        lines += ["", *_draws_lines(result), "", *_other_metrics(result)]
    straight = [e for e in result["entries"] if "straightness" in e]
    if straight:
        s = straight[0]["straightness"]
        lines += ["", f"Reflow straightness ([RF] S, 500 trajectories): teacher {s[0]:.4f} -> 1-rectified "
                      f"{s[1]:.4f}."]
    lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))


def _curve_panels(entries: list[dict]) -> list[tuple[str, list[list]]]:
    """(title, curves) per method; progressive distillation's rounds share a panel, one after another."""
    pd = [e for e in entries if e["method"].startswith("prog")]
    panels = [(e["method"], e["cpu_min"], [e["curve"]]) for e in entries if e not in pd]
    if pd:
        offsets = [sum(e["train_steps"] for e in pd[:k]) for k in range(len(pd))]
        curves = [[(step + off, loss) for step, loss in e["curve"]]
                  for e, off in zip(pd, offsets, strict=True)]
        panels.append((f"progressive, {len(pd)} rounds", pd[-1]["cpu_min"], curves))
    return [(f"{m}\n{'CPU-min n/a' if c is None else f'{c:.1f} CPU-min'}", cs) for m, c, cs in panels]


def write_plot(result: dict, stem: str) -> None:
    entries, cols = result["entries"], 4
    panels = _curve_panels(entries)
    rows_of_panels = -(-len(panels) // cols)
    fig = plt.figure(figsize=(13, 5 + 2.6 * rows_of_panels))
    grid = fig.add_gridspec(1 + rows_of_panels, cols, height_ratios=[2.2] + [1] * rows_of_panels)
    ax = fig.add_subplot(grid[0, :])
    pd = [e for e in entries if e["method"].startswith("progressive")]
    lines = [e for e in entries if not e["method"].startswith("progressive")]
    if pd:
        lines.append({"method": "progressive distillation (one round per N)",
                      "rows": [r for e in pd for r in e["rows"]]})
    for e in lines:
        rows = sorted((r for r in e["rows"] if r["nfe"] in NFES), key=lambda r: r["nfe"])
        label = e["method"] + (", Euler" if e["method"].startswith("teacher") else "")
        key = result["metric"]
        ax.errorbar([r["nfe"] for r in rows], [r[key] for r in rows], [r.get(f"{key}_se", 0) for r in rows],
                    marker="o", capsize=3, label=label)
    ref = next(iter(result["must_show"].values()))["teacher_35"]
    ax.axhline(ref, color="black", linestyle=":", label=f"teacher, Heun 35 NFE ({ref:.2f})")
    for n, target in TARGETS.items():
        ax.plot([n], [ref * target], marker="_", markersize=22, markeredgewidth=2, color="red")
    base = "data baseline" if result["metric"] == "sw2_ratio" else "real baseline"
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label=base)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample (NFE)",
           ylabel="sliced W2 / data baseline" if result["metric"] == "sw2_ratio" else "FID / real baseline",
           title=f"{result['data']}: quality against NFE (red ticks: the issue's targets, 2x / 1.5x / 1.2x "
                 "the teacher at 35 NFE)")
    ax.set_xticks(NFES, [str(n) for n in NFES])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    for i, (title, curves) in enumerate(panels):
        a = fig.add_subplot(grid[1 + i // cols, i % cols])
        for curve in curves:
            if curve:
                a.plot(*zip(*curve, strict=True), linewidth=1)
        a.set_yscale("log")
        a.set_title(title, fontsize=8)
        a.set_xlabel("step", fontsize=8)
        a.set_ylabel("training loss", fontsize=8)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=100)
    plt.close(fig)


def checkerboard(quick: bool) -> list[dict]:
    steps = {k: max(20, v // QUICK) if quick else v for k, v in STEPS.items()}
    n = 1000 if quick else N_EVAL
    first, teacher_run = teacher(steps, n)
    entries = [first, scratch("MeanFlow", "checkerboard-meanflow", steps, n),
               scratch("iCT", "checkerboard-ict", steps, n)]
    for method in ("progressive", "consistency distillation", "reflow"):
        entries += distilled(method, teacher_run, steps)
    return entries


def digits_student(method: str, teacher_run) -> list[dict]:
    """One digits method's entries: from scratch (configs/digits-meanflow.toml, digits-ict.toml) or
    distilled from the teacher (cached as benchmarks/cache/fewstep/digits-METHOD)."""
    if method in ("MeanFlow", "iCT"):
        return [scratch(method, f"digits-{method.lower()}", DIGITS_STEPS, None)]
    return distilled(method, teacher_run, DIGITS_STEPS, f"digits-{METHODS[method]}")


def digits(source: Path) -> list[dict]:
    first, teacher_run = digits_teacher(source)
    return [first, *(e for method in DIGITS_STEPS for e in digits_student(method, teacher_run))]


def digits_add(result: dict, methods: list[str], out: Path) -> None:
    """--add: train these methods against the cached digits teacher, each replacing its rows in `result`
    (the table's order kept), `out` rewritten after each (a later failure keeps the earlier rows)."""
    teacher_run = runs.load_run(RUNS / "digits-teacher")
    order = list(DIGITS_STEPS)
    base = lambda e: next((m for m in order if e["method"].startswith(m)), "")  # noqa: E731
    for method in methods:
        kept = [e for e in result["entries"][1:] if base(e) != method]
        new = digits_student(method, teacher_run)
        result["entries"][1:] = sorted(kept + new, key=lambda e: order.index(base(e)))
        out.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"steps / {QUICK}: check the pipeline, not a result")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--digits-teacher", type=Path, help="digits: this trained digits-edm run, the teacher")
    which.add_argument("--rescore", action="store_true",
                       help=f"digits: score the cached runs on {DRAWS} draws each (rows not yet scored so), "
                            "no training")
    which.add_argument("--add", type=lambda s: s.split(","), metavar="METHOD,...",
                       help=f"digits: train these rows ({', '.join(DIGITS_STEPS)}) against the cached "
                            "teacher into fewstep_digits.json, then --rescore")
    p.add_argument("--table", action="store_true", help="only rewrite the .md and .png from the .json")
    args = p.parse_args()
    if args.add and set(args.add) - set(DIGITS_STEPS):
        p.error(f"--add: {','.join(args.add)}: expected methods among {', '.join(DIGITS_STEPS)}")
    digits_ = args.digits_teacher or args.rescore or args.add
    stem = "fewstep_digits" if digits_ else "fewstep_quick" if args.quick else "fewstep"
    out = RESULTS / f"{stem}.json"
    if args.table:
        result = json.loads(out.read_text())
    elif args.rescore or args.add:
        torch.set_num_threads(1)
        result = json.loads(out.read_text())
        if args.add:
            digits_add(result, args.add, out)
        rescore(result, DRAWS)
        result |= {"torch": torch.__version__, "load_average_after": [round(v, 1) for v in os.getloadavg()],
                   "must_show": must_show(result["entries"], result["metric"])}
        out.write_text(json.dumps(result, indent=1) + "\n")
    else:
        torch.set_num_threads(1)
        entries = digits(args.digits_teacher) if args.digits_teacher else checkerboard(args.quick)
        key = "fid_ratio" if args.digits_teacher else "sw2_ratio"
        result = {"data": "digits" if args.digits_teacher else "checkerboard", "metric": key,
                  "mode": "quick" if args.quick else "full", "torch": torch.__version__,
                  "machine": platform.machine(), "load_average_after": [round(v, 1) for v in os.getloadavg()],
                  "entries": entries, "must_show": must_show(entries, key)}
        out.write_text(json.dumps(result, indent=1) + "\n")
    write_table(result, stem)
    write_plot(result, stem)
    print(json.dumps(result["must_show"], indent=1))


if __name__ == "__main__":
    main()
