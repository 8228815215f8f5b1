"""Event studies, regressions with HAC errors, correlation, Granger tests, VAR impulse responses, mean shifts.

Inputs are `pandas.Series` of float on a sorted, unique `DatetimeIndex`, named by their series id. Every
method returns a frozen dataclass whose `to_dict()` is JSON-ready (dates as ISO strings, NaN and inf as
None), and raises `QuantError` — one line: what is wrong and what would fix it — when the data cannot
support the specification. statsmodels and scipy are imported inside the functions (statsmodels is slow
to import).
"""

from __future__ import annotations

import dataclasses
import math
from datetime import date, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from deepmoney.errors import UserError

Transform = Literal["level", "diff", "pct_change", "log_return"]
_TRANSFORMS = ("level", "diff", "pct_change", "log_return")
_TINY = 1e-12  # below any real return or residual scale: treated as exactly zero variance


class QuantError(UserError):
    """A specification the data cannot support: too few observations, a window outside the data, a degenerate series."""


def _jsonable(value: Any) -> Any:
    """Plain Python values for json.dumps(allow_nan=False): dates as ISO strings, NaN/inf as None, no numpy types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):  # also pandas.Timestamp: results carry days, not instants
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


class _Result:
    """What every result shares: `to_dict()`."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values (plain floats/ints/str/lists; dates ISO; NaN and inf as None)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class EventStudy(_Result):
    """Abnormal returns around an event against a market model or a constant mean, and their cumulative sum."""

    method: str
    model: str  # "market" | "constant_mean"
    alpha: float
    beta: float | None
    r2: float | None
    sigma: float
    nobs: int  # returns in the estimation window
    estimation_first: date
    estimation_last: date
    event_first: date
    event_last: date
    event_day: date
    abnormal_returns: list[tuple[str, float]]
    car: float
    car_t: float
    car_p: float


@dataclasses.dataclass(frozen=True, slots=True)
class OLSResult(_Result):
    """OLS coefficients with Newey-West (HAC) standard errors; lists are aligned with `names`."""

    method: str
    names: list[str]
    coefficients: list[float]
    std_errors: list[float]
    t_values: list[float]
    p_values: list[float]
    r2: float
    r2_adj: float
    nobs: int
    maxlags: int


@dataclasses.dataclass(frozen=True, slots=True)
class CorrelationResult(_Result):
    """Pearson correlation of two aligned series, with the rolling correlation when a window was asked for."""

    method: str
    r: float
    p: float
    nobs: int
    window: int | None
    rolling: list[tuple[str, float]] | None
    rolling_last: float | None
    rolling_min: float | None
    rolling_max: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class GrangerResult(_Result):
    """Whether `cause` Granger-causes `effect`: the ssr F test per lag and at the lag a VAR's AIC chooses."""

    method: str
    effect: str
    cause: str
    lags: list[dict[str, int | float]]  # {"lag", "f", "p"} for lags 1..maxlag
    chosen_lag: int
    f: float
    p: float
    nobs: int


@dataclasses.dataclass(frozen=True, slots=True)
class VARResult(_Result):
    """A VAR at the AIC-chosen lag and its orthogonalised impulse responses, irf[h][response][impulse]."""

    method: str
    names: list[str]
    lag: int
    aic: float
    horizon: int
    irf: list[list[list[float]]]
    nobs: int


@dataclasses.dataclass(frozen=True, slots=True)
class DiffMeansResult(_Result):
    """Mean before versus mean after a date, with Welch's t test."""

    method: str
    mean_before: float
    mean_after: float
    difference: float
    t: float
    p: float
    n_before: int
    n_after: int
    nobs: int


def _name(series: pd.Series, default: str = "series") -> str:
    return str(series.name) if series.name is not None else default


def _iso(stamp: pd.Timestamp) -> str:
    return stamp.date().isoformat()


