"""Answer scoring: tokens, token F1, ROUGE-L, numbers in English and Chinese, numeric match, means. Table-driven."""

from __future__ import annotations

import pytest

from deepmoney.scoring import (
    extract_numbers,
    mean_scores,
    numbers_match,
    parse_number,
    rouge_l,
    score_answer,
    token_f1,
    tokens,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Fed raised rates!", ["fed", "raised", "rates"]),  # lowercase, article and punctuation dropped
        ("An increase of 3.5, a drop of 1,234", ["increase", "of", "3.5", "drop", "of", "1234"]),
        ("利率上升。", ["利", "率", "上", "升"]),  # one token per Han character, full-width punctuation dropped
        ("ＧＤＰ增长１２３", ["gdp", "增", "长", "123"]),  # full-width letters and digits
        ("こんにちは 한국", ["こ", "ん", "に", "ち", "は", "한", "국"]),  # kana and hangul
        ("CPI（同比）：2.5%", ["cpi", "同", "比", "2.5"]),
        ("  —— !?  ", []),
        ("", []),
    ],
)
def test_tokens(text: str, expected: list[str]) -> None:
    assert tokens(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # [cat, sat, on, mat] vs [cat, is, on, mat]: overlap 3, P = R = 3/4.
        ("The cat sat on the mat", "the cat is on a mat", 0.75),
        # 净利润增长 vs 净利润下降: 5 tokens each, overlap 3 (净利润), P = R = 3/5.
        ("净利润增长", "净利润下降", 0.6),
        # [revenue, was, 1234, million] vs [revenue, 1234, million]: P = 3/4, R = 1, F = 2*(3/4)/(7/4) = 6/7.
        ("Revenue was 1,234 million.", "revenue 1234 million", 6 / 7),
        # bags {x: 2, y: 1} and {x: 1, y: 2}: overlap 2, P = R = 2/3.
        ("x x y", "x y y", 2 / 3),
        ("x y z", "z y x", 1.0),  # order does not matter to a bag of tokens
        ("Rates rose 25bp.", "rates rose 25bp", 1.0),
        ("利率上升", "利率上升", 1.0),
        ("inflation fell", "利率上升", 0.0),
        ("", "", 1.0),
        ("。", "the", 1.0),  # both normalise to nothing
        ("", "rates", 0.0),
        ("rates", "", 0.0),
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # LCS [rates, rose, sharply] = 3 over lengths 4 and 5: P = 3/4, R = 3/5, F = 2PR/(P+R) = 0.9/1.35 = 2/3.
        ("rates rose sharply yesterday", "rates rose very sharply today", 2 / 3),
        # 利率上升 (4) in 利率大幅上升了 (7): LCS 4, P = 1, R = 4/7, F = (8/7)/(11/7) = 8/11.
        ("利率上升", "利率大幅上升了", 8 / 11),
        # [x, y, z] vs [z, y, x]: LCS 1, P = R = 1/3.
        ("x y z", "z y x", 1 / 3),
        # 1000 x against 10 x: LCS 10, P = 10/1000, R = 1, F = 2 * 0.01 / 1.01.
        ("x " * 1000, "x " * 10, 0.02 / 1.01),
        ("x " * 10, "x " * 1000, 0.02 / 1.01),
        ("The Fed cut rates.", "fed cut rates", 1.0),
        ("美联储降息", "美联储降息", 1.0),
        ("inflation fell", "利率上升", 0.0),
        ("", "", 1.0),
        ("", "rates", 0.0),
        ("rates", "", 0.0),
    ],
)
def test_rouge_l(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Plain numbers, signs, thousands separators.
        ("42", 42),
        ("-3.5", -3.5),
        ("+2", 2),
        ("1,234,567.89", 1234567.89),
        ("\u22124", -4),  # minus sign
        # Percentages and basis points.
        ("3.5%", 0.035),
        ("3.5 %", 0.035),
        ("3.5 percent", 0.035),
        ("3.5 per cent", 0.035),
        ("3.5pct", 0.035),
        ("2 percentage points", 0.02),
        ("3‰", 0.003),
        ("25bp", 0.0025),
        ("25 bps", 0.0025),
        ("25 basis points", 0.0025),
        # English scales and abbreviations.
        ("1.2 billion", 1.2e9),
        ("3 million", 3e6),
        ("5 thousand", 5e3),
        ("2.5 trillion", 2.5e12),
        ("$1.2bn", 1.2e9),
        ("7 mn", 7e6),
        ("1.1tn", 1.1e12),
        ("3m", 3e6),
        ("4k", 4e3),
        # Currency symbols and codes.
        ("$42", 42),
        ("¥42", 42),
        ("￥42", 42),
        ("€42", 42),
        ("£42", 42),
        ("USD 3 million", 3e6),
        ("42 RMB", 42),
        ("CNY42", 42),
        ("42元", 42),
        ("-$5", -5),
        # Full width.
        ("１２３", 123),
        ("３.５％", 0.035),
        # Arabic digits with Chinese units.
        ("1.2万", 12000),
        ("3.5亿", 3.5e8),
        ("3.5亿元", 3.5e8),
        ("2万亿", 2e12),
        ("1.5千", 1500),
        ("5千万", 5e7),
        ("RMB5亿", 5e8),
        # Chinese fractions and percentages.
        ("百分之五", 0.05),
        ("百分之三点五", 0.035),
        ("百分之3.5", 0.035),
        ("千分之三", 0.003),
        ("五个百分点", 0.05),
        ("0.5个百分点", 0.005),
        ("25个基点", 0.0025),
        ("三成", 0.3),
        # Chinese numerals.
        ("三点五", 3.5),
        ("两千三百万", 23_000_000),
        ("一万二千", 12000),
        ("一万二", 12000),  # colloquial: the trailing digit is in thousands
        ("三百五", 350),
        ("十二", 12),
        ("二十", 20),
        ("一百零五", 105),
        ("一千零五", 1005),
        ("一亿二千万", 1.2e8),
        ("两万亿", 2e12),
        ("三点五亿", 3.5e8),
        ("零点五", 0.5),
        ("负三", -3),
        ("〇", 0),
        ("零", 0),
        ("两", 2),
        ("俩", 2),
        ("一", 1),
        ("二〇二五", 2025),  # digit by digit, as years are written
        ("壹佰贰拾叁", 123),
        ("叁仟肆佰伍拾陆", 3456),
        ("玖", 9),
    ],
)
def test_parse_number(text: str, expected: float) -> None:
    assert parse_number(text) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("text", ["", "rates", "about 3", "3 and 4", "1 234", "M2", "百分之"])
