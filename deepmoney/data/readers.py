"""Readers: one function per format, each turning the bytes of one file into Documents.

`read_file` dispatches on the extension and yields `Document`s, or `InputRejected` records for
inputs that cannot be used (the caller writes those to rejected.jsonl and goes on).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import yaml

from deepmoney.config import DataConfig
from deepmoney.data.clean import strip_page_furniture
from deepmoney.data.document import Document
from deepmoney.data.text import decode_text, detect_language, find_date
from deepmoney.errors import InputRejected
from deepmoney.storage import FileRef, Storage

FORMATS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".cnxml": "cnxml",
    ".xml": "xml",
    ".jsonl": "jsonl",
}
CNXML_NS = "http://cnx.rice.edu/cnxml"
COLLXML_NS = "http://cnx.rice.edu/collxml"
MDML_NS = "http://cnx.rice.edu/mdml"

ReadResult = Document | InputRejected


def _name(uri: str) -> str:
    return PurePosixPath(uri).name


def _suffix(uri: str) -> str:
    return PurePosixPath(uri).suffix.lower()


# -- metadata helpers -------------------------------------------------------------------------

_FIELD_ALIASES = {
    "title": "title",
    "标题": "title",
    "题目": "title",
    "publisher": "publisher",
    "source": "publisher",
    "发布机构": "publisher",
    "机构": "publisher",
    "来源": "publisher",
    "研究机构": "publisher",
    "date": "date",
    "published": "date",
    "日期": "date",
    "发布日期": "date",
    "subject": "subject",
    "sector": "subject",
    "主题": "subject",
    "行业": "subject",
    "author": "author",
    "authors": "author",
    "作者": "author",
    "分析师": "author",
    "language": "language",
    "语言": "language",
}
_HEADER_LINE = re.compile(r"^\s*([A-Za-z\u4e00-\u9fff ]{2,12})\s*[:：]\s*(.+?)\s*$")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n", re.DOTALL)


def _split_front_matter(text: str) -> tuple[dict[str, str], str]:
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    fields = {_FIELD_ALIASES.get(str(k).lower(), str(k).lower()): str(v) for k, v in data.items() if v is not None}
    return fields, text[match.end() :]


def _split_header_lines(text: str) -> tuple[dict[str, str], str]:
    """`Title: …` / `发布机构：…` lines at the top of a text file are metadata, not body."""
    fields: dict[str, str] = {}
    lines = text.split("\n", 20)
    consumed = 0
    for i, line in enumerate(lines[:20]):
        if not line.strip():
            if fields:
                consumed = i + 1
                break
            continue
        match = _HEADER_LINE.match(line)
        key = _FIELD_ALIASES.get(match.group(1).strip().lower()) if match else None
        if not key:
            break
        fields[key] = match.group(2)
        consumed = i + 1
    if not fields:
        return {}, text
    return fields, "\n".join(lines[consumed:])


def _title_from_text(text: str, fallback: str) -> str:
    for line in text.split("\n", 30)[:30]:
        stripped = line.strip()
        if stripped.startswith("# "):
            return stripped[2:].strip()
        if stripped:
            if len(stripped) <= 120:
                return stripped.lstrip("#").strip()
            words = stripped[:100].rsplit(" ", 1)[0] if " " in stripped[:100] else stripped[:60]
            return words + "…"
    return fallback


def _make_document(uri: str, text: str, fields: dict[str, str], kind: str = "report", **meta: object) -> Document:
    stem = PurePosixPath(uri).stem
    date_value = fields.get("date")
    iso = find_date(date_value) if date_value else None
    iso = iso or find_date(stem) or find_date(text[:2000])
    return Document(
        source=uri,
        text=text,
        title=fields.get("title") or _title_from_text(text, stem),
        publisher=fields.get("publisher"),
        date=iso,
        subject=fields.get("subject"),
        language=fields.get("language") or detect_language(text),
        kind=fields.get("kind", kind),
        meta={k: v for k, v in {**meta, "author": fields.get("author")}.items() if v},
    )


# -- readers -----------------------------------------------------------------------------------


def read_markdown(uri: str, data: bytes) -> Iterator[ReadResult]:
    """Markdown, with optional YAML front matter or `Key: value` header lines."""
    text = _HTML_COMMENT.sub("", decode_text(data, uri))
    fields, body = _split_front_matter(text)
    if not fields:
        fields, body = _split_header_lines(body)
    yield _make_document(uri, body, fields)


read_text = read_markdown  # plain text carries the same kinds of header; chapters differ later


def read_html(uri: str, data: bytes) -> Iterator[ReadResult]:
    """HTML: navigation, headers, footers and scripts dropped; headings and tables kept as Markdown."""
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(data, "lxml")
    if soup.body is None:
        raise InputRejected(uri, "HTML without a <body>; check the file")

    def meta(*names: str) -> str | None:
        for name in names:
            tag = soup.find("meta", attrs={"name": name}) or soup.find("meta", attrs={"property": name})
            if tag and tag.get("content"):
                return str(tag["content"]).strip()
        return None

    fields = {
        "title": (soup.title.string.strip() if soup.title and soup.title.string else None)
        or meta("og:title", "citation_title", "dc.title"),
        "publisher": meta("publisher", "citation_publisher", "dc.publisher", "og:site_name", "author"),
        "date": meta("date", "article:published_time", "citation_date", "dc.date", "pubdate"),
        "subject": meta("subject", "keywords", "dc.subject"),
        "language": (soup.html.get("lang") if soup.html else None),
    }
    for tag in soup(["nav", "footer", "header", "aside", "script", "style", "form", "noscript", "iframe"]):
        tag.decompose()
    converter = MarkdownConverter(heading_style="ATX", strip=["a", "img"], bullets="-")
    text = converter.convert_soup(soup.body)
    lang = fields.get("language")
    fields["language"] = lang.split("-")[0].lower() if lang else None
    yield _make_document(uri, text, {k: v for k, v in fields.items() if v})


def read_pdf(uri: str, data: bytes) -> Iterator[ReadResult]:
    """PDF text layer, page headers/footers removed. Encrypted and scanned PDFs are rejected."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except Exception:
                opened = 0
            if not opened:
                raise InputRejected(uri, "encrypted PDF (a password is required); decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata or {}
    except InputRejected:
        raise
    except Exception as exc:  # pypdf raises PdfReadError and many plain error types on damaged files
        raise InputRejected(uri, f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    pages = strip_page_furniture(pages)
    text = "\n\n".join(p for p in pages if p.strip())
    if not text.strip():
        raise InputRejected(uri, "PDF has no text layer (scanned images?); run OCR first")
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)  # words hyphenated across lines
    fields, body = _split_header_lines(text)
    title = info.get("/Title") if hasattr(info, "get") else None
    if title and str(title).strip():
        fields.setdefault("title", str(title).strip())
    author = info.get("/Author") if hasattr(info, "get") else None
    if author and str(author).strip():
        fields.setdefault("author", str(author).strip())
    yield _make_document(uri, body, fields, pages=len(pages))


@dataclass
class CollectionIndex:
    """What CNXML collection files say about their modules: book title and chapter (subcollection)."""

    modules: dict[str, dict[str, object]] = field(default_factory=dict)

    def add(self, data: bytes) -> None:
        """Index one `*.collection.xml`."""
        from lxml import etree

        root = etree.fromstring(data, parser=_safe_xml_parser())
        book = root.findtext(f".//{{{MDML_NS}}}title")
        order = 0

        def walk(node: etree._Element, chapter: str | None) -> None:
            nonlocal order
            for child in node:
                tag = etree.QName(child).localname
                if tag == "module":
                    order += 1
                    self.modules[child.get("document", "")] = {"book": book, "chapter": chapter, "order": order}
                elif tag == "subcollection":
                    walk(child, child.findtext(f"{{{MDML_NS}}}title") or chapter)
                elif tag == "content":
                    walk(child, chapter)

        content = root.find(f"{{{COLLXML_NS}}}content")
        if content is not None:
            walk(content, None)


def _safe_xml_parser():
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)