def _checked(series: pd.Series) -> pd.Series:
    """The series as float, after checking the index convention (a sorted, unique DatetimeIndex)."""
    name = _name(series)
    if not isinstance(series.index, pd.DatetimeIndex):
        raise QuantError(f"{name}: index is {type(series.index).__name__}, not dates; index the series by date")
    if not series.index.is_monotonic_increasing or not series.index.is_unique:
        raise QuantError(f"{name}: dates are not sorted and unique; sort the series and drop duplicate dates")
    try:
        return series.astype(float)
    except (TypeError, ValueError) as exc:
        raise QuantError(f"{name}: values are not numbers ({exc}); pass a numeric series") from None


def transform(series: pd.Series, how: Transform) -> pd.Series:
    """The series as a level, first difference, percent change or log return, with NaNs dropped."""
    if how not in _TRANSFORMS:
        raise QuantError(f"unknown transform {how!r}; use one of {', '.join(_TRANSFORMS)}")
    values = _checked(series).dropna()
    name = _name(series)
    if how == "level":
        return values
    if how == "diff":
        return values.diff().dropna()
    if how == "pct_change":
        zeros = values.index[values.iloc[:-1].eq(0).to_numpy().nonzero()[0]]
        if len(zeros):
            raise QuantError(f"pct_change of {name}: value 0 on {_iso(zeros[0])}, so the next change is undefined; "
                             "use how='diff'")  # fmt: skip
        return values.pct_change(fill_method=None).dropna()
    bad = values[values <= 0]
    if len(bad):
        raise QuantError(f"log_return of {name}: value {bad.iloc[0]:g} on {_iso(bad.index[0])} is not positive; "
                         "use how='diff' for series that can be zero or negative")  # fmt: skip
    return np.log(values).diff().dropna()


def align(*series: pd.Series) -> pd.DataFrame:
    """The series side by side on the dates they share (inner join), rows with a NaN dropped.

    Columns are the series names; a missing or repeated name gets a suffix (`_2`, `_3`, ...).
    """
    columns: list[str] = []
    for i, s in enumerate(series):
        base = _name(s, f"series{i + 1}")
        name, n = base, 1
        while name in columns:
            n += 1
            name = f"{base}_{n}"
        columns.append(name)
    checked = [_checked(s).rename(c) for s, c in zip(series, columns, strict=True)]
    if not checked:
        return pd.DataFrame()
    return pd.concat(checked, axis=1, join="inner").dropna()


