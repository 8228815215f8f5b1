"""Step 3's specification run on the embedded market data as of a news date: figures, windows, fallbacks.

The figures are checked against a computation done here from the database's own as-of reads (numpy
least squares on the estimation window), and every way a specification can fail — a series not
fetched, a window outside the data, too few observations, an event after the news date — is reported
in `spec_error` and replaced by the default, or, when even the default cannot run, in `error`.
"""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest

from deepmoney.config import QuantConfig
from deepmoney.marketdata.source import MarketData
from deepmoney.quant.compute import GAP, Available, compute
from deepmoney.quant.spec import SpecError, parse_spec, spec_schema

NEWS_DATE = dt.date(2011, 8, 8)  # a Monday: the first trading day after the US downgrade


@pytest.fixture(scope="module")
def market() -> MarketData:
    with MarketData.open() as md:
        yield md


def _available(market: MarketData, *ids: str) -> list[Available]:
    return [Available(market.info(i), (market.info(i).name_en,)) for i in ids]


def _log_returns(market: MarketData, series_id: str, count: int) -> dict[str, float]:
    points = market.fetch(series_id, NEWS_DATE, count).points
    return {b.period_end.isoformat(): float(np.log(b.value / a.value)) for a, b in itertools.pairwise(points)}


def test_an_event_study_matches_a_market_model_fitted_here(market: MarketData) -> None:
    spec = {"method": "event_study", "series": ["NASDAQ Composite index"], "estimation_window": 100, "before": 2}
    out = compute(spec, _available(market, "us.nasdaq.close", "us.sp500.close"), market, NEWS_DATE, QuantConfig())
    assert out.source == "model" and out.spec_error is None and out.error is None, out
    figures = out.figures
    assert figures["model"] == "market" and figures["event_day"] == "2011-08-08"
    assert all(s["last"] <= NEWS_DATE.isoformat() and s["after_news_date"] == 0 for s in out.series)
    # the same market model, fitted here on the as-of reads: the estimation window ends GAP returns before
    asset = _log_returns(market, "us.nasdaq.close", 400)
    index = _log_returns(market, "us.sp500.close", 400)
    days = sorted(set(asset) & set(index))
    day0 = days.index("2011-08-08")
    window = days[day0 - 2 : day0 + 1]
    estimation = days[day0 - 2 - GAP - 100 : day0 - 2 - GAP]
    assert (figures["estimation_first"], figures["estimation_last"]) == (estimation[0], estimation[-1])
    design = np.column_stack([np.ones(len(estimation)), [index[d] for d in estimation]])
    (alpha, beta), *_ = np.linalg.lstsq(design, np.array([asset[d] for d in estimation]), rcond=None)
    assert figures["alpha"] == pytest.approx(alpha, abs=1e-12) and figures["beta"] == pytest.approx(beta, rel=1e-9)
    abnormal = [asset[d] - alpha - beta * index[d] for d in window]
    assert [d for d, _ in figures["abnormal_returns"]] == window
    assert figures["car"] == pytest.approx(sum(abnormal), rel=1e-9)
    assert out.chart_png and out.to_dict()["figures"] == figures