def _cnxml_to_markdown(content, depth: int = 2) -> str:
    from lxml import etree

    out: list[str] = []

    def text_of(el) -> str:
        return re.sub(r"\s+", " ", "".join(t for t in el.itertext())).strip()

    for child in content:
        if not isinstance(child.tag, str):
            continue
        tag = etree.QName(child).localname
        if tag in {"section", "example", "note", "exercise"}:
            title = child.find(f"{{{CNXML_NS}}}title")
            if title is not None and text_of(title):
                out.append("#" * min(depth, 6) + " " + text_of(title))
            inner = _cnxml_to_markdown(child, depth + 1)
            if inner:
                out.append(inner)
        elif tag == "title":
            continue
        elif tag == "list":
            out.append("\n".join(f"- {text_of(item)}" for item in child if text_of(item)))
        elif tag == "table":
            rows = child.iter(f"{{{CNXML_NS}}}row")
            lines = [" | ".join(text_of(e) for e in row if isinstance(e.tag, str)) for row in rows]
            out.append("\n".join(f"| {line} |" for line in lines if line.strip(" |")))
        elif tag in {"figure", "media", "image"}:
            caption = child.find(f".//{{{CNXML_NS}}}caption")
            if caption is not None and text_of(caption):
                out.append(text_of(caption))
        else:
            text = text_of(child)
            if text:
                out.append(text)
    return "\n\n".join(part for part in out if part)