def event_study(asset: pd.Series, event_date: date, market: pd.Series | None = None, estimation_window: int = 120,
                gap: int = 5, before: int = 5, after: int = 0) -> EventStudy:  # fmt: skip
    """Abnormal log returns of `asset` around `event_date` and their sum (CAR) with its t statistic.

    Day 0 is the first return dated on or after `event_date`; the event window is the `before` returns
    before it, day 0 and the `after` returns after it. The model — the market model by OLS when `market`
    is given, else the constant mean — is estimated on the `estimation_window` returns that end `gap`
    returns before the event window.
    """
    from scipy import stats

    name = _name(asset)
    where = f"event study of {name}"
    if estimation_window < 10:
        raise QuantError(f"{where}: estimation_window is {estimation_window}, the model needs at least 10 returns; "
                         "raise estimation_window")  # fmt: skip
    if min(gap, before, after) < 0:
        raise QuantError(f"{where}: gap, before and after must be >= 0 (got {gap}, {before}, {after})")
    if market is None:
        r_a = transform(asset, "log_return")
        r_m = None
    else:
        # Align the levels first so that both returns span the same interval on every date.
        levels = align(asset, market)
        r_a = transform(levels.iloc[:, 0], "log_return")
        r_m = transform(levels.iloc[:, 1], "log_return")
    if r_a.empty:
        raise QuantError(f"{where}: fewer than 2 prices (after aligning with the market); fetch more data")
    event = pd.Timestamp(event_date)
    day0 = int(r_a.index.searchsorted(event, side="left"))
    if day0 >= len(r_a):
        raise QuantError(f"{where}: the returns end {_iso(r_a.index[-1])}, before the event date "
                         f"{event.date().isoformat()}; fetch data that covers the event")  # fmt: skip
    if day0 + after >= len(r_a):
        raise QuantError(f"{where}: the event window needs {after} returns after {_iso(r_a.index[day0])}, the data "
                         f"has {len(r_a) - 1 - day0}; lower after or fetch data past the event")  # fmt: skip
    first = day0 - before
    est_end = first - gap  # exclusive
    available = max(est_end, 0)
    if available < estimation_window:
        raise QuantError(f"{where}: {available} returns before the event window (and its gap of {gap}), the "
                         f"estimation window needs {estimation_window}; shorten estimation_window or pick a series "
                         "with more history")  # fmt: skip
    est = slice(est_end - estimation_window, est_end)
    window = slice(first, day0 + after + 1)
    y = r_a.iloc[est].to_numpy()
    if r_m is None:
        params, alpha, beta, r2 = 1, float(y.mean()), None, None
        resid = y - alpha
        expected = np.full(window.stop - window.start, alpha)
    else:
        x = r_m.iloc[est].to_numpy()
        if x.std() < _TINY:
            raise QuantError(f"{where}: market returns are constant in the estimation window, so beta is undefined; "
                             "use another market series or drop market")  # fmt: skip
        design = np.column_stack([np.ones_like(x), x])
        (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
        alpha, beta, params = float(alpha), float(beta), 2
        resid = y - design @ np.array([alpha, beta])
        r2 = float(1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))) if y.std() > 0 else None
        expected = alpha + beta * r_m.iloc[window].to_numpy()
    df = estimation_window - params
    sigma = float(np.sqrt(resid @ resid / df))
    if sigma < _TINY:
        raise QuantError(f"{where}: the estimation-window residuals have zero variance, so abnormal returns cannot "
                         "be scaled; pick a traded series or another estimation window")  # fmt: skip
    abnormal = r_a.iloc[window].to_numpy() - expected
    dates = r_a.index[window]
    car = float(abnormal.sum())
    se = sigma * math.sqrt(len(abnormal))
    t = car / se
    return EventStudy(method="event_study", model="constant_mean" if r_m is None else "market", alpha=alpha,
                      beta=beta, r2=r2, sigma=sigma, nobs=estimation_window,
                      estimation_first=r_a.index[est.start].date(), estimation_last=r_a.index[est.stop - 1].date(),
                      event_first=dates[0].date(), event_last=dates[-1].date(), event_day=r_a.index[day0].date(),
                      abnormal_returns=[(_iso(d), float(v)) for d, v in zip(dates, abnormal, strict=True)],
                      car=car, car_t=float(t), car_p=float(2 * stats.t.sf(abs(t), df)))  # fmt: skip


def _full_rank(design: np.ndarray, names: list[str], where: str) -> None:
    """Refuse a design matrix whose columns are collinear (a constant regressor, duplicated regressors)."""
    rank = np.linalg.matrix_rank(design)
    if rank < design.shape[1]:
        raise QuantError(f"{where}: the regressors {', '.join(names)} are collinear (rank {rank} of "
                         f"{design.shape[1]}); drop a constant or duplicated regressor")  # fmt: skip


def ols_hac(y: pd.Series, x: list[pd.Series], maxlags: int | None = None) -> OLSResult:
    """OLS of `y` on a constant and `x` (aligned on dates) with Newey-West standard errors.

    `maxlags` defaults to floor(4 (n/100)^(2/9)). The covariance is statsmodels' HAC without small-sample
    correction (Bartlett weights), and p-values are from the normal distribution (statsmodels' default for HAC).
    """
    import statsmodels.api as sm

    where = f"regression of {_name(y)}"
    if not x:
        raise QuantError(f"{where}: no regressors; pass at least one series in x")
    data = align(y, *x)
    n, k = len(data), len(x) + 1
    names = ["const", *data.columns[1:]]
    if n < k + 3:
        raise QuantError(f"{where}: {n} aligned observations for {k} coefficients, needs at least {k + 3}; "
                         "use fewer regressors or a longer sample")  # fmt: skip
    endog = data.iloc[:, 0].to_numpy()
    if endog.std() < _TINY:
        raise QuantError(f"{where}: the dependent series is constant over the sample; nothing to explain")
    design = np.column_stack([np.ones(n), data.iloc[:, 1:].to_numpy()])
    _full_rank(design, names, where)
    lags = math.floor(4 * (n / 100) ** (2 / 9)) if maxlags is None else maxlags
    if not 0 <= lags < n:
        raise QuantError(f"{where}: maxlags {lags} is outside 0..{n - 1}; pass a smaller maxlags")
    try:
        fit = sm.OLS(endog, design).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise QuantError(f"{where}: the regression cannot be estimated ({exc}); check the regressors") from None
    return OLSResult(method="ols_hac", names=names, coefficients=[float(v) for v in fit.params],
                     std_errors=[float(v) for v in fit.bse], t_values=[float(v) for v in fit.tvalues],
                     p_values=[float(v) for v in fit.pvalues], r2=float(fit.rsquared), r2_adj=float(fit.rsquared_adj),
                     nobs=n, maxlags=lags)  # fmt: skip


