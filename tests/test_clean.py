"""Cleaning rules."""

from __future__ import annotations

from deepmoney.data.clean import clean_text, normalize_cjk_punctuation, remove_footnote_debris, strip_page_furniture


def test_fomc_style_footnote_debris_is_removed() -> None:
    text = (
        "The meeting adjourned at 10:00 a.m. _______________________ James A. Clouse Secretary "
        '1. The Federal Open Market Committee is referenced as the "FOMC" in these minutes. Return to text '
        "2. Attended Tuesday's session only. Return to text"
    )
    cleaned = clean_text(remove_footnote_debris(text))
    assert "Return to text" not in cleaned
    assert "Attended Tuesday" not in cleaned
    assert cleaned.startswith("The meeting adjourned at 10:00 a.m.")


def test_control_characters_and_whitespace() -> None:
    assert clean_text("a\x00b\u200b c\t\t d \r\n\r\n\r\n\r\ne  \n") == "ab c d\n\ne"
    assert clean_text("Growth was 3.2 % , up .") == "Growth was 3.2%, up."


def test_cjk_punctuation_normalisation() -> None:
    assert normalize_cjk_punctuation("营收１２３亿元,同比增长:５%") == "营收123亿元，同比增长：5%"
    # ASCII punctuation between Latin words is left alone.
    assert normalize_cjk_punctuation("EPS: 1.2, up") == "EPS: 1.2, up"


def test_running_headers_and_page_numbers_are_removed() -> None:
    bodies = ["Copper demand rose.", "Banks held margins.", "Oil fell sharply.", "Rates stayed put."]
    pages = [
        f"Acme Research  Sector Note\n{body} Section {n}.\nMiddle of page {n}.\nClosing {body.lower()}\n- {n} -"
        for n, body in enumerate(bodies, 1)
    ]
    cleaned = strip_page_furniture(pages)
    assert all("Acme Research" not in page and f"- {n} -" not in page for n, page in enumerate(cleaned, 1))
    assert all(
        f"{body} Section {n}." in page and f"Middle of page {n}." in page
        for n, (body, page) in enumerate(zip(bodies, cleaned, strict=True), 1)
    )
