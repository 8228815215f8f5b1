"""Readers for every supported format, their metadata, and every kind of bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from deepmoney.config import DataConfig
from deepmoney.data.document import Document
from deepmoney.data.readers import CollectionIndex, read_file
from deepmoney.errors import InputRejected
from deepmoney.storage import Storage


def _read(path: Path, **config: object) -> list[Document | InputRejected]:
    storage = Storage()
    (ref,) = storage.list_files(path)
    return list(read_file(ref, storage, DataConfig(**config)))


def _one(path: Path) -> Document:
    (item,) = _read(path)
    assert isinstance(item, Document), item
    return item


def _rejected(path: Path, **config: object) -> str:
    (item,) = _read(path, **config)
    assert isinstance(item, InputRejected), item
    assert item.path == str(path)
    return item.reason


def make_pdf(path: Path, pages: list[list[str]], encrypt: str | None = None) -> Path:
    """A real PDF with a text layer, one list of lines per page (reportlab), optionally encrypted (pypdf)."""
    from pypdf import PdfReader, PdfWriter
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=1)
    pdf.setTitle("Copper Outlook 2026")
    for lines in pages:
        y = 800
        for line in lines:
            pdf.drawString(60, y, line)
            y -= 16
        pdf.showPage()
    pdf.save()
    data = buffer.getvalue()
    if encrypt:
        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
        writer.encrypt(user_password=encrypt, algorithm="RC4-128")
        out = io.BytesIO()
        writer.write(out)
        data = out.getvalue()
    path.write_bytes(data)
    return path


def test_markdown_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "note.md"
    path.write_text(
        "---\ntitle: Chips Q3\npublisher: Harborline Research\ndate: 2026-03-14\nsubject: semiconductors\n---\n"
        "# Chips Q3\n\n## Demand\nDemand rose 12%.\n<!-- internal -->\n",
        encoding="utf-8",
    )
    doc = _one(path)
    assert (doc.title, doc.publisher, doc.date, doc.subject, doc.language) == (
        "Chips Q3",
        "Harborline Research",
        "2026-03-14",
        "semiconductors",
        "en",
    )
    assert doc.text.startswith("# Chips Q3") and "internal" not in doc.text


def test_text_header_lines_and_chinese_date(tmp_path: Path) -> None:
    path = tmp_path / "bank.txt"
    path.write_text(
        "标题：银行业季度点评\n发布机构：青禾资本研究所\n日期：2026年1月5日\n\n一、概览\n净息差收窄。\n",
        encoding="utf-8",
    )
    doc = _one(path)
    assert (doc.title, doc.publisher, doc.date, doc.language) == (
        "银行业季度点评",
        "青禾资本研究所",
        "2026-01-05",
        "zh",
    )
    assert doc.text.strip().startswith("一、概览")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "gb18030", "gbk", "utf-16"])
def test_text_encodings(tmp_path: Path, encoding: str) -> None:
    text = "央行下调存款准备金率0.5个百分点，释放长期资金约1万亿元。"
    path = tmp_path / f"{encoding}.txt"
    path.write_bytes(text.encode(encoding))
    assert _one(path).text.strip() == text


def test_date_from_file_name(tmp_path: Path) -> None:
    path = tmp_path / "MeetingDate=2019-12-10-2019-12-11_UploadedOn=20200103.txt"
    path.write_text("Minutes of the meeting. " * 10)
    assert _one(path).date == "2019-12-10"


def test_html_keeps_headings_and_tables_drops_boilerplate(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text(
        '<html lang="en"><head><title>Bank Sector Review</title><meta name="publisher" content="Lakeside Research">'
        '<meta name="date" content="2026-02-01"></head><body><nav><a href="/">Home</a> Menu</nav>'
        "<h1>Bank Sector Review</h1><h2>Margins</h2><p>Net interest margin fell <b>12bp</b>.</p>"
        "<table><tr><th>Bank</th><th>NIM</th></tr><tr><td>A</td><td>1.6%</td></tr></table>"
        "<h2>Outlook</h2><p>Stable.</p><script>var x=1;</script>"
        "<footer>© 2026 All rights reserved</footer></body></html>"
    )
    doc = _one(path)
    assert (doc.title, doc.publisher, doc.date, doc.language) == (
        "Bank Sector Review",
        "Lakeside Research",
        "2026-02-01",
        "en",
    )
    assert "## Margins" in doc.text and "## Outlook" in doc.text
    assert "| A | 1.6% |" in doc.text
    for boilerplate in ("Menu", "rights reserved", "var x"):
        assert boilerplate not in doc.text


def test_pdf_text_and_page_furniture(tmp_path: Path) -> None:
    pages = [
        [
            "Harborline Research | Copper Outlook",
            "Publisher: Harborline Research",
            "Date: 2026-04-02",
            "1. Supply",
            f"Mine supply grew 2.1% on page {n}.",
            f"Page {n} of 3",
        ]
        if n == 1
        else [
            "Harborline Research | Copper Outlook",
            f"{n}. Section {n}",
            f"Demand text on page {n}.",
            f"Page {n} of 3",
        ]
        for n in (1, 2, 3)
    ]
    doc = _one(make_pdf(tmp_path / "copper.pdf", pages))
    assert doc.publisher == "Harborline Research" and doc.date == "2026-04-02"
    assert doc.title == "Copper Outlook 2026"
    assert "Mine supply grew 2.1%" in doc.text and "Demand text on page 3." in doc.text
    assert "Page 2 of 3" not in doc.text
    assert "Harborline Research | Copper Outlook" not in doc.text


def test_encrypted_pdf_is_rejected(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "locked.pdf", [["Secret numbers 1.5%"]], encrypt="s3cret")
    assert "encrypted PDF" in _rejected(path)


def test_corrupt_pdf_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage garbage\n%%EOF")
    assert "PDF" in _rejected(path)


def test_cnxml_sections_and_collection_metadata(tmp_path: Path) -> None:
    module = tmp_path / "modules" / "m90001" / "index.cnxml"
    module.parent.mkdir(parents=True)
    module.write_text(
        '<document xmlns="http://cnx.rice.edu/cnxml"><title>Time Value of Money</title>'
        '<metadata xmlns:md="http://cnx.rice.edu/mdml"><md:content-id>m90001</md:content-id></metadata>'
        '<content><section id="s1"><title>Present Value</title><para id="p1">A dollar today is worth more.</para>'
        '<list id="l1"><item>Discounting</item><item>Compounding</item></list></section>'
        '<section id="s2"><title>Future Value</title><para id="p2">FV = PV (1 + r)^n.</para>'
        '<table id="t1"><tgroup cols="2"><tbody><row><entry>r</entry><entry>5%</entry></row></tbody></tgroup></table>'
        "</section></content></document>"
    )
    index = CollectionIndex()
    index.add(
        b'<col:collection xmlns:col="http://cnx.rice.edu/collxml" xmlns:md="http://cnx.rice.edu/mdml">'
        b"<col:metadata><md:title>Principles</md:title></col:metadata><col:content><col:subcollection>"
        b'<md:title>Money and Time</md:title><col:content><col:module document="m90001"/></col:content>'
        b"</col:subcollection></col:content></col:collection>"
    )
    storage = Storage()
    (item,) = read_file(storage.list_files(module)[0], storage, DataConfig(), index)
    assert isinstance(item, Document)
    assert item.kind == "textbook" and item.title == "Time Value of Money"
    assert item.subject == "Money and Time" and item.meta["book"] == "Principles"
    assert "## Present Value" in item.text and "## Future Value" in item.text
    assert "- Discounting" in item.text and "| r | 5% |" in item.text


def test_jsonl_records_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "news.jsonl"
    lines = [
        json.dumps({"id": "a1", "title": "Rates cut", "date": "2026-05-12", "text": "The bank cut rates."}),
        "{not json",
        json.dumps({"title": "no text"}),
        "",
        json.dumps({"text": "央行宣布降准。", "publisher": "新华"}, ensure_ascii=False),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = _read(path)
    docs = [i for i in items if isinstance(i, Document)]
    bad = [i for i in items if isinstance(i, InputRejected)]
    assert docs[0].title == "Rates cut" and docs[0].source.endswith("#a1")
    assert docs[1].language == "zh" and docs[1].publisher == "新华"
    assert [b.path.rsplit("#", 1)[1] for b in bad] == ["L2", "L3"]
    assert "invalid JSON" in bad[0].reason and '"text"' in bad[1].reason


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("binary.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4, "binary content"),
        (
            "latin1.txt",
            "Caf\u00e9 cr\u00e8me, co\u00fbt 3\u00a0% \u2014 \u00e9t\u00e9".encode("cp1252"),
            "undecodable bytes",
        ),
        ("table.xlsx", b"PK\x03\x04 not a supported type", "unsupported file type '.xlsx'"),
        ("notes.xml", b"<root><a>1</a></root>", "not a CNXML document"),
        ("broken.cnxml", b"<document><unclosed>", "malformed XML"),
    ],
)
def test_bad_inputs_are_rejected_with_a_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert reason in _rejected(path)


def test_oversized_file_is_rejected_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    path.write_bytes(b"word " * 300_000)  # 1.5 MB on one line
    reason = _rejected(path, max_document_mb=1)
    assert "1.5 MB" in reason and "data.max_document_mb" in reason
