"""A run's report: one static HTML page, RUN/report.html, that needs no network and no script.

It shows what the run directory holds: the run (task, step, time, parameters), its metrics beside
their baselines and standard errors with the protocol that produced them (seed, n, sampler, steps,
NFE, grid, guidance), sample pictures (or text samples), learning curves drawn from log.jsonl, the
optimized grids of grids.json, the quality-against-NFE curve (nfe.json / nfe.png) when present, and
the config. Every picture is inlined as a data: URI. Files computed from other weights than the
checkpoint's (metrics of an earlier step) are marked stale.

The report only reads, like `diffspace info`: it needs the checkpoint (UserError without it), and a file
it cannot read (log.jsonl, metrics.json, grids.json, nfe.json cut short, hand-edited or of the wrong
kind) is left out with a one-line warning in its section and in the log; the rest is shown.
"""

import base64
import html
import io
import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffspace.config import to_toml
from diffspace.eval.plots import learning_curves, sigma_grids
from diffspace.files import read_json, write_text
from diffspace.runs.loading import read_run
from diffspace.runs.rundir import check_run_dir
from diffspace.runs.sampling import read_plans
from diffspace.samplers.registry import SAMPLERS
from diffspace.train.loop import read_log
from diffspace.types import UserError

log = logging.getLogger("diffspace")
REPORT = "report.html"
PROTOCOL = ("step", "seed", "n", "sampler", "steps", "grid", "plan", "sampler_options", "sigma_range", "cfg",
            "featurenet", "featurenet_test_accuracy")
