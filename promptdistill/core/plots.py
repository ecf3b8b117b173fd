"""PNG plots, written atomically: the training loss curve (`loss.png`, `report-loss.png`) and
the figure helpers the report's other plots use."""

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


def plot_loss(rows: Iterable[dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss per step (raw and smoothed) and validation loss, from metrics.jsonl
    records. Returns False (and writes nothing) when there is nothing to plot."""
    rows = list(rows)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and "step" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not train and not val:
        return False
    fig, ax = pyplot().subplots(figsize=(7, 4))
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, alpha=0.35, label="train (per step)")
        ema, smooth = 0.0, []
        for i, x in enumerate(losses):  # debiased EMA, as in the live display
            ema = 0.9 * ema + 0.1 * x
            smooth.append(ema / (1 - 0.9 ** (i + 1)))
        ax.plot(steps, smooth, label="train (smoothed)")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss per answer token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)
    return True
