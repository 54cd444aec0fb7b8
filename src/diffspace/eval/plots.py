"""Pictures people would rather look at than read: sample scatters and loss curves (matplotlib, Agg)."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def scatter_2d(samples: Tensor, data: Tensor, out: Path, title: str = "") -> None:
    """Samples beside the data, first two coordinates, same axes."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], data, "data (held out)"), (axes[1], samples, "samples")):
        p = pts[:5000].float().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set_title(name)
        ax.set_aspect("equal")
    lim = float(data[:, :2].abs().max()) * 1.15
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def loss_curve(log: Path, out: Path) -> None:
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


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
