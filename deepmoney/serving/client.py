"""`deepmoney analyze`: send news items to a running chain and print one JSON answer per item.

The URL is a server's base (`http://127.0.0.1:8080`, posted to its `chain` model) or, with
`graph=True`, an InferenceGraph's URL (posted to as is). Items are sent concurrently, each with
its own request id; the answers are printed in input order. An item the server refuses is printed
as `{"id", "status", "error"}`; the run then fails (exit 2 when a request was wrong, 128 when the
service failed), so that a partial answer is never mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deepmoney.errors import ServiceUnavailable, UserError
from deepmoney.jsonl import json_lines
from deepmoney.llm.client import nodelay_transport

log = logging.getLogger(__name__)

CHAIN_PATH = "/v1/models/chain:predict"


@dataclass
class Answer:
    """What the service answered for one item."""

    id: str
    status: int
    body: dict[str, Any]


def chain_url(url: str, graph: bool = False) -> str:
    """Where to post: the chain model of the server at `url`, or `url` itself for an InferenceGraph."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--url {url!r}: expected http(s)://HOST:PORT, e.g. http://127.0.0.1:8080")
    if graph or parts.path.strip("/"):
        return url
    return url.rstrip("/") + CHAIN_PATH


def read_items(path: Path) -> list[dict[str, Any]]:
    """News items of a JSONL file: `news` (or `text`), and optional `id`, `date`, `language`."""
    items = []
    for number, where, record in json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("news", record.get("text")), str):
            raise UserError(f"{where}: expected an object with a 'news' (or 'text') string")
        item = {"news": record.get("news", record.get("text")), "id": str(record.get("id", number))}
        for key in ("date", "language"):
            if record.get(key) is not None:
                item[key] = str(record[key])
        items.append(item)
    if not items:
        raise UserError(f"--file {path}: no news items in it")
    return items


def one_item(text: str, date: str | None, language: str | None) -> dict[str, Any]:
    """The request for one news text given on the command line."""
    if not text.strip():
        raise UserError("the news text is empty: pass the text to analyse, or --file news.jsonl")
    item: dict[str, Any] = {"news": text, "id": "1"}
    if date is not None:
        try:
            item["date"] = dt.date.fromisoformat(date).isoformat()
        except ValueError:
            raise UserError(f"--date {date!r}: expected a date as YYYY-MM-DD") from None
    if language is not None:
        item["language"] = language
    return item


async def _send(client: Any, url: str, item: dict[str, Any], limit: asyncio.Semaphore) -> Answer:
    import httpx2

    request_id = uuid.uuid4().hex
    async with limit:
        try:
            response = await client.post(url, json=item, headers={"x-request-id": request_id})
        except httpx2.TimeoutException:
            return Answer(item["id"], 504, {"error": "no answer before the client's timeout (--timeout)"})
        except httpx2.TransportError as exc:
            raise ServiceUnavailable(f"the analysis service at {url} does not answer ({exc}); start it with "
                                     "`deepmoney serve` or check --url") from None  # fmt: skip
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:300]}
    if not isinstance(body, dict):
        body = {"error": f"unexpected answer {str(body)[:200]}"}
    return Answer(item["id"], response.status_code, body)


def http_client(concurrency: int, timeout: float) -> Any:
    """An async HTTP client with a keep-alive connection per concurrent request and Nagle's algorithm off
    (with it on, each request waits 40 ms for the server's delayed ACK: fifty ModelServer hops)."""
    import httpx2

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx2.AsyncClient(timeout=timeout, transport=nodelay_transport(limits))


async def _analyze(url: str, items: list[dict[str, Any]], concurrency: int, timeout: float) -> list[Answer]:
    limit = asyncio.Semaphore(concurrency)
    async with http_client(concurrency, timeout) as client:
        return list(await asyncio.gather(*(_send(client, url, item, limit) for item in items)))


def analyze(url: str, items: list[dict[str, Any]], concurrency: int = 8, timeout: float = 900.0) -> list[Answer]:
    """Every item's answer from the chain at `url` (already a full URL: `chain_url`), in input order."""
    return asyncio.run(_analyze(url, items, concurrency, timeout))


def save_charts(answers: list[Answer], directory: Path) -> int:
    """Write each answer's computed chart to `directory/<id>.png`, the path replacing the base64 in the answer."""
    import base64
    import re

    from deepmoney.storage import atomic_write_bytes

    saved = 0
    for answer in answers:
        computed = answer.body.get("computed") if answer.status == 200 else None
        if isinstance(computed, dict) and computed.get("chart_png"):
            path = directory / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', answer.id) or 'item'}.png"
            atomic_write_bytes(path, base64.b64decode(computed["chart_png"]))
            computed["chart_png"] = str(path)
            saved += 1
    return saved


def report(answers: list[Answer]) -> tuple[list[str], UserError | None]:
    """The JSON lines to print, and the error that ends the run when any item failed."""
    lines, failed = [], [a for a in answers if a.status != 200]
    for answer in answers:
        body = {"id": answer.id, **answer.body} if answer.status == 200 else {"id": answer.id, "status": answer.status,
                                                                              **answer.body}  # fmt: skip
        lines.append(json.dumps(body, ensure_ascii=False))
    if not failed:
        return lines, None
    first = failed[0]
    message = f"{len(failed)} of {len(answers)} items failed; the first, {first.id}: HTTP {first.status} " \
              f"{first.body.get('error', '')}"  # fmt: skip
    if all(a.status >= 500 for a in failed):
        return lines, ServiceUnavailable(message)
    return lines, UserError(message)
