"""Training curves as one PNG: history records (metrics.jsonl) -> curves.png."""

from __future__ import annotations

from pathlib import Path

from bertkit.io import atomic_write


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Losses on the left (train loss per logged step, validation losses per evaluation), every
    other validation metric (accuracy, F1, ...) on the right, so that each panel has one scale.

    Records are metrics.jsonl lines: {"step": 50, "loss": 2.1, ...}, {"step": 100, "val_accuracy": 0.8, ...};
    a value that was not finite is stored as null and left out of its curve.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    val_keys = sorted({k for r in history for k in r if k.startswith("val_")})
    loss_keys = [k for k in val_keys if "loss" in k]
    metric_keys = [k for k in val_keys if "loss" not in k]
    fig = Figure(figsize=(6 * (1 + bool(metric_keys)), 4))
    FigureCanvasAgg(fig)

    def curve(ax, key: str, label: str, marker: str | None) -> None:
        pts = [(r["step"], r[key]) for r in history if r.get(key) is not None]
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker=marker, label=label)

    ax = fig.add_subplot(1, 1 + bool(metric_keys), 1)
    curve(ax, "loss", "train loss", None)
    for k in loss_keys:
        curve(ax, k, k, "o")
    ax.set(xlabel="step", title="loss")
    ax.legend()
    if metric_keys:
        ax = fig.add_subplot(1, 2, 2)
        for k in metric_keys:
            curve(ax, k, k, "o")
        ax.set(xlabel="step", title="validation metrics")
        ax.legend()
    fig.subplots_adjust(left=0.1 / (1 + bool(metric_keys)), right=0.97, bottom=0.12, top=0.92, wspace=0.15)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