def test_parse_number_none(text: str) -> None:
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CPI rose 2.5% year on year, and M2 grew to 300万亿元", [0.025, 3e14]),
        ("净利润同比增长百分之十二，达到三点五亿元", [0.12, 3.5e8]),
        ("On 2026-03-15 the Fed cut by 25 basis points.", [2026, 3, 15, 0.0025]),
        ("2026-03", [2026, 3]),
        ("Revenue fell -3.5% to $1.2bn in 2025.", [-0.035, 1.2e9, 2025]),
        ("Guidance of 3-5% for Q3", [3, 0.05]),  # Q3 is a name, 3-5 a range
        ("COVID-19", [19]),
        ("不良率下降五个百分点至三成，统一口径下之一", [0.05, 0.3]),  # lone 一 in words is not a number
        ("营收１２３亿元，增长３.５％", [1.23e10, 0.035]),
        ("No numbers here.", []),
        ("", []),
    ],
)
def test_extract_numbers(text: str, expected: list[float]) -> None:
    assert extract_numbers(text) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("prediction", "reference", "rel_tol", "expected"),
    [
        ("GDP grew 5.2% last year", "5.2%", 1e-3, True),
        ("GDP grew 5.3% last year", "5.2%", 1e-3, False),
        ("净利润3.5亿元", "三点五亿元", 1e-3, True),
        ("It rose by 0.052", "百分之五点二", 1e-3, True),
        ("about 1001", "1000", 1e-3, True),  # |1001 - 1000| = 1 <= 1e-3 * 1001
        ("about 1002", "1000", 1e-3, False),  # 2 > 1.002
        ("105", "100", 0.1, True),  # tolerance is relative to the larger value: 5 <= 0.1 * 105
        ("111", "100", 0.1, True),  # 11 <= 0.1 * 111 = 11.1
        ("112", "100", 0.1, False),  # 12 > 0.1 * 112 = 11.2
        ("0", "零", 1e-3, True),  # zero matches through the absolute tolerance
        ("0.5", "零", 1e-3, False),
        ("5% and 3", "3 and 5%", 1e-3, True),  # order does not matter
        ("5%", "5% and 3", 1e-3, False),  # a reference number is missing
        ("no idea", "3.5%", 1e-3, False),
        ("rates rose 2%", "Rates rose sharply.", 1e-3, None),
        ("", "", 1e-3, None),
    ],
)
def test_numbers_match(prediction: str, reference: str, rel_tol: float, expected: bool | None) -> None:
    assert numbers_match(prediction, reference, rel_tol=rel_tol) is expected


def test_numbers_match_default_tolerance() -> None:
    assert numbers_match("1000.9", "1000") is True
    assert numbers_match("1001.5", "1000") is False


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # [增, 长, 百, 分, 之, 五] vs [增, 长, 5]: overlap and LCS 2, P = 2/6, R = 2/3, F = (4/9)/(1) = 4/9.
        ("增长百分之五", "增长5%", {"rouge_l": 4 / 9, "token_f1": 4 / 9, "numeric_em": 1.0}),
        # [rates, rose] vs [rates, rose, 2]: P = 1, R = 2/3, F = (4/3)/(5/3) = 4/5.
        ("Rates rose.", "Rates rose 2%.", {"rouge_l": 0.8, "token_f1": 0.8, "numeric_em": 0.0}),
        ("Rates rose.", "Rates rose.", {"rouge_l": 1.0, "token_f1": 1.0, "numeric_em": None}),
    ],
)
def test_score_answer(prediction: str, reference: str, expected: dict[str, float | None]) -> None:
    scores = score_answer(prediction, reference)
    assert scores.keys() == expected.keys()
    for key, value in expected.items():
        assert scores[key] == (None if value is None else pytest.approx(value))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            [
                {"rouge_l": 0.5, "token_f1": 1.0, "numeric_em": None},
                {"rouge_l": 1.0, "token_f1": 0.0, "numeric_em": 1.0},
                {"rouge_l": 0.0, "token_f1": 0.5, "numeric_em": 0.0},
            ],
            {"rouge_l": 0.5, "token_f1": 0.5, "numeric_em": 0.5, "numeric_count": 2},
        ),
        (
            [
                {"rouge_l": 0.2, "token_f1": 0.4, "numeric_em": None},
                {"rouge_l": 0.4, "token_f1": 0.8, "numeric_em": None},
            ],
            {"rouge_l": 0.3, "token_f1": 0.6, "numeric_em": None, "numeric_count": 0},
        ),
        ([], {"rouge_l": None, "token_f1": None, "numeric_em": None, "numeric_count": 0}),
    ],
)
def test_mean_scores(rows: list[dict[str, float | None]], expected: dict[str, float | None]) -> None:
    means = mean_scores(rows)
    assert means.keys() == expected.keys()
    for key, value in expected.items():
        assert means[key] == (None if value is None else pytest.approx(value))
