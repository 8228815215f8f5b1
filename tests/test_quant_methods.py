"""The quant toolbox gives the figures an independent hand computation gives, and refuses data that cannot support it.

Known answers are computed here with numpy (least squares, a Newey-West sandwich, residual sums of
squares, a Cholesky factor), not by calling the statsmodels functions the module calls.
"""

from __future__ import annotations

import io
import json
import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deepmoney.errors import UserError
from deepmoney.quant.chart import event_chart
from deepmoney.quant.methods import (
    QuantError,
    align,
    correlation,
    diff_means,
    event_study,
    granger,
    ols_hac,
    transform,
    var_irf,
)

DAYS = pd.bdate_range("2023-01-02", periods=301)
JUMP = 0.08
EVENT_POS = 270  # position of the event day among the 300 returns (the return dated DAYS[EVENT_POS + 1])


def _series(values: np.ndarray, name: str, index: pd.DatetimeIndex = DAYS) -> pd.Series:
    return pd.Series(values, index=index[: len(values)], name=name)


def _prices(jump: float = JUMP, seed: int = 7) -> tuple[pd.Series, pd.Series, np.ndarray, np.ndarray]:
    """Asset and market prices from log returns r_a = 0.001 + 1.5 r_m + e, with `jump` planted on the event day."""
    rng = np.random.default_rng(seed)
    r_m = rng.normal(0, 0.01, 300)
    r_a = 0.001 + 1.5 * r_m + rng.normal(0, 0.005, 300)
    r_a[EVENT_POS] += jump
    market = _series(100 * np.exp(np.concatenate([[0], np.cumsum(r_m)])), "us.equity.spx.daily")
    asset = _series(50 * np.exp(np.concatenate([[0], np.cumsum(r_a)])), "us.oil.wti.daily")
    return asset, market, r_a, r_m


EVENT_DATE = DAYS[EVENT_POS + 1].date()


def _estimation_slice(before: int = 5, gap: int = 5, window: int = 120) -> slice:
    end = EVENT_POS - before - gap
    return slice(end - window, end)


def test_event_study_market_model_recovers_beta_and_the_planted_jump() -> None:
    asset, market, r_a, r_m = _prices()
    result = event_study(asset, EVENT_DATE, market)
    est = _estimation_slice()
    design = np.column_stack([np.ones(120), r_m[est]])
    (alpha, beta), rss, *_ = np.linalg.lstsq(design, r_a[est], rcond=None)
    sigma = math.sqrt(rss[0] / (120 - 2))
    assert result.model == "market" and result.method == "event_study" and result.nobs == 120
    assert result.beta == pytest.approx(beta, rel=1e-9) and result.alpha == pytest.approx(alpha, abs=1e-12)
    assert result.beta == pytest.approx(1.5, abs=0.15)
    assert result.sigma == pytest.approx(sigma, rel=1e-9)
    assert result.estimation_first == DAYS[est.start + 1].date() and result.estimation_last == DAYS[est.stop].date()
    assert result.event_first == DAYS[EVENT_POS - 5 + 1].date() and result.event_last == EVENT_DATE
    assert result.event_day == EVENT_DATE
    assert len(result.abnormal_returns) == 6 and result.abnormal_returns[-1][0] == EVENT_DATE.isoformat()
    day0 = result.abnormal_returns[-1][1]
    assert day0 == pytest.approx(r_a[EVENT_POS] - alpha - beta * r_m[EVENT_POS], rel=1e-9)
    assert day0 == pytest.approx(JUMP, abs=4 * 0.005)
    se = sigma * math.sqrt(6)
    assert abs(result.car - JUMP) < 4 * se
    assert result.car_t == pytest.approx(result.car / se, rel=1e-9)
    assert result.car_t > 5 and result.car_p < 0.001


def test_event_study_without_a_jump_finds_nothing_abnormal() -> None:
    asset, market, _, _ = _prices(jump=0.0)
    result = event_study(asset, EVENT_DATE, market, after=2)
    assert abs(result.car_t) < 2 and result.car_p > 0.05
    assert len(result.abnormal_returns) == 8 and result.event_last == DAYS[EVENT_POS + 3].date()


def test_event_study_constant_mean_model() -> None:
    asset, _, r_a, _ = _prices()
    # A weekend event date: day 0 is the next trading day's return.
    saturday = date(2024, 1, 6)
    assert saturday.weekday() == 5
    pos = int(np.searchsorted(DAYS[1:], pd.Timestamp(saturday)))
    result = event_study(asset, saturday, estimation_window=60, gap=2, before=1)
    est = slice(pos - 1 - 2 - 60, pos - 1 - 2)
    assert result.model == "constant_mean" and result.beta is None and result.r2 is None
    assert result.event_day == DAYS[pos + 1].date()
    assert result.alpha == pytest.approx(r_a[est].mean(), rel=1e-9)
    assert result.sigma == pytest.approx(r_a[est].std(ddof=1), rel=1e-9)
    expected = r_a[pos - 1 : pos + 1] - r_a[est].mean()
    assert [v for _, v in result.abnormal_returns] == pytest.approx(expected, rel=1e-9)
    assert result.car_p == pytest.approx(2 * stats.t.sf(abs(result.car_t), 59), rel=1e-9)