def test_the_news_date_is_a_weekend_day_zero_is_the_last_close_before(market: MarketData) -> None:
    out = compute({"method": "event_study", "series": ["us.oil.wti.daily"]}, _available(market, "us.oil.wti.daily"),
                  market, dt.date(2011, 8, 6), QuantConfig())  # fmt: skip
    assert out.figures["event_day"] == "2011-08-05" and any("day 0 is the last one before" in n for n in out.notes)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (None, "has no analysis specification"),
        ({"method": "regression", "series": ["us.nasdaq.close"]}, "unknown method 'regression'"),
        ({"method": "granger", "series": ["us.nasdaq.close"]}, "granger reads 2 series"),
        ({"method": "correlation", "series": ["us.nasdaq.close", "LME copper"]}, "'LME copper' was not fetched"),
        ({"method": "event_study", "series": ["us.nasdaq.close"], "estimation_window": 5}, "estimation_window"),
        ({"method": "event_study", "series": ["us.nasdaq.close"], "event_date": "1995-01-03"}, "returns before"),
        ({"method": "event_study", "series": ["us.nasdaq.close"], "event_date": "2011-09-01"}, "after the news date"),
        ({"method": "var_irf", "series": ["us.nasdaq.close", "us.sp500.close"], "lags": 24}, "maxlags 24"),
        ({"method": "diff_means", "series": ["us.nasdaq.close"], "event_date": "2011-08-08", "before": 1},
         "each side needs at least 2"),
    ],
    ids=["none", "unknown-method", "series-count", "not-fetched", "schema-bound", "window-outside", "future-event",
         "too-few-observations", "diff-means-one-side"],
)  # fmt: skip
def test_an_unusable_specification_is_reported_and_replaced(market: MarketData, spec: object, needle: str) -> None:
    config = QuantConfig(history=60)
    out = compute(spec, _available(market, "us.nasdaq.close", "us.sp500.close"), market, NEWS_DATE, config)
    assert out.source == "default" and needle in out.spec_error, out.spec_error
    assert out.method == "event_study" and out.spec["series"] == ["us.nasdaq.close"] and out.error is None
    assert out.figures["event_last"] <= NEWS_DATE.isoformat()


def test_when_even_the_default_cannot_run_the_error_says_why(market: MarketData) -> None:
    quarterly = _available(market, "us.gdp.real", "us.unemployment")
    spec = {"method": "var_irf", "series": ["us.gdp.real", "us.unemployment"], "lags": 8}
    out = compute(spec, quarterly, market, dt.date(1963, 1, 15), QuantConfig())  # 14 quarters public by then
    assert out.source == "default" and "maxlags 8" in out.spec_error
    assert out.figures is None and out.error.startswith("the default event_study could not be run")
    assert "estimation window needs 40" in out.error
    nothing = compute(spec, [], market, NEWS_DATE, QuantConfig())
    assert nothing.figures is None and "no series were fetched" in nothing.error


def test_undated_news_studies_the_latest_data_and_says_so(market: MarketData) -> None:
    out = compute({"method": "event_study", "series": ["us.vix"]}, _available(market, "us.vix"), market, None,
                  QuantConfig())  # fmt: skip
    assert out.as_of is None and any("undated" in note for note in out.notes)
    last = min(market.fetch(i, None, 1).points[-1].period_end for i in ("us.vix", "us.sp500.close"))
    assert out.figures["event_day"] == last.isoformat()  # the last day the VIX and its market index share


def test_every_method_runs_on_the_database(market: MarketData) -> None:
    available = _available(market, "us.nasdaq.close", "us.sp500.close", "us.oil.wti.daily")
    ids = ["us.nasdaq.close", "us.sp500.close"]
    specs = [
        {"method": "ols_hac", "series": [*ids, "us.oil.wti.daily"]},
        {"method": "correlation", "series": ids, "window": 20},
        {"method": "granger", "series": ids, "lags": 2},
        {"method": "var_irf", "series": ids, "horizon": 4},
        {"method": "diff_means", "series": ["us.nasdaq.close"], "event_date": "2011-07-01"},
    ]
    for spec in specs:
        out = compute(spec, available, market, NEWS_DATE, QuantConfig())
        assert out.source == "model" and out.error is None and out.method == spec["method"], out.spec_error
        assert all(s["last"] <= NEWS_DATE.isoformat() for s in out.series)
        assert out.figures["nobs"] > 20


def test_the_schema_and_the_parser_agree() -> None:
    schema = spec_schema()
    assert set(schema["properties"]["method"]["enum"]) == {"event_study", "ols_hac", "correlation", "granger",
                                                           "var_irf", "diff_means"}  # fmt: skip
    assert parse_spec({"method": "granger", "series": ["a", "b"], "lags": 3}).lags == 3
    for bad in ({"method": "granger", "series": ["a", "b"], "extra": 1}, [], "event_study"):
        with pytest.raises(SpecError):
            parse_spec(bad)