def _refuse_constant(data: pd.DataFrame, where: str) -> None:
    for column in data.columns:
        if data[column].std() < _TINY:
            raise QuantError(f"{where}: {column} is constant over the aligned sample; use a series that varies "
                             "(or its changes)")  # fmt: skip


def correlation(a: pd.Series, b: pd.Series, window: int | None = None) -> CorrelationResult:
    """Pearson correlation of `a` and `b` on their shared dates, with its two-sided p-value.

    With `window`, also the rolling correlation over `window` observations (its dates, last, min and max).
    """
    from scipy import stats

    where = f"correlation of {_name(a)} and {_name(b)}"
    data = align(a, b)
    n = len(data)
    need = 3 if window is None else max(3, window + 1)
    if window is not None and window < 3:
        raise QuantError(f"{where}: window {window} is too short for a correlation; use window >= 3")
    if n < need:
        raise QuantError(f"{where}: {n} aligned observations, needs at least {need}; use a longer sample"
                         + ("" if window is None else " or a shorter window"))  # fmt: skip
    _refuse_constant(data, where)
    r, p = stats.pearsonr(data.iloc[:, 0].to_numpy(), data.iloc[:, 1].to_numpy())
    rolling = last = low = high = None
    if window is not None:
        values = data.iloc[:, 0].rolling(window).corr(data.iloc[:, 1])
        values = values[np.isfinite(values)]  # windows over a flat stretch have no correlation
        if values.empty:
            raise QuantError(f"{where}: every {window}-observation window has a constant series; use a longer window")
        rolling = [(_iso(d), float(v)) for d, v in values.items()]
        last, low, high = float(values.iloc[-1]), float(values.min()), float(values.max())
    return CorrelationResult(method="correlation", r=float(r), p=float(p), nobs=n, window=window, rolling=rolling,
                             rolling_last=last, rolling_min=low, rolling_max=high)  # fmt: skip


def granger(effect: pd.Series, cause: pd.Series, maxlag: int = 4) -> GrangerResult:
    """Whether `cause` Granger-causes `effect`: the ssr F test for lags 1..maxlag, and at the lag chosen by AIC.

    The lag is chosen by a VAR of the two series (at least 1). `nobs` is the number of aligned observations.
    """
    from statsmodels.tools.sm_exceptions import InfeasibleTestError
    from statsmodels.tsa.api import VAR
    from statsmodels.tsa.stattools import grangercausalitytests

    where = f"granger test of {_name(effect)} by {_name(cause)}"
    if maxlag < 1:
        raise QuantError(f"{where}: maxlag is {maxlag}; use maxlag >= 1")
    data = align(effect, cause)
    n = len(data)
    need = 3 * maxlag + 3  # grangercausalitytests needs > 3 maxlag + 1; the VAR's lag selection one more
    if n < need:
        raise QuantError(f"{where}: {n} aligned observations, maxlag {maxlag} needs at least {need}; "
                         "lower maxlag or use a longer sample")  # fmt: skip
    _refuse_constant(data, where)
    values = data.to_numpy()  # plain arrays: a DatetimeIndex without a frequency only makes statsmodels warn
    try:
        tests = grangercausalitytests(values, maxlag)
        chosen = max(1, int(VAR(values).select_order(maxlag).aic))
    except (np.linalg.LinAlgError, ValueError, InfeasibleTestError) as exc:
        raise QuantError(f"{where}: the test cannot be computed on this data ({exc}); check the series") from None
    lags = [{"lag": lag, "f": float(tests[lag][0]["ssr_ftest"][0]), "p": float(tests[lag][0]["ssr_ftest"][1])}
            for lag in range(1, maxlag + 1)]  # fmt: skip
    at = lags[chosen - 1]
    return GrangerResult(method="granger", effect=data.columns[0], cause=data.columns[1], lags=lags,
                         chosen_lag=chosen, f=at["f"], p=at["p"], nobs=n)  # fmt: skip


