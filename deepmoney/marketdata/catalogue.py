"""The built-in data dictionary: every series of the embedded database, where it comes from, and its release lag.

Release lags are approximations (see `embedded.py`): the data sets carry no vintage dates.
"""

from __future__ import annotations

from typing import Any

from deepmoney.marketdata.dictionary import SeriesInfo

_ARCH = "checked with arch 8.0.0; the arch package is under the NCSA licence"
_FRED = "FRED, Federal Reserve Bank of St. Louis"
_NOT_STATED = "arch ships these values without naming their source"
_MACRO_SOURCE = "statsmodels.datasets.macrodata (statsmodels 0.15)"
_MACRO_CITATION = (
    "United States Macroeconomic data, 1959Q1-2009Q3, compiled by Skipper Seabold for statsmodels: all series from "
    f"{_FRED} (accessed 2009-12-15), except the unemployment rate from the U.S. Bureau of Labor Statistics. "
    "statsmodels states: 'This is public domain.'"
)
_FRENCH_CITATION = (
    "Kenneth R. French, Data Library, Fama/French 3 Factors (monthly), "
    "http://mba.tuck.dartmouth.edu/pages/faculty/ken.french/data_library.html; cite Fama and French (1993), "
    "'Common risk factors in the returns on stocks and bonds', Journal of Financial Economics 33(1). "
    "Free to use from the library; copyright Kenneth R. French."
)
_MOODYS_CITATION = (
    "Moody's Seasoned {grade} Corporate Bond Yield [{code}], retrieved from " + _FRED + ". " + _NOT_STATED + "; "
    "the columns and the 1919 start match FRED's AAA and BAA series. Moody's holds the copyright (FRED shows its "
    "notice on these series): check Moody's terms before redistributing."
)


def _s(series_id: str, name_en: str, name_zh: str, aliases: str, **kw: Any) -> SeriesInfo:
    """A SeriesInfo; `aliases` is one string with the aliases separated by `|`."""
    kw["sectors"] = tuple(kw.get("sectors", ()))
    return SeriesInfo(id=series_id, name_en=name_en, name_zh=name_zh, aliases=tuple(aliases.split("|")), **kw)


def _index(code: str, name_en: str, name_zh: str, aliases: str, owner: str, module: str, sectors: tuple) -> list:
    source = f"arch.data.{module} ({_ARCH})"
    citation = (
        f"{name_en} daily history as shipped in arch.data.{module}; {_NOT_STATED} (the Open/High/Low/Close/"
        f"Adj Close/Volume layout is Yahoo Finance's). The index is the property of {owner}."
    )
    common = {"frequency": "daily", "source": source, "citation": citation, "sectors": sectors, "release_lag_days": 0}
    return [
        (
            _s(
                f"us.{code}.close",
                f"{name_en}, daily close",
                f"{name_zh}收盘价",
                aliases,
                unit="index points",
                **common,
            ),
            module,
            "Adj Close",  # equal to Close for an index (no dividends are adjusted), checked
        ),
        (
            _s(
                f"us.{code}.volume",
                f"{name_en} trading volume",
                f"{name_zh}成交量",
                f"{name_en} volume|{name_zh}成交量|{name_zh.removesuffix('指数')}成交量",
                unit="shares traded",
                **common,
            ),
            module,
            "Volume",
        ),
    ]


def _macro(series_id: str, column: str, name_en: str, name_zh: str, aliases: str, unit: str, **kw: Any) -> tuple:
    kw.setdefault("sectors", ("Macro",))
    info = _s(
        series_id,
        name_en,
        name_zh,
        aliases,
        unit=unit,
        frequency="quarterly",
        source=f"{_MACRO_SOURCE}, column {column}",
        citation=_MACRO_CITATION,
        **kw,
    )
    return info, "macrodata", column


_GDP_LAG = 30  # the advance estimate of a quarter's national accounts comes out about a month after it ends
_CPI_LAG = 15  # BLS publishes a month's CPI around the middle of the next month
_MONTHLY_AVERAGE_LAG = 1  # a monthly average of daily market prices is complete once the month is over
_FRENCH_LAG = 30  # an approximation: Ken French updates the library monthly-ish; true vintage dates are unknown

