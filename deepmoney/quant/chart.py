"""One PNG of the series around an event: each rebased to 100, the event day marked, the windows shaded.

Readable by default, like deepmoney/charts.py: the event line carries its date, every series its last
value, the windows are named in the legend, the 100 baseline is drawn, and the date axis is concise.
"""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import pandas as pd

DPI = 100
ESTIMATION, EVENT = "#bbbbbb", "#ffbf80"  # grey for the quiet window, orange for the event window


def _rebased(name: str, series: pd.Series) -> pd.Series:
    """The series divided by its first value, times 100 (refused when that value cannot be a base)."""
    values = series.dropna().astype(float)
    if values.empty:
        raise ValueError(f"series {name} has no values to chart; pass a series with data in the plotted range")
    base = float(values.iloc[0])
    if base <= 0:
        raise ValueError(f"series {name} starts at {base:g}, which cannot be rebased to 100; chart a positive level")
    return values / base * 100


def _window(ax: Any, span: tuple[date, date], color: str, label: str) -> None:
    first, last = pd.Timestamp(span[0]), pd.Timestamp(span[1])
    ax.axvspan(first, last, color=color, alpha=0.35, linewidth=0,
               label=f"{label} {first.date().isoformat()} – {last.date().isoformat()}")  # fmt: skip


def _label_ends(ax: Any, ends: list[tuple[pd.Timestamp, float, str]], dpi: float) -> None:
    """Write each series' last value beside its end, nudged apart vertically so that close values stay legible."""
    import matplotlib.dates as mdates

    ax.get_ylim()  # settles autoscaling, so transData maps to where the points will be drawn
    gap = 10 * dpi / 72  # pixels between label centres: 10 points, an 8-point label and a little space
    placed: list[float] = []
    for x, y, color in sorted(ends, key=lambda end: end[1]):
        target = ax.transData.transform((mdates.date2num(x), y))[1]
        at = max(target, placed[-1] + gap) if placed else target
        placed.append(at)
        ax.annotate(f"{y:.1f}", (x, y), xytext=(4, (at - target) * 72 / dpi), textcoords="offset points",
                    va="center", fontsize=8, color=color)  # fmt: skip


def event_chart(series: dict[str, pd.Series], event_date: date, title: str, estimation: tuple[date, date] | None = None,
                event: tuple[date, date] | None = None) -> bytes:  # fmt: skip
    """The chart as PNG bytes: `series` (name -> levels on a DatetimeIndex) rebased to 100 at their first point.

    `estimation` and `event` are (first, last) dates of the windows to shade, as an event study reports them.
    """
    if not series:
        raise ValueError("no series to chart; pass at least one series")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rebased = {name: _rebased(name, s) for name, s in series.items()}
    figure, ax = plt.subplots(figsize=(9, 5))
    try:
        if estimation is not None:
            _window(ax, estimation, ESTIMATION, "estimation window")
        if event is not None:
            _window(ax, event, EVENT, "event window")
        ends = []
        for name, values in rebased.items():
            (line,) = ax.plot(values.index, values.to_numpy(), linewidth=1.4, label=name)
            ends.append((values.index[-1], float(values.iloc[-1]), line.get_color()))
        day = pd.Timestamp(event_date)
        ax.axvline(day, color="black", linestyle="--", linewidth=1, label=f"event {day.date().isoformat()}")
        # The label sits at the top of the axes whatever the data's scale (x in data, y in axes coordinates).
        ax.text(day, 1.0, f" {day.date().isoformat()}", transform=ax.get_xaxis_transform(), va="top", ha="left",
                fontsize=8)  # fmt: skip
        ax.axhline(100, color="black", linewidth=0.6, alpha=0.6)  # the common base, so gains and losses read
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("date")
        ax.set_ylabel("index, first point = 100")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        figure.tight_layout()
        _label_ends(ax, ends, DPI)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(figure)
    return buffer.getvalue()
