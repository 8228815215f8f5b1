"""The sectors and targets step 1's answers are mapped onto: one list, English and Chinese.

A model names sectors in its own words ("oil producers", "银行股"); the service reports each with
the taxonomy entry it belongs to, so that answers can be aggregated and the data step can fall
back to the series the market-data dictionary files under that sector. Entries follow GICS's
sectors where they exist, plus the macro targets news moves (rates, FX, commodities, indices);
their English names are the sector names the embedded data dictionary uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepmoney.marketdata.match import dice, ngrams, normalise

MATCH_THRESHOLD = 0.55


@dataclass(frozen=True)
class Sector:
    """One taxonomy entry."""

    id: str
    name_en: str
    name_zh: str
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every name the entry is known by."""
        return (self.id, self.name_en, self.name_zh, *self.aliases)


TAXONOMY: tuple[Sector, ...] = (
    Sector(
        "banks", "Banks", "银行", ("bank", "banking", "lenders", "commercial banks", "银行业", "银行股", "商业银行")
    ),
    Sector("insurance", "Insurance", "保险", ("insurers", "insurance companies", "保险业", "保险公司")),
    Sector(
        "diversified-financials",
        "Diversified financials",
        "非银金融",
        ("brokers", "brokerage", "asset management", "securities firms", "券商", "证券", "资产管理"),
    ),
    Sector(
        "fixed-income",
        "Fixed income",
        "固定收益",
        ("bonds", "treasuries", "government bonds", "interest rates", "rates", "yields", "债券", "国债", "利率"),
    ),
    Sector(
        "energy",
        "Energy",
        "能源",
        ("oil", "crude oil", "oil and gas", "natural gas", "oil producers", "石油", "原油", "天然气", "石油石化"),
    ),
    Sector(
        "transportation",
        "Transportation",
        "交通运输",
        ("airlines", "shipping", "logistics", "railways", "航空", "航运", "物流"),
    ),
    Sector("chemicals", "Chemicals", "化工", ("chemical", "petrochemicals", "化学", "石化")),
    Sector(
        "materials",
        "Materials",
        "原材料",
        ("metals", "mining", "steel", "copper", "gold", "aluminium", "有色金属", "钢铁", "采矿", "黄金", "铜"),
    ),
    Sector(
        "industrials",
        "Industrials",
        "工业",
        ("manufacturing", "machinery", "construction", "capital goods", "制造业", "机械", "建筑"),
    ),
    Sector(
        "aerospace-defense",
        "Aerospace & defense",
        "航空航天与国防",
        ("defense", "defence", "aerospace", "军工", "国防"),
    ),
    Sector(
        "consumer",
        "Consumer",
        "消费",
        ("consumer goods", "consumer staples", "consumer discretionary", "food and beverage", "食品饮料", "家电"),
    ),
    Sector("retail", "Retail", "零售", ("retailers", "e-commerce", "商贸零售", "电商")),
    Sector("autos", "Autos", "汽车", ("automobiles", "car makers", "electric vehicles", "汽车制造", "新能源汽车")),
    Sector(
        "real-estate", "Real estate", "房地产", ("property", "housing", "homebuilders", "reits", "地产", "房地产业")
    ),
    Sector(
        "technology",
        "Technology",
        "科技",
        ("information technology", "tech", "semiconductors", "software", "chips", "半导体", "计算机", "电子"),
    ),
    Sector(
        "communication",
        "Communication services",
        "通信服务",
        ("telecoms", "telecommunications", "media", "通信", "传媒"),
    ),
    Sector(
        "health-care",
        "Health care",
        "医疗保健",
        ("healthcare", "pharmaceuticals", "biotech", "医药", "医药生物", "医疗"),
    ),
    Sector("utilities", "Utilities", "公用事业", ("power", "electricity", "电力", "公用事业业")),
    Sector("agriculture", "Agriculture", "农业", ("farming", "grains", "soybeans", "农林牧渔", "农产品")),
    Sector("equities", "Equities", "股票", ("stocks", "stock market", "equity market", "股市", "a股", "股票市场")),
    Sector(
        "currencies",
        "Currencies",
        "外汇",
        ("fx", "foreign exchange", "dollar", "exchange rate", "汇率", "人民币", "美元"),
    ),
    Sector(
        "macro",
        "Macro",
        "宏观经济",
        ("economy", "gdp", "inflation", "employment", "monetary policy", "宏观", "经济", "通胀", "货币政策"),
    ),
)


BY_ID = {sector.id: sector for sector in TAXONOMY}


def _index() -> tuple[dict[str, Sector], list[tuple[Sector, list]]]:
    exact = {normalise(name): sector for sector in TAXONOMY for name in sector.names()}
    grams = [(sector, [ngrams(name) for name in sector.names()]) for sector in TAXONOMY]
    return exact, grams


_EXACT, _GRAMS = _index()


def classify(name: str) -> Sector | None:
    """The taxonomy entry a sector or target name belongs to (exact name or alias, else n-gram Dice), or None."""
    key = normalise(name)
    if not key:
        return None
    if key in _EXACT:
        return _EXACT[key]
    for word in key.split():  # "regional banks" -> banks, "oil majors" -> energy
        if word in _EXACT:
            return _EXACT[word]
    wanted = ngrams(name)
    score, best = max(((max(dice(wanted, g) for g in options), sector) for sector, options in _GRAMS),
                      key=lambda pair: pair[0])  # fmt: skip
    return best if score >= MATCH_THRESHOLD else None