def var_irf(data: list[pd.Series], maxlags: int = 4, horizon: int = 10) -> VARResult:
    """A VAR of the aligned series at the lag AIC chooses (at least 1) and its orthogonalised impulse responses.

    The responses are Cholesky-orthogonalised in the order of `data`: irf[h][response][impulse] for h = 0..horizon.
    `nobs` is the number of aligned observations.
    """
    from statsmodels.tsa.api import VAR

    if len(data) < 2:
        raise QuantError(f"a VAR needs at least 2 series, got {len(data)}; add a series")
    frame = align(*data)
    names = list(frame.columns)
    where = f"VAR of {', '.join(names)}"
    if maxlags < 1 or horizon < 1:
        raise QuantError(f"{where}: maxlags and horizon must be >= 1 (got {maxlags}, {horizon})")
    n, k = len(frame), len(names)
    # statsmodels' select_order refuses maxlags > (n - k - 1) / (k + 1); the margin keeps ~10 residual dof.
    need = maxlags * (k + 1) + max(10, k + 1)
    if n < need:
        raise QuantError(f"{where}: {n} aligned observations, maxlags {maxlags} with {k} series needs at least "
                         f"{need}; lower maxlags or use a longer sample")  # fmt: skip
    _refuse_constant(frame, where)
    values = frame.to_numpy()
    try:
        model = VAR(values)
        lag = max(1, int(model.select_order(maxlags).aic))
        fitted = model.fit(lag)
        irf = fitted.irf(horizon).orth_irfs
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise QuantError(f"{where}: the system is singular ({exc}); drop a series that duplicates another") from None
    if not np.isfinite(irf).all():
        raise QuantError(f"{where}: the impulse responses are not finite (a singular system); drop a duplicated series")
    return VARResult(method="var_irf", names=names, lag=lag, aic=float(fitted.aic), horizon=horizon,
                     irf=irf.tolist(), nobs=n)  # fmt: skip


def diff_means(series: pd.Series, event_date: date, before: int = 20, after: int = 20) -> DiffMeansResult:
    """The mean of the last `before` observations dated before `event_date` against the first `after` on or after it.

    The test is Welch's t test (unequal variances); `difference` is after minus before.
    """
    from scipy import stats

    values = _checked(series).dropna()
    where = f"difference in means of {_name(series)}"
    event = pd.Timestamp(event_date)
    cut = int(values.index.searchsorted(event, side="left"))
    pre = values.iloc[max(cut - before, 0) : cut].to_numpy()
    post = values.iloc[cut : cut + after].to_numpy()
    if len(pre) < 2 or len(post) < 2:
        raise QuantError(f"{where}: {len(pre)} observations before {event.date().isoformat()} and {len(post)} on or "
                         "after it, each side needs at least 2 (and before, after >= 2); move the date or fetch more "
                         "data")  # fmt: skip
    if pre.std() < _TINY and post.std() < _TINY:
        raise QuantError(f"{where}: both sides are constant, so the t statistic is undefined; use a varying series")
    t, p = stats.ttest_ind(post, pre, equal_var=False)
    return DiffMeansResult(method="diff_means", mean_before=float(pre.mean()), mean_after=float(post.mean()),
                           difference=float(post.mean() - pre.mean()), t=float(t), p=float(p), n_before=len(pre),
                           n_after=len(post), nobs=len(pre) + len(post))  # fmt: skip
