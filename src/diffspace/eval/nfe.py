"""Quality against the number of network evaluations: the plot of one or more runs' NFE curves
(`diffspace eval RUN --nfe 1,2,4,8,35`, runs/nfe.py)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffspace.eval.plots import log_axis, save_figure  # noqa: E402

# metric key -> (axis label, lower is better); the first present in a curve's rows is drawn
PANELS = {"sw2_ratio": ("sliced W2 / data baseline (1 = data)", True),
          "fid_ratio": ("FID / real baseline (1 = real images)", True),
          "cas": ("CAS: classifier accuracy on samples", False)}


def nfe_plot(curves: dict[str, list[dict]], out: Path, title: str = "") -> None:
    """One panel per metric the curves share (sliced W2 over its data baseline for vectors; FID over its
    real baseline and CAS for images), NFE on a log2 axis, one line per curve (label -> rows with "nfe"
    and the metric), the data baseline as a dashed line (CAS: the real test images' accuracy)."""
    rows = [r for c in curves.values() for r in c]
    keys = [k for k in PANELS if rows and all(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        label, _ = PANELS[key]
        for name, c in curves.items():
            ax.plot([r["nfe"] for r in c], [r[key] for r in c], marker="o", label=name)
        base = 1.0 if key.endswith("_ratio") else rows[0]["cas_real_baseline"]
        ax.axhline(base, color="gray", linestyle="--", linewidth=1, label="data baseline")
        ax.set_xscale("log", base=2)
        nfes = sorted({r["nfe"] for r in rows})
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_ylabel(label)
        if key.endswith("_ratio"):
            log_axis(ax, [r[key] for r in rows] + [base])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