def read_cnxml(uri: str, data: bytes, collections: CollectionIndex | None = None) -> Iterator[ReadResult]:
    """An OpenStax CNXML module: sections become Markdown headings so chapters split on them."""
    from lxml import etree

    try:
        root = etree.fromstring(data, parser=_safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise InputRejected(uri, f"malformed XML: {exc}") from None
    if etree.QName(root).namespace != CNXML_NS:
        raise InputRejected(uri, f"XML that is not a CNXML document (root <{etree.QName(root).localname}>)")
    title = root.findtext(f"{{{CNXML_NS}}}title") or root.findtext(f".//{{{MDML_NS}}}title")
    module_id = root.findtext(f".//{{{MDML_NS}}}content-id") or PurePosixPath(uri).parent.name
    content = root.find(f"{{{CNXML_NS}}}content")
    if content is None:
        raise InputRejected(uri, "CNXML document without <content>")
    body = _cnxml_to_markdown(content)
    text = f"# {title}\n\n{body}" if title else body
    where = (collections.modules.get(module_id) if collections else None) or {}
    fields = {"title": title or "", "subject": str(where.get("chapter") or "") or None}
    yield _make_document(
        uri,
        text,
        {k: v for k, v in fields.items() if v},
        kind="textbook",
        module=module_id,
        book=where.get("book"),
        order=where.get("order"),
    )


def is_collection(uri: str, head: bytes) -> bool:
    """Whether a file is a CNXML collection (a table of contents, not a document)."""
    return uri.endswith(".collection.xml") or (_suffix(uri) == ".xml" and COLLXML_NS.encode() in head[:2000])


def jsonl_records(uri: str, lines: list[tuple[int, bytes]], max_line_bytes: int) -> Iterator[ReadResult]:
    """Documents from numbered JSONL lines: `{"text": …}` plus optional title, publisher, date, subject, id."""
    for number, raw in lines:
        where = f"{uri}#L{number}"
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        if len(raw) > max_line_bytes:
            yield InputRejected(where, f"line of {len(raw) / 1e6:.1f} MB is above data.max_document_mb")
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield InputRejected(where, f"invalid JSON ({exc.__class__.__name__}: {exc})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            yield InputRejected(where, 'expected an object with a string "text" field')
            continue
        fields = {k: str(v) for k, v in record.items() if k != "text" and v not in (None, "")}
        source = f"{uri}#{fields['id']}" if "id" in fields else where
        fields = {_FIELD_ALIASES.get(k.lower(), k.lower()): v for k, v in fields.items()}
        yield _make_document(source, record["text"], fields, line=number)


def jsonl_chunks(uri: str, storage: Storage, size: int) -> Iterator[list[tuple[int, bytes]]]:
    """The numbered lines of a JSONL file or object, streamed in chunks of `size` lines."""
    chunk: list[tuple[int, bytes]] = []
    with storage.open_read(uri) as stream:
        # An S3 body iterates in fixed-size chunks, not lines; a local file iterates in lines.
        lines = stream.iter_lines(keepends=True) if hasattr(stream, "iter_lines") else stream
        for number, raw in enumerate(lines, start=1):
            chunk.append((number, raw))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def read_jsonl(uri: str, storage: Storage, max_line_bytes: int) -> Iterator[ReadResult]:
    """JSON Lines, streamed."""
    for chunk in jsonl_chunks(uri, storage, 1024):
        yield from jsonl_records(uri, chunk, max_line_bytes)


def read_file(
    ref: FileRef, storage: Storage, config: DataConfig, collections: CollectionIndex | None = None
) -> Iterator[ReadResult]:
    """All documents in one input file; problems come out as InputRejected, never as exceptions."""
    suffix = _suffix(ref.uri)
    kind = FORMATS.get(suffix)
    limit = int(config.max_document_mb * 1e6)
    try:
        if kind is None:
            supported = ", ".join(sorted(FORMATS))
            raise InputRejected(ref.uri, f"unsupported file type '{suffix or _name(ref.uri)}' (supported: {supported})")
        if ref.size == 0:
            raise InputRejected(ref.uri, "empty file")
        if kind == "jsonl":
            yield from read_jsonl(ref.uri, storage, limit)
            return
        if ref.size > limit:
            raise InputRejected(
                ref.uri,
                f"file is {ref.size / 1e6:.1f} MB, above data.max_document_mb={config.max_document_mb:g}; "
                "split it or raise the limit",
            )
        data = storage.read_bytes(ref.uri)
        readers: dict[str, Callable[[str, bytes], Iterator[ReadResult]]] = {
            "pdf": read_pdf,
            "html": read_html,
            "markdown": read_markdown,
            "text": read_text,
        }
        if kind in {"cnxml", "xml"}:
            if b"\x00" in data[:8192]:
                raise InputRejected(ref.uri, "binary content in an XML file (NUL bytes); check the file type")
            yield from read_cnxml(ref.uri, data, collections)
        else:
            yield from readers[kind](ref.uri, data)
    except InputRejected as rejected:
        yield rejected
