"""PNG plots, written atomically: the training loss curve (`loss.png`, `report-loss.png`), the
training dashboard (`train-dashboard.png`) and the figure helpers the report's other plots use."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptdistill.core.io import atomic_write_bytes


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported late:
    matplotlib costs about a second to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _smoothed(xs: Iterable[float]) -> list[float]:
    """Debiased EMA (0.9), as in the live display."""
    ema, out = 0.0, []
    for i, x in enumerate(xs):
        ema = 0.9 * ema + 0.1 * x
        out.append(ema / (1 - 0.9 ** (i + 1)))
    return out


def _loss_by_step(ax: Any, rows: list[dict[str, Any]]) -> bool:
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and "step" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not train and not val:
        return False
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, alpha=0.35, label="train (per step)")
        ax.plot(steps, _smoothed(losses), label="train (smoothed)")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per answer token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return True


def plot_loss(rows: Iterable[dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss per step (raw and smoothed) and validation loss, from metrics.jsonl
    records. Returns False (and writes nothing) when there is nothing to plot."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    if not _loss_by_step(ax, list(rows)):
        pyplot().close(fig)
        return False
    ax.set_title(title)
    save_png(fig, path)
    return True


# --------------------------------------------------------------------------- dashboard (#17)

DASHBOARD_PANELS = (
    "loss by step",
    "loss by epoch",
    "learning rate",
    "gradient norm (before clipping at 1.0)",
    "training speed (tokens/s)",
    "data-wait share of training time",
)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [
        (r["step"], r[key]) for r in rows if r.get("type") == "train" and r.get(key) is not None
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _loss_by_epoch(ax: Any, rows: list[dict[str, Any]]) -> bool:
    """Train loss against the fractional epoch, each epoch's mean, and the validation loss at
    the epoch its step reached. A streamed run has no epochs (its records carry none)."""
    train = [r for r in rows if r.get("type") == "train" and r.get("epoch") is not None]
    if not train:
        return False
    epoch_at = {0: 0.0, **{int(r["step"]): float(r["epoch"]) for r in train}}
    xs, ys = [float(r["epoch"]) for r in train], [float(r["loss"]) for r in train]
    ax.plot(xs, ys, alpha=0.35, label="train (per step)")
    means: dict[int, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        means.setdefault(int(x - 1e-9) if x > 0 else 0, []).append(y)
    ax.plot([e + 1 for e in means], [sum(v) / len(v) for v in means.values()], marker="s",
            label="train (epoch mean, at its end)")  # fmt: skip
    val = [(epoch_at[r["step"]], r["val_loss"]) for r in rows
           if r.get("val_loss") is not None and r.get("step") in epoch_at]  # fmt: skip
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per answer token")
    ax.legend(fontsize=8)
    return True


def _line(ax: Any, rows: list[dict[str, Any]], key: str, ylabel: str, log: bool = False) -> bool:
    xs, ys = _series(rows, key)
    if not xs:
        return False
    ax.plot(xs, ys, alpha=0.4 if len(xs) > 20 else 1.0)
    if len(xs) > 20:
        ax.plot(xs, _smoothed(ys), label="smoothed")
        ax.legend(fontsize=8)
    if log and min(ys) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    return True


def _wait_share(ax: Any, rows: list[dict[str, Any]]) -> bool:
    """Seconds waiting for data / seconds since the loop (re)started: what the live line shows."""
    pts = [(r["step"], 100 * r["data_wait_s"] / r["elapsed_s"]) for r in rows
           if r.get("type") == "train" and r.get("data_wait_s") is not None
           and r.get("elapsed_s")]  # fmt: skip
    if not pts:
        return False
    ax.plot(*zip(*pts, strict=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("step")
    ax.set_ylabel("% of time (cumulative)")
    return True


def dashboard_figure(rows: Iterable[dict[str, Any]], title: str) -> tuple[Any, list[str]]:
    """The six-panel training dashboard from metrics.jsonl records, and the titles of the
    panels that had data (a panel without, e.g. grad norms of a run older than #17, says so)."""
    rows = list(rows)
    fig, axes = pyplot().subplots(3, 2, figsize=(11, 10))
    draw = (
        lambda ax: _loss_by_step(ax, rows),
        lambda ax: _loss_by_epoch(ax, rows),
        lambda ax: _line(ax, rows, "lr", "learning rate"),
        lambda ax: _line(ax, rows, "grad_norm", "L2 norm of the LoRA gradients", log=True),
        lambda ax: _line(ax, rows, "tokens_per_s", "tokens/s (padding included)"),
        lambda ax: _wait_share(ax, rows),
    )
    drawn = []
    for ax, name, fn in zip(axes.flat, DASHBOARD_PANELS, draw, strict=True):
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if fn(ax):
            drawn.append(name)
        else:
            ax.text(0.5, 0.5, "not in metrics.jsonl", ha="center", va="center",
                    transform=ax.transAxes, alpha=0.6)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout()
    return fig, drawn


def plot_dashboard(rows: Iterable[dict[str, Any]], path: Path, title: str) -> list[str]:
    """Write the dashboard PNG; returns the panels drawn ([] and no file without any step)."""
    rows = list(rows)
    if not any(r.get("type") == "train" for r in rows):
        return []
    fig, drawn = dashboard_figure(rows, title)
    save_png(fig, path)
    return drawn