def test_event_study_refuses_windows_outside_the_data() -> None:
    asset, market, _, _ = _prices()
    with pytest.raises(QuantError, match="before the event date"):
        event_study(asset, date(2030, 1, 1), market)
    with pytest.raises(QuantError, match=r"260 returns before the event window.*needs 400"):
        event_study(asset, EVENT_DATE, market, estimation_window=400)
    with pytest.raises(QuantError, match=r"needs 50 returns after"):
        event_study(asset, EVENT_DATE, market, after=50)
    with pytest.raises(QuantError, match="at least 10"):
        event_study(asset, EVENT_DATE, estimation_window=5)
    flat = _series(np.full(301, 10.0), "flat")
    with pytest.raises(QuantError, match="zero variance"):
        event_study(flat, EVENT_DATE)
    assert issubclass(QuantError, UserError)


def _newey_west(design: np.ndarray, resid: np.ndarray, lags: int) -> np.ndarray:
    """(X'X)^-1 S (X'X)^-1 with S the Bartlett-weighted sum of score autocovariances, no small-sample factor."""
    scores = design * resid[:, None]
    s = scores.T @ scores
    for lag in range(1, lags + 1):
        gamma = scores[lag:].T @ scores[:-lag]
        s += (1 - lag / (lags + 1)) * (gamma + gamma.T)
    bread = np.linalg.inv(design.T @ design)
    return bread @ s @ bread


def _regression_data(n: int = 300, seed: int = 3) -> tuple[pd.Series, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    noise = np.zeros(n)
    for t in range(1, n):  # autocorrelated errors, where HAC matters
        noise[t] = 0.6 * noise[t - 1] + rng.normal()
    index = pd.bdate_range("2020-01-01", periods=n)
    y = 1 + 2 * x1 - 0.5 * x2 + noise
    return pd.Series(y, index, name="y"), pd.Series(x1, index, name="x1"), pd.Series(x2, index, name="x2")


def test_ols_hac_matches_least_squares_and_a_hand_newey_west() -> None:
    y, x1, x2 = _regression_data()
    result = ols_hac(y, [x1, x2])
    design = np.column_stack([np.ones(300), x1, x2])
    beta, *_ = np.linalg.lstsq(design, y.to_numpy(), rcond=None)
    resid = y.to_numpy() - design @ beta
    lags = math.floor(4 * (300 / 100) ** (2 / 9))
    se = np.sqrt(np.diag(_newey_west(design, resid, lags)))
    r2 = 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))
    assert result.method == "ols_hac" and result.names == ["const", "x1", "x2"]
    assert result.maxlags == lags and result.nobs == 300
    assert result.coefficients == pytest.approx(beta, rel=1e-9)
    assert result.std_errors == pytest.approx(se, rel=1e-8)
    assert result.t_values == pytest.approx(beta / se, rel=1e-8)
    assert result.p_values == pytest.approx([math.erfc(abs(t) / math.sqrt(2)) for t in beta / se], rel=1e-6, abs=1e-300)
    assert result.r2 == pytest.approx(r2, rel=1e-9)
    assert result.r2_adj == pytest.approx(1 - (1 - r2) * 299 / 297, rel=1e-9)
    # maxlags=0 is White's heteroskedasticity-robust covariance (HC0)
    small = design[:, :2]
    resid0 = y.to_numpy() - small @ np.linalg.lstsq(small, y.to_numpy(), rcond=None)[0]
    hc0 = np.sqrt(np.diag(_newey_west(small, resid0, 0)))
    assert ols_hac(y, [x1], maxlags=0).std_errors == pytest.approx(hc0, rel=1e-8)


def test_ols_hac_refuses_a_singular_design_and_too_few_observations() -> None:
    y, x1, _ = _regression_data()
    with pytest.raises(QuantError, match="collinear"):
        ols_hac(y, [x1, (2 * x1).rename("x1_twice")])
    with pytest.raises(QuantError, match="collinear"):
        ols_hac(y, [pd.Series(1.0, index=y.index, name="one")])
    with pytest.raises(QuantError, match="4 aligned observations for 2 coefficients, needs at least 5"):
        ols_hac(y.iloc[:4], [x1])