# (entry, data set, column): the data set is an arch.data module name, or "macrodata" for statsmodels'.
EMBEDDED: tuple[tuple[SeriesInfo, str, str], ...] = (
    *_index(
        "sp500",
        "S&P 500 index",
        "标普500指数",
        "S&P 500|S&P 500 index|S&P500|SPX|S&P|standard & poor's 500|标普500|标普500指数|标准普尔500指数|美股大盘",
        "S&P Dow Jones Indices LLC",
        "sp500",
        ("Equities", "Macro"),
    ),
    *_index(
        "nasdaq",
        "NASDAQ Composite index",
        "纳斯达克综合指数",
        "NASDAQ|Nasdaq Composite|NASDAQ Composite index|IXIC|纳斯达克|纳指|纳斯达克指数|纳斯达克综合指数|科技股指数",
        "Nasdaq, Inc.",
        "nasdaq",
        ("Equities", "Technology"),
    ),
    (
        _s(
            "us.oil.wti.daily",
            "WTI crude oil spot price (Cushing, Oklahoma), daily",
            "WTI原油现货价格(日度)",
            "WTI crude oil price|WTI|WTI crude|WTI oil price|West Texas Intermediate|crude oil price|oil price|"
            "DCOILWTICO|WTI原油价格|WTI原油|美国原油|原油价格|油价|西德克萨斯中质原油",
            unit="USD per barrel",
            frequency="daily",
            source=f"FRED series DCOILWTICO via arch.data.wti ({_ARCH})",
            citation=(
                "U.S. Energy Information Administration, Crude Oil Prices: West Texas Intermediate (WTI) - Cushing, "
                f"Oklahoma [DCOILWTICO], retrieved from {_FRED}; arch says 'From the FRED database'. "
                "EIA data are in the public domain."
            ),
            sectors=("Energy", "Transportation", "Chemicals"),
            release_lag_days=0,
        ),
        "wti",
        "DCOILWTICO",
    ),
    (
        _s(
            "us.oil.wti.monthly",
            "WTI crude oil price, monthly average",
            "WTI原油月均价格",
            "WTI monthly average|WTI monthly|WTI原油月均价|WTI月均价",
            unit="USD per barrel",
            frequency="monthly",
            source=f"arch.data.crude, column WTI ({_ARCH})",
            citation=(
                f"{_NOT_STATED} (its docstring is copied from core_cpi); the column equals the monthly mean of FRED "
                "DCOILWTICO (checked), so it is most likely FRED's EIA series MCOILWTICO. EIA data are in the public "
                "domain."
            ),
            sectors=("Energy", "Transportation"),
            release_lag_days=_MONTHLY_AVERAGE_LAG,
        ),
        "crude",
        "WTI",
    ),
    (
        _s(
            "global.oil.brent.monthly",
            "Brent crude oil price, monthly average",
            "布伦特原油月均价格",
            "Brent|Brent crude|Brent crude oil price|Brent oil price|Brent price|布伦特原油|布伦特原油价格|布伦特油价|"
            "布油|北海布伦特原油",
            unit="USD per barrel",
            frequency="monthly",
            source=f"arch.data.crude, column Brent ({_ARCH})",
            citation=(
                f"{_NOT_STATED} (its docstring is copied from core_cpi); beside a WTI column that equals FRED's "
                "monthly mean of DCOILWTICO, it is most likely FRED's EIA series MCOILBRENTEU (Europe Brent spot "
                "price FOB). EIA data are in the public domain."
            ),
            sectors=("Energy", "Transportation"),
            release_lag_days=_MONTHLY_AVERAGE_LAG,
        ),
        "crude",
        "Brent",
    ),
    (
        _s(
            "us.cpi.core",
            "US core CPI (all items less food and energy)",
            "美国核心CPI",
            "core CPI|US core CPI|core inflation index|CPI less food and energy|CPILFESL|核心CPI|核心消费者物价指数|"
            "核心居民消费价格指数|美国核心消费者物价指数",
            unit="index, 1982-84 = 100, seasonally adjusted",
            frequency="monthly",
            source=f"FRED series CPILFESL via arch.data.core_cpi ({_ARCH})",
            citation=(
                "U.S. Bureau of Labor Statistics, Consumer Price Index for All Urban Consumers: All Items Less Food "
                f"and Energy in U.S. City Average [CPILFESL], retrieved from {_FRED}; arch says 'From the FRED "
                "database'. BLS data are in the public domain."
            ),
            sectors=("Macro", "Consumer", "Banks"),
            release_lag_days=_CPI_LAG,
        ),
        "core_cpi",
        "CPILFESL",
    ),
    (
        _s(
            "us.bond.aaa",
            "Moody's seasoned Aaa corporate bond yield, monthly average",
            "穆迪AAA级公司债收益率",
            "Moody's AAA yield|AAA corporate bond yield|AAA bond yield|AAA yield|穆迪AAA公司债收益率|AAA级公司债收益率|"
            "AAA公司债收益率|高等级公司债收益率",
            unit="% per annum",
            frequency="monthly",
            source=f"arch.data.default, column AAA ({_ARCH})",
            citation=_MOODYS_CITATION.format(grade="Aaa", code="AAA"),
            sectors=("Banks", "Insurance", "Fixed income"),
            release_lag_days=_MONTHLY_AVERAGE_LAG,
        ),
        "default",
        "AAA",
    ),
    (
        _s(
            "us.bond.baa",
            "Moody's seasoned Baa corporate bond yield, monthly average",
            "穆迪BAA级公司债收益率",
            "Moody's BAA yield|BAA corporate bond yield|BAA bond yield|BAA yield|穆迪BAA公司债收益率|BAA级公司债收益率|"
            "BAA公司债收益率|中等级公司债收益率",
            unit="% per annum",
            frequency="monthly",
            source=f"arch.data.default, column BAA ({_ARCH})",
            citation=_MOODYS_CITATION.format(grade="Baa", code="BAA"),
            sectors=("Banks", "Insurance", "Fixed income"),
            release_lag_days=_MONTHLY_AVERAGE_LAG,
        ),
        "default",
        "BAA",
    ),
    *(
        (
            _s(
                series_id,
                name_en,
                name_zh,
                aliases,
                unit="% per month",
                frequency="monthly",
                source=f"Ken French's data library via arch.data.frenchdata, column {column} ({_ARCH})",
                citation=_FRENCH_CITATION,
                sectors=sectors,
                release_lag_days=_FRENCH_LAG,
            ),
            "frenchdata",
            column,
        )
        for series_id, column, name_en, name_zh, aliases, sectors in (
            (
                "us.ff.mkt_rf",
                "Mkt-RF",
                "Fama-French market excess return (Mkt-RF)",
                "法玛-弗伦奇市场超额收益",
                "Mkt-RF|market excess return|market factor|equity premium|市场超额收益|市场因子|股票风险溢价",
                ("Equities",),
            ),
            (
                "us.ff.smb",
                "SMB",
                "Fama-French size factor (SMB, small minus big)",
                "法玛-弗伦奇规模因子",
                "SMB|size factor|small minus big|small-cap premium|规模因子|小盘股溢价|市值因子",
                ("Equities",),
            ),
            (
                "us.ff.hml",
                "HML",
                "Fama-French value factor (HML, high minus low)",
                "法玛-弗伦奇价值因子",
                "HML|value factor|high minus low|value premium|价值因子|价值溢价|账面市值比因子",
                ("Equities",),
            ),
            (
                "us.ff.rf",
                "RF",
                "Risk-free rate, one-month Treasury bill return (Fama-French)",
                "无风险利率(一个月国库券收益率)",
                "RF|risk-free rate|risk free rate|one-month T-bill return|无风险利率|一个月国库券收益率",
                ("Banks", "Fixed income"),
            ),
        )
    ),
    (
        _s(
            "us.vix",
            "CBOE Volatility Index (VIX), daily close",
            "芝加哥期权交易所波动率指数(VIX)",
            "VIX|VIX index|CBOE VIX|volatility index|fear index|fear gauge|波动率指数|恐慌指数|VIX指数|VIX恐慌指数",
            unit="index points (annualised implied volatility, %)",
            frequency="daily",
            source=f"arch.data.vix ({_ARCH})",
            citation=(
                f"{_NOT_STATED}; VIX is computed and published by Cboe Global Markets (its missing holiday rows "
                "look like FRED's VIXCLS). Cboe owns the index data."
            ),
            sectors=("Equities", "Insurance", "Macro"),
            release_lag_days=0,
        ),
        "vix",
        "vix",
    ),
    _macro(
        "us.gdp.real",
        "realgdp",
        "US real GDP",
        "美国实际GDP",
        "real GDP|GDP|gross domestic product|real gross domestic product|US GDP|实际GDP|国内生产总值|"
        "实际国内生产总值|美国GDP",
        "billions of chained 2005 USD, seasonally adjusted annual rate",
        release_lag_days=_GDP_LAG,
    ),
    _macro(
        "us.pce.real",
        "realcons",
        "US real personal consumption expenditures",
        "美国实际个人消费支出",
        "real consumption|personal consumption expenditures|consumer spending|PCE|real PCE|实际消费|个人消费支出|"
        "居民消费支出|消费支出",
        "billions of chained 2005 USD, seasonally adjusted annual rate",
        sectors=("Macro", "Consumer", "Retail"),
        release_lag_days=_GDP_LAG,
    ),
    _macro(
        "us.investment.real",
        "realinv",
        "US real gross private domestic investment",
        "美国实际私人国内总投资",
        "real investment|private investment|gross private domestic investment|business investment|实际投资|"
        "私人投资|国内私人总投资|私人国内总投资",
        "billions of chained 2005 USD, seasonally adjusted annual rate",
        sectors=("Macro", "Industrials", "Real estate"),
        release_lag_days=_GDP_LAG,
    ),
    _macro(
        "us.government.real",
        "realgovt",
        "US real federal consumption expenditures and gross investment",
        "美国联邦政府实际消费支出与投资",
        "real government spending|government spending|federal spending|federal government expenditures|政府支出|"
        "联邦政府支出|政府消费支出",
        "billions of chained 2005 USD, seasonally adjusted annual rate",
        sectors=("Macro", "Aerospace & defense"),
        release_lag_days=_GDP_LAG,
    ),
    _macro(
        "us.dpi.real",
        "realdpi",
        "US real disposable personal income",
        "美国实际个人可支配收入",
        "real disposable income|disposable income|disposable personal income|DPI|可支配收入|实际可支配收入|"
        "个人可支配收入|居民可支配收入",
        "billions of chained 2005 USD, seasonally adjusted annual rate",
        sectors=("Macro", "Consumer"),
        release_lag_days=_GDP_LAG,
    ),
    _macro(
        "us.cpi",
        "cpi",
        "US consumer price index, all items, end of quarter",
        "美国消费者物价指数(季末)",
        "CPI|consumer price index|headline CPI|CPI all items|US CPI|消费者物价指数|居民消费价格指数|美国CPI|"
        "消费物价指数",
        "index, 1982-84 = 100, seasonally adjusted",
        sectors=("Macro", "Consumer", "Banks"),
        release_lag_days=_CPI_LAG,  # the quarter's last monthly CPI
    ),
    _macro(
        "us.m1",
        "m1",
        "US M1 money stock, end of quarter",
        "美国M1货币供应量(季末)",
        "M1|money supply|M1 money stock|M1 money supply|narrow money|货币供应量|狭义货币|M1货币供应量|M1供应量",
        "billions of USD, seasonally adjusted",
        sectors=("Macro", "Banks"),
        release_lag_days=15,  # the Fed's H.6 release comes one to two weeks after the period
    ),
    _macro(
        "us.tbill.3m",
        "tbilrate",
        "US 3-month Treasury bill rate, quarterly average",
        "美国3个月国库券利率(季度均值)",
        "T-bill rate|Treasury bill rate|3-month T-bill|three-month Treasury bill rate|3-month Treasury bill rate|"
        "short-term interest rate|国库券利率|短期国债利率|3个月国库券利率|美国短期利率",
        "% per annum (secondary market)",
        sectors=("Banks", "Fixed income", "Macro"),
        release_lag_days=_MONTHLY_AVERAGE_LAG,  # an average of market rates
    ),
    _macro(
        "us.unemployment",
        "unemp",
        "US unemployment rate",
        "美国失业率",
        "unemployment rate|unemployment|jobless rate|US unemployment rate|失业率|美国失业率|失业人口比率",
        "% of the labour force, seasonally adjusted",
        sectors=("Macro", "Consumer", "Retail"),
        release_lag_days=7,  # BLS's Employment Situation for a quarter's last month: the first Friday after
    ),
    _macro(
        "us.population",
        "pop",
        "US population, end of quarter",
        "美国总人口(季末)",
        "population|US population|total population|人口|美国人口|总人口",
        "millions of persons, incl. armed forces overseas",
        release_lag_days=30,  # Census monthly estimates; an approximation
    ),
    _macro(
        "us.inflation",
        "infl",
        "US CPI inflation rate, annualised quarter on quarter",
        "美国通胀率(季度年化)",
        "inflation|inflation rate|CPI inflation|US inflation|通胀率|通货膨胀率|通胀|物价上涨率",
        "% per annum, 400 * ln(CPI_t / CPI_t-1)",
        sectors=("Macro", "Banks", "Consumer"),
        release_lag_days=_CPI_LAG,
    ),
    _macro(
        "us.real_rate",
        "realint",
        "US real interest rate (T-bill rate minus inflation)",
        "美国实际利率",
        "real interest rate|real rate|real T-bill rate|实际利率|实际利息率",
        "% per annum",
        sectors=("Macro", "Banks", "Fixed income"),
        release_lag_days=_CPI_LAG,  # needs the quarter's CPI
    ),
)

CATALOGUE: tuple[SeriesInfo, ...] = tuple(info for info, _, _ in EMBEDDED)
