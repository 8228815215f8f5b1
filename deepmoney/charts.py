"""One PNG that says how a model did: its metrics (beside the champion's, when known) and its loss curve.

Readable by default: every bar carries its value, a zero is drawn as a visible outline at the
baseline (not as nothing), candidate and champion have their own colours in every panel, and
steps are whole numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Scores on a 0..1 scale share one panel; perplexity and loss have their own scales.
_SCORE_PREFIXES = ("qa_", "chain_", "bench_")
CANDIDATE, CHAMPION = "#1f77b4", "#ff7f0e"  # matplotlib's first two colours, named so both panels agree


def _bars(ax: Any, positions: list[float], values: list[float], width: float, color: str, label: str,
          fmt: str) -> None:  # fmt: skip
    """Bars with their values written on them; zero-height bars still show as an outline."""
    bars = ax.bar(positions, values, width, color=color, edgecolor=color, linewidth=1.2, label=label)
    for bar, value in zip(bars, values, strict=True):
        if value == 0:  # a bar of height 0 is invisible; mark where it is
            ax.plot([bar.get_x(), bar.get_x() + bar.get_width()], [0, 0], color=color, linewidth=3,
                    solid_capstyle="butt")  # fmt: skip
        ax.annotate(format(value, fmt), (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)  # fmt: skip


def metrics_chart(path: Path, metrics: dict[str, float], champion: dict[str, float] | None = None,
                  loss_curve: list[tuple[int, float]] | None = None, title: str = "evaluation") -> Path:  # fmt: skip
    """Write the chart to `path` (PNG) and return it."""
    import matplotlib.pyplot as plt

    figure = metrics_figure(metrics, champion, loss_curve, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    tmp.replace(path)
    return path


def metrics_figure(metrics: dict[str, float], champion: dict[str, float] | None = None,
                   loss_curve: list[tuple[int, float]] | None = None, title: str = "evaluation") -> Any:  # fmt: skip
    """The chart as a matplotlib Figure: scores, perplexity and the loss curve, each panel when there is data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scores = sorted(k for k, v in metrics.items() if k.startswith(_SCORE_PREFIXES) and 0.0 <= v <= 1.0
                    and not k.endswith(("_count", "_tokens")))  # fmt: skip
    panels = 1 + bool(loss_curve) + ("perplexity" in metrics)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels + 3, 4.8), squeeze=False)
    row = list(axes[0])
    ax = row.pop(0)
    width = 0.4 if champion else 0.8
    positions = list(range(len(scores)))
    shift = width / 2 if champion else 0.0
    _bars(ax, [p - shift for p in positions], [metrics[k] for k in scores], width, CANDIDATE, "candidate", ".2f")
    if champion:
        _bars(ax, [p + shift for p in positions], [champion.get(k, 0.0) for k in scores], width, CHAMPION,
              "champion", ".2f")  # fmt: skip
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(positions, scores, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)  # room for the value labels above a score of 1
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title("scores (higher is better)")
    if not scores:
        ax.text(0.5, 0.5, "no scores measured", ha="center", va="center", transform=ax.transAxes)
    if "perplexity" in metrics:
        ax = row.pop(0)
        entries = [("candidate", metrics["perplexity"], CANDIDATE)]
        if champion and "perplexity" in champion:
            entries.append(("champion", champion["perplexity"], CHAMPION))
        for i, (name, value, color) in enumerate(entries):
            _bars(ax, [i], [value], 0.6, color, name, ".4g")
        ax.set_xticks(list(range(len(entries))), [name for name, _, _ in entries])
        ax.set_ylim(0, max(v for _, v, _ in entries) * 1.15 or 1.0)
        ax.set_title("held-out perplexity (lower is better)")
    if loss_curve:
        ax = row.pop(0)
        steps, losses = [s for s, _ in loss_curve], [v for _, v in loss_curve]
        ax.plot(steps, losses, marker="o", markersize=3, color=CANDIDATE)
        ax.annotate(f"{losses[0]:.3f}", (steps[0], losses[0]), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.annotate(f"{losses[-1]:.3f}", (steps[-1], losses[-1]), xytext=(-4, 6), textcoords="offset points",
                    ha="right", fontsize=7)  # fmt: skip
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
