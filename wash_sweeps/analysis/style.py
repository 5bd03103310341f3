"""The shared look of every figure: one colour per method, one size, PNG + PDF output.

from wash_sweeps.analysis import style
fig, ax = style.figure()
ax.plot(x, y, **style.line("wash"))
style.save(fig, out_dir / "fig1_accuracy_vs_p")   # writes .png and .pdf
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files, never windows (CI and DVC stages have no display)
import matplotlib.pyplot as plt

METHOD_COLORS = {
    "independent": "#7f7f7f",
    "papa": "#1f77b4",
    "papa_all": "#9467bd",
    "papa2": "#17becf",
    "dart": "#2ca02c",
    "wash": "#d62728",
}
METHOD_LABELS = {
    "independent": "independent (naive average)",
    "papa": "PAPA",
    "papa_all": "PAPA-all",
    "papa2": "PAPA-2",
    "dart": "DART",
    "wash": "WASH",
}
# the three test accuracies of a population, drawn the same way in every figure
KIND_STYLE = {
    "test/acc_avg": dict(linestyle="-", marker="o", label="averaged model"),
    "test/acc_ens": dict(linestyle="--", marker="s", label="ensemble"),
    "test/acc_member_mean": dict(linestyle=":", marker="^", label="mean member"),
}
SINGLE = (6.4, 4.2)  # inches: one column of a paper at 100% scale
DOUBLE = (11.0, 4.2)

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.fontsize": 8,
        "legend.framealpha": 0.85,
    }
)


def figure(ncols: int = 1) -> tuple[plt.Figure, Any]:
    """A figure of `ncols` panels side by side (one axis, or an array of them)."""
    fig, ax = plt.subplots(1, ncols, figsize=SINGLE if ncols == 1 else DOUBLE, squeeze=True)
    return fig, ax


def color(method: str) -> str:
    return METHOD_COLORS.get(method, "#333333")


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def n_note(n_seeds: int | list[int]) -> str:
    """'n = 3 seeds' (or a range when groups differ), for titles: every figure states n."""
    if isinstance(n_seeds, list):
        lo, hi = min(n_seeds, default=0), max(n_seeds, default=0)
        text = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"n = {text} seed{'s' if hi != 1 else ''}"
    return f"n = {n_seeds} seed{'s' if n_seeds != 1 else ''}"


def save(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write `stem`.png and `stem`.pdf; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        # fixed metadata so a rerun on the same tables writes the same bytes
        meta = {"CreationDate": None} if path.suffix == ".pdf" else {"Software": None}
        fig.savefig(path, metadata=meta)
    plt.close(fig)
    return paths
