"""Regenerate examples/corpus/harborline_copper_outlook.pdf, the synthetic sample PDF report.

Usage (reportlab is not a deepmoney dependency; use a throwaway virtual environment):

    python3 -m venv /tmp/pdfvenv && /tmp/pdfvenv/bin/pip install reportlab
    /tmp/pdfvenv/bin/python examples/make_sample_pdf.py

The document is fictional (publisher, mines, companies and figures are invented for the deepmoney
project). `invariant=1` fixes the creation date and document ID, so the output is byte-stable for a
given reportlab version.

Layout notes for the reader under test: the first text lines are `Publisher:`, `Date:` and
`Subject:` header lines (the PDF reader parses `Key: value` lines at the top), the title is in the
PDF metadata and as a large heading, sections use numbered headings (`1. Summary`), the table is
drawn as aligned monospaced text, and each page ends with a `Page N of 2` footer that the page
furniture cleaner should drop.
"""

from __future__ import annotations

from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import simpleSplit
from reportlab.pdfgen import canvas

OUT = Path(__file__).resolve().parent / "corpus" / "harborline_copper_outlook.pdf"

TITLE = "Copper Outlook 2026: The Deficit Returns as Mine Supply Disappoints"
PUBLISHER = "Harborline Securities Research"
DATE = "2026-02-10"
SUBJECT = "Commodities - copper"

# Each block is (kind, text). Kinds: "h" numbered heading, "p" paragraph, "t" table line, "gap", "page".
BLOCKS: list[tuple[str, str]] = [
    ("h", "1. Summary"),
    (
        "p",
        "We expect the refined copper market to move into a deficit of 260 thousand tonnes (kt) in 2026, "
        "after a smaller deficit of 170kt in 2025, and we raise our 2026 average price forecast from "
        "USD 9,600 to USD 10,150 per tonne. The benchmark three-month price is currently about USD 9,800 "
        "per tonne. Mine supply is again growing more slowly than smelter capacity, while demand from "
        "power grids, electric vehicles and data centres keeps consumption growing at 2.6% a year. "
        "Visible exchange inventories of about 480kt cover only 6.4 days of global consumption.",
    ),
    ("h", "2. Mine supply"),
    (
        "p",
        "We forecast global mine output of 23,250kt in 2026, an increase of only 1.5%, compared with the "
        "3% growth that mining companies guided for at the start of last year. Three factors explain the "
        "shortfall. Ore grades at the largest open-pit mines in the southern Andes continue to decline by "
        "about 2% a year. Two large projects in central Africa have been delayed by power shortages and "
        "will now ramp up in 2027 rather than 2026. And labour disputes remain a recurring risk: the "
        "contract for workers at the Cerro Alto mine, operated by Andes Ridge Mining and producing about "
        "390kt a year, expires in April.",
    ),
    (
        "p",
        "We apply a disruption allowance of 4.5% to our bottom-up mine forecast, in line with the "
        "ten-year average. Every additional percentage point of disruption removes roughly 230kt of "
        "supply, enough to almost double our forecast deficit.",
    ),
    ("h", "3. Demand"),
    (
        "p",
        "Refined consumption should reach 28,240kt in 2026. Power-grid investment is the largest source "
        "of growth: utilities in our tracked markets plan to raise transmission spending by 12% this "
        "year. Electric vehicles use about three to four times as much copper as combustion-engine cars, "
        "and we expect EV-related demand to rise by 160kt. Data-centre construction adds around 90kt. "
        "Construction and consumer durables, still about 40% of demand, are flat, with weakness in "
        "residential property offsetting modest gains elsewhere.",
    ),
    ("page", ""),
    ("h", "4. Balance and prices"),
    (
        "p",
        "Table 1 summarises our global balance. The treatment and refining charges that miners pay "
        "smelters fell to record lows in 2025, a sign that concentrate is scarce, and several smelters "
        "have announced output cuts for the first quarter of 2026.",
    ),
    ("t", "Table 1: Global refined copper balance (kt) and price forecast"),
    ("t", "                               2025A      2026E      2027E"),
    ("t", "Mine supply                   22,900     23,250     23,900"),
    ("t", "Refined production            27,350     27,980     28,700"),
    ("t", "Refined consumption           27,520     28,240     28,760"),
    ("t", "Market balance                  -170       -260        -60"),
    ("t", "Average price (USD/t)          9,420     10,150     10,400"),
    ("t", "Source: Harborline Securities Research estimates."),
    ("gap", ""),
    (
        "p",
        "We expect prices to peak in the third quarter, when seasonal demand is strongest and the "
        "effect of smelter cuts is visible in inventories. Our quarterly path is USD 9,850 in the first "
        "quarter, USD 10,100 in the second, USD 10,400 in the third and USD 10,250 in the fourth.",
    ),
    ("h", "5. Equities"),
    (
        "p",
        "Among the producers we cover, we prefer miners with growing volumes and low costs. Andes Ridge "
        "Mining has all-in sustaining costs of about USD 2.10 per pound but carries strike risk at Cerro "
        "Alto; we rate it Hold. Tallgrass Copper, with a new mine ramping up and costs in the lowest "
        "quartile, remains our top pick (Buy). Each USD 500 per tonne change in the copper price moves "
        "our 2026 EBITDA estimates for the sector by about 9%.",
    ),
    ("h", "6. Risks"),
    (
        "p",
        "Downside risks to prices include a sharper slowdown in construction, a stronger US dollar and "
        "the release of stocks held by traders. Upside risks include a strike at Cerro Alto, new export "
        "restrictions on concentrate, and faster-than-expected grid spending.",
    ),
    ("gap", ""),
    (
        "p",
        "Disclaimer: synthetic sample document written for the deepmoney project. All companies, mines "
        "and figures are fictional; this is not investment research.",
    ),
]


