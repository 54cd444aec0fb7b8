"""The quality-against-NFE curve of continuous runs (`diffspace eval RUN --nfe 1,2,4,8,35`): each run
sampled at several numbers of network evaluations per sample with its own sampler and grid, scored
against one data baseline, written to RUN/nfe.json (a table) and RUN/nfe.png (one line per run).

NFE N becomes steps through the sampler's NFE rule (samplers/registry.py): the most steps whose calls do
not exceed N. One call per step (euler, ddim, the multistep solvers, flow_map jumps, consistency
sampling) meets every N exactly; Heun's 2n - 1 meets odd N with n = (N + 1) / 2 and an even N with
N - 1 calls (the table records both, "nfe" and "nfe_asked"; `--sampler euler` meets every N). A run is
sampled unguided (classifier-free guidance would double every call).
"""

import json

import torch

from diffspace.eval.featurenet import features
from diffspace.eval.image_eval import balanced_labels, score_samples
from diffspace.eval.image_metrics import feature_stats
from diffspace.eval.metrics import baseline_ratio, bootstrap_se, sliced_w2
from diffspace.eval.nfe import nfe_plot
from diffspace.files import write_text
from diffspace.runs.continuous import as_denoiser, load_data, to_data_units
from diffspace.runs.evaluation import featurenet_for
from diffspace.runs.options import MAX_STEPS, Run, check_featurenet, check_sample_count
from diffspace.runs.rundir import check_run_dir
from diffspace.runs.sampling import generate, plan
from diffspace.samplers.registry import nfe_steps
from diffspace.train.distributed import is_main
from diffspace.types import UserError

NFE_FILE, NFE_PLOT = "nfe.json", "nfe.png"


def check_nfes(nfes) -> list[int]:
    """The sorted distinct NFE values; UserError unless each is an integer in 1..MAX_STEPS."""
    bad = [v for v in nfes if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_STEPS]
    if bad or not nfes:
        raise UserError(f"--nfe takes integers in 1..{MAX_STEPS} (network evaluations per sample), got "
                        f"{list(nfes)}")
    return sorted(set(nfes))


def _vector_scorer(run: Run, data: dict, n: int):
    x_test, x_train = data["x_test"][:n], data["x_train"]
    base = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[: len(x_test)]]
    baseline = sliced_w2(base, x_test)  # the same baseline as runs.evaluate's

    def score(x):
        x = to_data_units(run.meta, x)
        sw2 = sliced_w2(x, x_test)
        return {"sw2": sw2, "sw2_se": bootstrap_se(sliced_w2, x, x_test), "sw2_data_baseline": baseline,
                "sw2_ratio": baseline_ratio(sw2, baseline, "sw2")}

    return score


def _image_scorer(run: Run, data: dict, labels, featurenet: str | None):
    net, meta = featurenet_for(run, featurenet)
    ref_feats = features(net, data["x_train"])
    ref_stats = feature_stats(ref_feats)
    base = score_samples(net, data["x_test"], data["y_test"], ref_stats, ref_feats)

    def score(x):
        s = score_samples(net, x.clamp(-1, 1), labels, ref_stats, ref_feats)
        out = {"fid": s["fid"], "fid_se": s["fid_se"], "fid_real_baseline": base["fid"],
               "fid_ratio": baseline_ratio(s["fid"], base["fid"], "fid"), "kid": s["kid"],
               "precision": s["precision"], "recall": s["recall"],
               "featurenet_test_accuracy": meta["test_accuracy"]}
        if labels is not None:
            out |= {"cas": s["cas"], "cas_real_baseline": base["cas"]}
        return out

    return score


def _check_fits(run: Run, featurenet: str | None) -> None:
    """UserError for a run the NFE curve cannot score as asked: not continuous, or a feature net given for
    a run of vectors (scored by sliced W2, so the net would be ignored)."""
    if run.task != "continuous":
        raise UserError(f"the NFE curve needs a continuous run; {run.dir} is a {run.task} run")
    if not run.cfg.images:
        check_featurenet(featurenet, str(run.dir))


def nfe_curve(run: Run, nfes, sampler: str | None = None, grid: str | None = None, n: int | None = None,
              seed: int = 0, featurenet: str | None = None) -> list[dict]:
    """Rows {"nfe", "nfe_asked", "sampler", "steps", "grid", metrics...} of a continuous run at each NFE of
    `nfes`, with the run's [sample] sampler and grid unless given, n samples (the run's eval.n; images:
    the test split) and one seed; rank 0 writes them to RUN/nfe.json. Vectors: sliced W2 (with its
    standard error) over the data baseline of `runs.evaluate`; images: FID over the real baseline, KID,
    precision/recall and, for a class-conditional run (samples balanced over the classes), CAS."""
    _check_fits(run, featurenet)
    nfes, sc = check_nfes(nfes), run.cfg.sample
    sampler, grid = sampler or sc.sampler, grid or sc.grid
    data = load_data(run.cfg)
    n = n or (len(data["x_test"]) if run.cfg.images else run.cfg.eval.n)
    check_sample_count(n=n)
    K = run.cfg.model.num_classes
    labels = balanced_labels(n, K) if K else None
    score = (_image_scorer(run, data, labels, featurenet) if run.cfg.images
             else _vector_scorer(run, data, n)) if is_main() else None
    rows, last = [], None
    for asked in nfes:
        steps, nfe = nfe_steps(sampler, asked)
        if steps == last:  # an even N for Heun: the protocol of N - 1 again
            rows += [rows[-1] | {"nfe_asked": asked}] if rows else []
            continue
        last = steps
        fn, sigmas = plan(run, sampler, steps, grid)
        try:
            x = generate(as_denoiser(run.cfg, run.module), tuple(run.meta["data_shape"]), n, sigmas, fn, seed,
                         run.device, None if labels is None else {"class_labels": labels})
        except UserError as e:  # why: say which point of the curve failed (non-finite samples)
            raise UserError(f"{run.dir}, NFE {nfe} ({sampler}, {steps} steps): {e}") from None
        if x is not None:
            rows.append({"nfe": nfe, "nfe_asked": asked, "sampler": sampler, "steps": steps, "grid": grid,
                         "n": n, "seed": seed, "step": run.step, **score(x)})
    if is_main():
        write_text(run.dir / NFE_FILE, json.dumps(rows, indent=1) + "\n")
    return rows


def nfe_curves(runs: list[Run], nfes, sampler: str | None = None, grid: str | None = None,
               n: int | None = None, seed: int = 0, featurenet: str | None = None) -> dict[str, list[dict]]:
    """`nfe_curve` of each run (each writes its RUN/nfe.json) and their plot, one line per run, in the first
    run's RUN/nfe.png. Returns {label: rows}, the label being the run directory's name and sampler."""
    for run in runs:  # every refusal before any work
        _check_fits(run, featurenet)
        check_run_dir(run.dir, NFE_FILE)
    curves = {}
    for run in runs:
        rows = nfe_curve(run, nfes, sampler, grid, n, seed, featurenet)
        label = f"{run.dir.name} ({sampler or run.cfg.sample.sampler})"
        curves[label if label not in curves else f"{run.dir} ({sampler or run.cfg.sample.sampler})"] = rows
    if is_main() and runs:
        data = runs[0].cfg.data.name
        nfe_plot(curves, runs[0].dir / NFE_PLOT, f"{data}: quality against network evaluations (seed {seed})")
    return curves