def test_correlation_matches_corrcoef_and_the_last_window() -> None:
    y, x1, _ = _regression_data(n=200)
    result = correlation(y, x1, window=30)
    r = np.corrcoef(y, x1)[0, 1]
    t = r * math.sqrt(198 / (1 - r**2))
    assert result.r == pytest.approx(r, rel=1e-9) and result.nobs == 200
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), 198), rel=1e-6, abs=1e-300)
    assert result.rolling_last == pytest.approx(np.corrcoef(y.iloc[-30:], x1.iloc[-30:])[0, 1], rel=1e-9)
    assert len(result.rolling) == 200 - 29 and result.rolling[0][0] == y.index[29].date().isoformat()
    values = [v for _, v in result.rolling]
    assert result.rolling_min == min(values) and result.rolling_max == max(values)
    assert correlation(y, x1).rolling is None


def test_correlation_refuses_constant_and_short_series() -> None:
    y, x1, _ = _regression_data(n=50)
    with pytest.raises(QuantError, match="constant"):
        correlation(y, pd.Series(2.0, index=y.index, name="flat"))
    with pytest.raises(QuantError, match="needs at least 51"):
        correlation(y, x1, window=50)
    with pytest.raises(QuantError, match="needs at least 3"):
        correlation(y.iloc[:2], x1)


def _lead_lag(n: int = 300, seed: int = 11) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = np.concatenate([[0.0], 0.8 * x[:-1]]) + rng.normal(size=n)
    index = pd.bdate_range("2021-01-01", periods=n)
    return pd.Series(y, index, name="y"), pd.Series(x, index, name="x")


def _rss(design: np.ndarray, target: np.ndarray) -> float:
    resid = target - design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return float(resid @ resid)


def test_granger_finds_the_leading_series_and_its_f_matches_a_hand_f() -> None:
    y, x = _lead_lag()
    result = granger(y, x, maxlag=4)
    assert result.method == "granger" and result.nobs == 300 and [d["lag"] for d in result.lags] == [1, 2, 3, 4]
    assert result.chosen_lag >= 1 and result.p < 0.001
    assert result.f == result.lags[result.chosen_lag - 1]["f"]
    target, own, other = y.to_numpy()[1:], y.to_numpy()[:-1], x.to_numpy()[:-1]
    ones = np.ones(len(target))
    rss_r = _rss(np.column_stack([ones, own]), target)
    rss_u = _rss(np.column_stack([ones, own, other]), target)
    f = (rss_r - rss_u) / 1 / (rss_u / (len(target) - 3))
    assert result.lags[0]["f"] == pytest.approx(f, rel=1e-9)
    assert result.lags[0]["p"] == pytest.approx(stats.f.sf(f, 1, len(target) - 3), rel=1e-6, abs=1e-300)
    reverse = granger(x, y, maxlag=4)
    assert reverse.p > 0.01


def test_granger_refuses_too_few_observations_for_the_lags() -> None:
    y, x = _lead_lag(n=12)
    with pytest.raises(QuantError, match="12 aligned observations, maxlag 4 needs at least 15"):
        granger(y, x, maxlag=4)
    with pytest.raises(QuantError, match="constant"):
        granger(y, pd.Series(0.0, index=y.index, name="flat"), maxlag=1)


A = np.array([[0.5, 0.2], [-0.1, 0.3]])


def _var1(n: int = 2000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shocks = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 1.0]], size=n)
    values = np.zeros((n, 2))
    for t in range(1, n):
        values[t] = A @ values[t - 1] + shocks[t]
    return values


def test_var_irf_recovers_lag_one_and_the_cholesky_responses() -> None:
    values = _var1()
    index = pd.bdate_range("2015-01-01", periods=len(values))
    result = var_irf([pd.Series(values[:, 0], index, name="a"), pd.Series(values[:, 1], index, name="b")], horizon=5)
    assert result.method == "var_irf" and result.names == ["a", "b"] and result.lag == 1 and result.nobs == 2000
    design = np.column_stack([np.ones(len(values) - 1), values[:-1]])
    coef, *_ = np.linalg.lstsq(design, values[1:], rcond=None)
    resid = values[1:] - design @ coef
    sigma = resid.T @ resid / (len(resid) - 3)  # statsmodels' sigma_u: degrees-of-freedom adjusted
    chol = np.linalg.cholesky(sigma)
    a_hat = coef[1:].T
    irf = np.array(result.irf)
    assert irf.shape == (6, 2, 2)
    assert irf[0] == pytest.approx(chol, rel=1e-8, abs=1e-12)
    assert irf[1] == pytest.approx(a_hat @ chol, rel=1e-8, abs=1e-12)
    assert irf[2] == pytest.approx(a_hat @ a_hat @ chol, rel=1e-8, abs=1e-12)
    assert a_hat == pytest.approx(A, abs=0.06)
    assert math.isfinite(result.aic)