def build(path: Path = OUT) -> Path:
    width, height = A4
    left, right, top, bottom = 56, 56, 60, 70
    text_width = width - left - right
    pdf = canvas.Canvas(str(path), pagesize=A4, invariant=1, pageCompression=0)
    pdf.setTitle(TITLE)
    pdf.setAuthor(PUBLISHER)
    pdf.setSubject(SUBJECT)
    pdf.setCreator("deepmoney examples/make_sample_pdf.py")
    page = 1
    y = height - top

    def footer() -> None:
        pdf.setFont("Helvetica", 8)
        pdf.drawCentredString(width / 2, 36, f"Page {page} of 2")

    def line(text: str, font: str, size: float, leading: float) -> None:
        nonlocal y
        pdf.setFont(font, size)
        pdf.drawString(left, y, text)
        y -= leading

    # Masthead: header lines first, then the title.
    line(f"Publisher: {PUBLISHER}", "Helvetica", 10, 14)
    line(f"Date: {DATE}", "Helvetica", 10, 14)
    line(f"Subject: {SUBJECT}", "Helvetica", 10, 24)
    for part in simpleSplit(TITLE, "Helvetica-Bold", 17, text_width):
        line(part, "Helvetica-Bold", 17, 22)
    y -= 10

    for kind, text in BLOCKS:
        if kind == "page":
            footer()
            pdf.showPage()
            page += 1
            y = height - top
        elif kind == "h":
            y -= 6
            line(text, "Helvetica-Bold", 12, 18)
        elif kind == "p":
            for part in simpleSplit(text, "Times-Roman", 10.5, text_width):
                line(part, "Times-Roman", 10.5, 14)
            y -= 6
        elif kind == "t":
            line(text, "Courier", 9.5, 13)
        elif kind == "gap":
            y -= 8
        if y < bottom:
            raise RuntimeError(f"text overflows page {page}; shorten the content")
    footer()
    pdf.showPage()
    pdf.save()
    return path


if __name__ == "__main__":
    print(build())