BASELINES = ("_data_baseline", "_real_baseline")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; } figure { margin: 1em 0; display: inline-block; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
.warn { background: #fdecea; border: 2px solid #c62828; color: #b71c1c; padding: .6em; font-weight: bold; }
.note { color: #666; } summary { cursor: pointer; }
"""


def _num(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _figure(data: bytes, caption: str) -> str:
    return (f'<figure><img src="{_png(data)}" alt="{html.escape(caption)}">'
            f"<figcaption class=note>{html.escape(caption)}</figcaption></figure>")


def _drawn(plot, *args) -> bytes:
    buf = io.BytesIO()
    plot(*args, buf)
    return buf.getvalue()


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{_num(c)}</td>' if isinstance(c, int | float)
                                    else f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def nfe_of(sampler: str, steps: int, guided: bool) -> int | str:
    """Network evaluations per sample: the sampler's rule for `steps`, twice with classifier-free guidance
    (the conditional and unconditional halves); "adaptive" for rk45, "?" for an unknown sampler."""
    spec = SAMPLERS.get(sampler)
    if spec is None:
        return "?"
    return "adaptive" if spec.nfe is None else spec.nfe(steps) * (2 if guided else 1)


def _metrics(m: dict, step: int) -> str:
    parts = []
    if "featurenet_warning" in m:
        parts.append(f'<p class="warn">{html.escape(str(m["featurenet_warning"]))}</p>')
    if m.get("step", step) != step:
        parts.append(f'<p class="warn">stale: these metrics are from step {m["step"]}, the checkpoint is at '
                     f"step {step} (run `diffspace eval` again)</p>")
    extra = {k + s for k in m for s in ("_se", "_ratio")} | {k + b + s for k in m for b in BASELINES
                                                              for s in ("", "_se")}
    rows = []
    for k, v in m.items():
        if k in PROTOCOL or k in extra or k == "featurenet_warning" or isinstance(v, dict | list):
            continue
        base = next((k + b for b in BASELINES if k + b in m), None)
        rows.append([k, v, m.get(k + "_se", ""), m[base] if base else "",
                     m.get(base + "_se", "") if base else "", m.get(k + "_ratio", "")])
    parts.append(_table(["metric", "value", "± s.e.", "baseline", "baseline ± s.e.", "ratio"], rows))
    return "".join(parts)


def _protocol(m: dict, guided: bool) -> str:
    rows = [[k, json.dumps(m[k]) if isinstance(m[k], dict | list) else m[k]] for k in PROTOCOL if k in m]
    if "sampler" in m and "steps" in m:  # a stored plan records its own NFE (a DP plan's steps are calls)
        nfe = m["nfe"] * (2 if guided else 1) if "nfe" in m else nfe_of(m["sampler"], m["steps"], guided)
        rows.append(["NFE per sample", nfe])
    return "<h3>Protocol</h3>" + _table(["setting", "value"], rows)


def _grids(table: dict, step: int) -> str:
    """The stored plans as a table and a plot; an entry without a list of numbers as sigmas (a hand edit)
    is a 'malformed' row."""
    good = {key: e for key, e in table.items() if isinstance(e, dict) and isinstance(e.get("sigmas"), list)
            and all(type(s) in (int, float) for s in e["sigmas"])}
    rows = [[key, e.get("method", ""), e.get("step", "?"), "current" if e.get("step") == step else "stale",
             ", ".join(f"{s:.4g}" for s in e["sigmas"])] for key, e in good.items()]
    rows += [[key, "malformed", "", "", ""] for key in table if key not in good]
    plot = _figure(_drawn(sigma_grids, {key: e["sigmas"] for key, e in good.items()}),
                   "optimized noise levels against the step") if good else ""
    return _table(["sampler:steps", "method", "fitted at step", "", "sigmas"], rows) + plot


def _json_table(data) -> str:
    """nfe.json and other result files: a list of records as a table, anything else as JSON text."""
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        data = [dict(zip(data, vals, strict=False)) for vals in zip(*data.values(), strict=False)]
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        keys = list(dict.fromkeys(k for r in data for k in r))
        return _table(keys, [[r.get(k, "") for k in keys] for r in data])
    return f"<pre>{html.escape(json.dumps(data, indent=1))}</pre>"


def _read(read: Callable[..., Any], path: Path, *args) -> tuple[Any, str]:
    """(read(path, *args), "") for a file of the run directory, (None, "") where there is none, and (None, a
    warning paragraph) where it cannot be read (UserError): the report leaves it out and says so."""
    if not path.is_file():
        return None, ""
    try:
        return read(path, *args), ""
    except UserError as e:
        log.warning("%s; left out of the report", e)
        return None, f'<p class="warn">{html.escape(str(e))}; left out of this report</p>'


def _sections(run_dir: Path, meta: dict) -> list[tuple[str, str, str]]:
    """(anchor, title, html) of each section the run directory has material for (or an unreadable file)."""
    step, out = meta["step"], []
    m, body = _read(read_json, run_dir / "metrics.json")
    if m is not None:
        guided = meta["config"].get("model", {}).get("num_classes", 0) > 0 and m.get("cfg", 1.0) != 1.0
        body = _metrics(m, step) + _protocol(m, guided)
    if body:
        out.append(("metrics", "Metrics", body))
    pictures = [_figure((run_dir / name).read_bytes(), name) for name in ("samples.png", "denoising.png")
                if (run_dir / name).is_file()]
    if (run_dir / "samples.txt").is_file():
        text = (run_dir / "samples.txt").read_text(errors="replace")[:20000]
        pictures.append(f"<pre>{html.escape(text)}</pre>")
    if pictures:
        out.append(("samples", "Samples", "".join(pictures)))
    rows, body = _read(read_log, run_dir / "log.jsonl")
    if rows:
        body = _figure(_drawn(learning_curves, rows), "from log.jsonl (loss and gradient norm on log scales)")
    if body:
        out.append(("curves", "Learning curves", body))
    grids, body = _read(read_plans, run_dir / "grids.json")
    if grids is not None:
        body = _grids(grids, step)
    if body:
        out.append(("grids", "Optimized grids", body))
    nfe = [_figure((run_dir / "nfe.png").read_bytes(), "nfe.png")] if (run_dir / "nfe.png").is_file() else []
    table, body = _read(read_json, run_dir / "nfe.json", list)
    nfe.append(body if table is None else _json_table(table))
    if any(nfe):
        out.append(("nfe", "Quality against NFE", "".join(nfe)))
    out.append(("config", "Config", f"<details><summary>config.toml (resolved, as stored in the checkpoint)"
                                    f"</summary><pre>{html.escape(to_toml(meta['config']))}</pre></details>"))
    return out


def write_report(path: str | Path) -> Path:
    """Write RUN/report.html for a run directory (or checkpoint file) and return its path."""
    ckpt, tensors, meta = read_run(path)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    check_run_dir(run_dir, REPORT)
    params = sum(v.numel() for k, v in tensors.items() if k.startswith("model."))
    cfg = meta["config"]
    title = f"diffspace report: {run_dir.name}"
    summary = (f"task {cfg.get('task', 'continuous')}, step {meta['step']} of {cfg['train']['steps']}, "
               f"{meta['elapsed']:.0f} s of training, {params:,} parameters; written "
               f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC from {run_dir.resolve()}")
    sections = _sections(run_dir, meta)
    nav = " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>{content}</section>'
                   for a, t, content in sections)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="note">{html.escape(summary)}</p><nav>{nav}</nav>{body}</body></html>\n')
    out = run_dir / REPORT
    write_text(out, page)
    return out
