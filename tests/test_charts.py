"""The evaluation and promotion charts are readable: labelled values, visible zeros, two colours, whole steps."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.colors import to_hex

from deepmoney.charts import CANDIDATE, CHAMPION, metrics_chart, metrics_figure

METRICS = {"perplexity": 812.3, "qa_rouge_l": 0.12, "qa_token_f1": 0.0, "chain_pass_rate": 0.5}
CHAMPION_METRICS = {"perplexity": 900.1, "qa_rouge_l": 0.1, "qa_token_f1": 0.05, "chain_pass_rate": 0.25}
CURVE = [(1, 9.0), (10, 7.5), (20, 6.1), (30, 5.5)]


def _bar_colors(ax) -> set[str]:
    return {to_hex(patch.get_facecolor()) for patch in ax.patches}


def test_every_value_is_written_and_a_zero_is_visible() -> None:
    figure = metrics_figure(METRICS, loss_curve=CURVE)
    scores, ppl, _ = figure.axes
    labels = [t.get_text() for t in scores.texts]
    assert labels == [format(METRICS[k], ".2f") for k in sorted(k for k in METRICS if k != "perplexity")]
    zero = next(p for p, name in zip(scores.patches, sorted(k for k in METRICS if k != "perplexity"), strict=True)
                if name == "qa_token_f1")  # fmt: skip
    marks = [line for line in scores.lines if list(line.get_ydata()) == [0, 0] and line.get_linewidth() >= 2]
    assert any(line.get_xdata()[0] == zero.get_x() for line in marks)  # the zero bar is drawn at the baseline
    assert [t.get_text() for t in ppl.texts] == ["812.3"]
    plt.close(figure)


def test_candidate_and_champion_have_their_own_colours_in_every_panel() -> None:
    figure = metrics_figure(METRICS, CHAMPION_METRICS, CURVE)
    scores, ppl, _ = figure.axes
    for ax in (scores, ppl):
        assert _bar_colors(ax) == {CANDIDATE, CHAMPION}
    assert [t.get_text() for t in ppl.texts] == ["812.3", "900.1"]
    plt.close(figure)


def test_training_steps_are_whole_numbers(tmp_path: Path) -> None:
    figure = metrics_figure({"perplexity": 10.0}, loss_curve=[(1, 3.0), (2, 2.5), (3, 2.2)])
    loss = figure.axes[-1]
    figure.canvas.draw()
    ticks = [t for t in loss.get_xticks() if loss.get_xlim()[0] <= t <= loss.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(figure)
    path = metrics_chart(tmp_path / "e.png", METRICS, CHAMPION_METRICS, CURVE)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