def test_var_irf_refuses_one_series_short_data_and_a_singular_system() -> None:
    values = _var1(n=200)
    index = pd.bdate_range("2015-01-01", periods=len(values))
    a, b = pd.Series(values[:, 0], index, name="a"), pd.Series(values[:, 1], index, name="b")
    with pytest.raises(QuantError, match="at least 2 series"):
        var_irf([a])
    with pytest.raises(QuantError, match="20 aligned observations, maxlags 4 with 2 series needs at least 22"):
        var_irf([a.iloc[:20], b.iloc[:20]])
    with pytest.raises(QuantError, match=r"singular|not finite"):
        var_irf([a, b, (a + b).rename("c")])


def test_diff_means_matches_a_hand_welch_test() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(1.0, 0.5, 40), rng.normal(1.6, 1.0, 40)])
    series = _series(values, "cn.cpi.yoy")
    result = diff_means(series, DAYS[40].date(), before=30, after=25)
    pre, post = values[10:40], values[40:65]
    v1, v2 = pre.var(ddof=1) / 30, post.var(ddof=1) / 25
    t = (post.mean() - pre.mean()) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / 29 + v2**2 / 24)
    assert result.mean_before == pytest.approx(pre.mean()) and result.mean_after == pytest.approx(post.mean())
    assert result.difference == pytest.approx(post.mean() - pre.mean(), rel=1e-12)
    assert result.t == pytest.approx(t, rel=1e-9)
    assert result.p == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-6)
    assert (result.n_before, result.n_after, result.nobs) == (30, 25, 55)
    with pytest.raises(QuantError, match="1 observations before"):
        diff_means(series, DAYS[1].date())


def test_transform_and_align() -> None:
    values = np.array([10.0, 11.0, 10.5, np.nan, 12.0])
    series = _series(values, "s")
    clean = values[~np.isnan(values)]
    assert transform(series, "log_return").to_numpy() == pytest.approx(np.diff(np.log(clean)), rel=1e-12)
    assert transform(series, "diff").to_numpy() == pytest.approx(np.diff(clean))
    assert transform(series, "pct_change").to_numpy() == pytest.approx(clean[1:] / clean[:-1] - 1)
    assert len(transform(series, "level")) == 4
    with pytest.raises(QuantError, match="not positive"):
        transform(_series(np.array([1.0, 0.0, 2.0]), "z"), "log_return")
    with pytest.raises(QuantError, match="unknown transform"):
        transform(series, "zscore")  # type: ignore[arg-type]
    other = pd.Series([1.0, np.nan, 3.0], index=DAYS[[1, 2, 4]], name="o")
    frame = align(series, other)
    assert list(frame.columns) == ["s", "o"] and list(frame.index) == [DAYS[1], DAYS[4]]
    assert list(align(series, series).columns) == ["s", "s_2"]


def test_chart_is_a_decodable_png_and_refuses_nothing_to_draw() -> None:
    import matplotlib.image

    asset, market, _, _ = _prices()
    result = event_study(asset, EVENT_DATE, market)
    window = slice(DAYS[140], DAYS[-1])
    png = event_chart({asset.name: asset[window], market.name: market[window]}, EVENT_DATE, "WTI around the event",
                      estimation=(result.estimation_first, result.estimation_last),
                      event=(result.event_first, result.event_last))  # fmt: skip
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(png))
    assert image.shape[0] > 200 and image.shape[1] > 200 and image[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="no series"):
        event_chart({}, EVENT_DATE, "empty")


def test_every_result_is_plain_json() -> None:
    asset, market, _, _ = _prices()
    y, x1, x2 = _regression_data(n=120)
    index = pd.bdate_range("2015-01-01", periods=300)
    values = _var1(n=300)
    results = [
        event_study(asset, EVENT_DATE, market),
        event_study(asset, EVENT_DATE),
        ols_hac(y, [x1, x2]),
        correlation(y, x1, window=20),
        correlation(y, x1),
        granger(y, x1, maxlag=2),
        var_irf([pd.Series(values[:, 0], index, name="a"), pd.Series(values[:, 1], index, name="b")], horizon=3),
        diff_means(y, y.index[60].date()),
    ]
    for result in results:
        payload = result.to_dict()
        assert payload["method"] == result.method and isinstance(payload["nobs"], int)
        assert json.loads(json.dumps(payload, allow_nan=False)) == payload  # no tuples, numpy types or NaN left
    assert results[0].to_dict()["event_day"] == EVENT_DATE.isoformat()
    assert results[1].to_dict()["beta"] is None
