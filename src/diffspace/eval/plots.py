"""Pictures people would rather look at than read: sample scatters, learning curves, noise grids and
labelled picture grids (matplotlib, Agg). Log axes carry plain-number ticks (`readable_log_ticks`)."""

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from diffspace.eval.pictures import image_grid  # noqa: E402
from diffspace.files import atomic_write  # noqa: E402
from diffspace.train.loop import read_log  # noqa: E402


def save_figure(fig, out, **savefig) -> None:
    """fig.savefig to a path (atomically: `files.atomic_write`) or a binary file object, then close it."""
    if isinstance(out, str | Path):
        with atomic_write(out) as tmp:
            fig.savefig(tmp, **savefig)
    else:
        fig.savefig(out, **savefig)
    plt.close(fig)


def scatter_2d(samples: Tensor, data: Tensor, out: Path, title: str = "") -> None:
    """Samples beside the data, first two coordinates, same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], data, "data (held out)"), (axes[1], samples, "samples")):
        p = pts[:5000].float().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set_title(name)
        ax.set_aspect("equal")
    lo, hi = data[:, :2].min(0).values.double(), data[:, :2].max(0).values.double()
    mid, half = (lo + hi) / 2, float((hi - lo).max()) / 2 * 1.15  # why: data need not sit around 0
    axes[0].set_xlim(float(mid[0]) - half, float(mid[0]) + half)
    axes[0].set_ylim(float(mid[1]) - half, float(mid[1]) + half)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)


def readable_log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi] (0 < lo <= hi) written as plain numbers: the powers of
    ten inside when there are at least three, else the 1-2-5 values when there are 3 to 8, else every
    1..9 x 10^k inside, else lo and hi at three significant digits (a narrow range would otherwise show
    no labelled tick at all)."""
    decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    values = [(m, float(f"{m}e{k}")) for k in decades for m in range(1, 10)]
    inside = [(m, v) for m, v in values if lo <= v <= hi]
    for keep in ((1,), (1, 2, 5)):  # powers of ten when there are many, else 1-2-5
        nice = [v for m, v in inside if m in keep]
        if 3 <= len(nice) <= 8 or (keep == (1,) and len(nice) > 8):
            return nice
    return [v for _, v in inside] if len(inside) >= 2 else sorted({float(f"{lo:.3g}"), float(f"{hi:.3g}")})


def log_axis(ax, values, axis: str = "y") -> None:
    """A log scale on `axis` whose ticks are `readable_log_ticks` of the positive values, no minor labels."""
    positive = [v for v in values if v > 0]
    getattr(ax, f"set_{axis}scale")("log")
    if positive:
        ticks = readable_log_ticks(min(positive), max(positive))
        getattr(ax, f"set_{axis}ticks")(ticks, [f"{t:g}" for t in ticks])
        getattr(ax, f"{axis}axis").set_minor_formatter(matplotlib.ticker.NullFormatter())


def loss_curve(log: Path, out: Path) -> None:
    """The training loss of RUN/log.jsonl (`read_log`) against the step; nothing for an empty log."""
    rows = read_log(log)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    log_axis(ax, [r["loss"] for r in rows])
    ax.set_title("training loss (mean over each logged step's batch)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)


def learning_curves(rows: list[dict], out) -> None:
    """Loss, gradient norm (before clipping) and learning rate against the step, one panel each; `out` a
    path or a binary file."""
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, label in zip(axes, ("loss", "grad_norm", "lr"), ("training loss", "gradient norm",
                                                                  "learning rate"), strict=True):
        values = [r[key] for r in rows]
        ax.plot(steps, values)
        ax.set_xlabel("step")
        ax.set_title(label)
        if key != "lr":
            log_axis(ax, values)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=100, format="png")


def sigma_grids(grids: dict[str, list[float]], out) -> None:
    """Noise levels against the step index, one line per grid (log scale, the final 0 left out)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    levels = []
    for name, sigmas in grids.items():
        positive = [s for s in sigmas if s > 0]
        levels += positive
        ax.plot(range(len(positive)), positive, marker="o", label=name)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("sigma")
    log_axis(ax, levels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, dpi=100, format="png")


def labelled_grid(x: Tensor, out, ncols: int, title: str = "", row_labels: list[str] | None = None,
                  col_labels: list[str] | None = None, cell_inches: float = 0.45) -> None:
    """A picture grid (see eval/pictures.image_grid) with a title and row / column labels."""
    pic = np.asarray(image_grid(x, ncols))
    N, _, H, W = x.shape
    nrows = -(-N // ncols)
    fig, ax = plt.subplots(figsize=(ncols * cell_inches + 1.4, nrows * cell_inches + 0.9))
    ax.imshow(pic, cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    centres = lambda n, size: [1 + i * (size + 1) + (size - 1) / 2 for i in range(n)]  # 1-pixel padding
    ax.set_yticks(centres(nrows, H) if row_labels else [], row_labels or [])
    ax.set_xticks(centres(ncols, W) if col_labels else [], col_labels or [], rotation=45 if col_labels and
                  max(map(len, col_labels)) > 4 else 0)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    # why: a canvas sized for the images alone; "tight" grows it to the labels and the title
    save_figure(fig, out, dpi=100, format="png", bbox_inches="tight", pad_inches=0.05)


def scatter_picture(points: Tensor, title: str = "") -> Tensor:
    """A scatter of the first two coordinates as an image (1, 3, H, W) in [-1, 1] (for TensorBoard)."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    p = points[:5000].float().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


def guidance_tradeoff(rows: list[dict], out: Path,
                      metrics: tuple[str, ...] = ("clip_score", "acc_all")) -> None:
    """One panel per metric against FID (lower is better), one line per evaluation set through the
    guidance scales w (each point labelled with its w); rows: {"set", "guidance", "fid", metrics...},
    a row with guidance None is the real images (a star)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, key in zip(axes, metrics, strict=True):
        for name in dict.fromkeys(r["set"] for r in rows):
            gen = [r for r in rows if r["set"] == name and r["guidance"] is not None]
            line = ax.plot([r["fid"] for r in gen], [r[key] for r in gen], marker="o", label=name)[0]
            for r in gen:
                ax.annotate(f"w={r['guidance']:g}", (r["fid"], r[key]), fontsize=8, xytext=(3, 3),
                            textcoords="offset points")
            for r in (r for r in rows if r["set"] == name and r["guidance"] is None):
                ax.scatter([r["fid"]], [r[key]], marker="*", s=120, color=line.get_color(),
                           label=f"{name}: real images")
        ax.set_xlabel("FID (attribute-reader features)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    # why: one legend beside the panels, not over their points (a sweep of several models has many lines)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, dpi=110, bbox_inches="tight")
