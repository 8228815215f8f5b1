"""The service on a tiny trained model: the embedded predictor's OpenAI API and the chain, and the CLI verbs.

The model is trained here for a few steps (pt, one CPU process) from the tiny random-init model, so
its answers are nonsense — which is the point: with each step's JSON schema enforced by
constrained decoding, even this model's answers parse, and the chain runs end to end. The verbs
`deepmoney serve` and `deepmoney analyze` are run as a user would, in their own processes.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import jsonschema
import openai
import pytest

from deepmoney.config import load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.serving.server import BackgroundServer, ServeOptions
from tests.conftest import ROOT, SAMPLE_CORPUS, _free_port, assert_clean_error, refused_url, run_cli
from tests.test_train import train_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SAMPLE_CORPUS.is_dir(), reason="sample corpus not present")]

SMALL = {"sectors_max_tokens": 48, "method_max_tokens": 96, "analysis_max_tokens": 128}
SMALL_ENV = {f"DEEPMONEY_SERVING__{k.upper()}": str(v) for k, v in SMALL.items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("serving-model")
    config = load_config(overrides=overrides_from_flags(**{"data.block_size": 128, "data.workers": 1}))
    build_pt([str(SAMPLE_CORPUS)], str(tiny_model), str(root / "pt"), config, quiet=True)
    result = train_cli(tiny_model, root / "pt", root / "run", "--stage", "pt", "--launcher", "local", "--nproc", "1",
                       "--zero", "0", "--max-steps", "6", "--micro-batch", "4", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "final"


@pytest.fixture(scope="module")
def server(trained: Path) -> BackgroundServer:
    config = load_config()
    for key, value in SMALL.items():
        setattr(config.serving, key, value)
    with BackgroundServer(ServeOptions(config=config, model_dir=trained, port=0)) as running:
        yield running


def _client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/openai/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_chain_runs_on_the_trained_model(server: BackgroundServer) -> None:
    response = httpx2.post(server.url + "/v1/models/chain:predict", timeout=300,
                           json={"news": "OPEC cut output; oil prices jumped 8%.", "date": "2016-12-01"})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["answers"]) == 3
    for step, answer in zip(("sectors", "method", "analysis"), body["answers"], strict=True):
        assert isinstance(json.loads(answer), dict), f"{step}: {answer!r}"  # constrained: JSON whatever the model
    assert body["sectors"] and body["method"] and body["data_requested"] and body["analysis"]
    assert body["direction"] in ("positive", "negative", "mixed", "unclear")
    assert isinstance(body["data"], list) and body["request_id"]
    assert body["timings_ms"]["chain"] > 0 and set(body["llm_ms"]) == {"sectors", "method", "analysis"}


def test_openai_api_plain_and_streamed(server: BackgroundServer) -> None:
    client = _client(server)
    assert [m.id for m in client.models.list().data] == ["deepmoney"]
    messages = [{"role": "user", "content": "What moves bank stocks when rates rise?"}]
    plain = client.chat.completions.create(model="deepmoney", messages=messages, max_tokens=24, temperature=0)
    text = plain.choices[0].message.content
    assert isinstance(text, str) and plain.usage.completion_tokens > 0 and plain.usage.prompt_tokens > 5
    assert plain.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="deepmoney", messages=messages, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text  # greedy: the same reply
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]


def test_openai_api_follows_a_json_schema(server: BackgroundServer) -> None:
    sectors = {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3}
    schema = {"type": "object", "properties": {"sectors": sectors}, "required": ["sectors"],
              "additionalProperties": False}  # fmt: skip
    reply = _client(server).chat.completions.create(
        model="deepmoney", messages=[{"role": "user", "content": "Which sectors?"}], max_tokens=80, temperature=0.7,
        seed=3, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )  # fmt: skip
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_openai_api_refuses_bad_requests_with_4xx(server: BackgroundServer) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="exceeds the model's context"):
        client.chat.completions.create(model="deepmoney", messages=[{"role": "user", "content": "word " * 5000}],
                                       max_tokens=8)  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="deepmoney", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=10**6)  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="deepmoney", messages=[{"role": "wizard", "content": "hi"}])
    raw = httpx2.post(server.url + "/openai/v1/chat/completions", content=b"{nope", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    assert httpx2.get(server.url + "/v2/models/deepmoney/ready").status_code == 200


def test_concurrent_requests_are_batched(server: BackgroundServer) -> None:
    def batches() -> tuple[float, float]:
        text = httpx2.get(server.url + "/metrics").text
        count = float(re.search(r"deepmoney_embedded_batch_size_count (\S+)", text).group(1))
        total = float(re.search(r"deepmoney_embedded_batch_size_sum (\S+)", text).group(1))
        return count, total

    before = batches()

    async def ask() -> list[openai.types.chat.ChatCompletion]:
        client = openai.AsyncOpenAI(base_url=server.url + "/openai/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(client.chat.completions.create(
            model="deepmoney", messages=[{"role": "user", "content": f"Question {i} about copper."}], max_tokens=12,
            temperature=0) for i in range(16)))  # fmt: skip

    replies = asyncio.run(ask())
    assert len(replies) == 16 and all(r.choices[0].message.content is not None for r in replies)
    after = batches()
    assert after[1] - before[1] == 16 and after[0] - before[0] < 16  # 16 requests in fewer batches


# ------------------------------------------------------------------ the CLI verbs, as a user runs them


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"deepmoney serve exited {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            if httpx2.get(url + "/v2/models/chain/ready", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("deepmoney serve did not become ready")


def test_serve_and_analyze_from_the_command_line(trained: Path, tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**SMALL_ENV}
    process = subprocess.Popen([sys.executable, "-m", "deepmoney", "serve", "--model", str(trained), "--port",
                                str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**__import__("os").environ, **env})  # fmt: skip
    try:
        _wait_ready(url, process)
        taken = run_cli("serve", "--model", str(trained), "--port", str(port), env=env)
        assert_clean_error(taken, f"port {port} on 127.0.0.1 is in use")

        result = run_cli("analyze", "--url", url, "The Fed raised rates by 50 basis points.", "--date", "2006-05-10",
                         "--charts", str(tmp_path / "charts"))  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1
        answer = json.loads(lines[0])
        assert isinstance(answer["sectors"], list) and len(answer["answers"]) == 3 and answer["request_id"]
        assert isinstance(answer["data"], list) and "chain" in answer["timings_ms"]
        computed = answer["computed"]  # the tiny model's specification is noise: the default ran, or none could
        assert computed["source"] == "default" and computed["spec_error"]
        if computed["figures"] is not None:
            assert Path(computed["chart_png"]).read_bytes().startswith(b"\x89PNG")  # --charts wrote it
        else:
            assert computed["error"] and not computed["chart_png"]

        news = tmp_path / "news.jsonl"
        news.write_text("\n".join(json.dumps({"id": f"n{i}", "text": f"Copper rose {i}%.", "date": "2010-01-04"})
                                  for i in range(4)) + "\n", encoding="utf-8")  # fmt: skip
        many = run_cli("analyze", "--url", url, "--file", str(news), "--concurrency", "4")
        assert many.returncode == 0, many.stderr
        assert [json.loads(line)["id"] for line in many.stdout.splitlines()] == ["n0", "n1", "n2", "n3"]

        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2}\n', encoding="utf-8")
        assert_clean_error(run_cli("analyze", "--url", url, "--file", str(bad)), "bad.jsonl:2", "'news' (or 'text')")
        assert_clean_error(run_cli("analyze", "--url", url, "   "), "the news text is empty")
        assert_clean_error(run_cli("analyze", "--url", url, "x", "--date", "May 2006"), "--date 'May 2006'")
        refused = run_cli("analyze", "--url", url, "Oil rose.", "--language", "fr")
        assert refused.returncode == 2 and json.loads(refused.stdout)["status"] == 400
        assert "language 'fr' is not supported" in refused.stderr
        assert httpx2.get(url + "/v2/health/ready").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM, 143)
    assert process.stdout.read() == ""  # stdout carries results only; a server has none


def test_serve_and_analyze_refuse_bad_invocations(tmp_path: Path) -> None:
    assert_clean_error(run_cli("serve"), "pass --model")
    assert_clean_error(run_cli("serve", "--model", str(tmp_path / "nope")), "no such directory")
    assert_clean_error(run_cli("serve", "--llm", "http://127.0.0.1:1/v1#m", "--steps", "sectors,vibes"),
                       "unknown step 'vibes'")  # fmt: skip
    assert_clean_error(run_cli("analyze", "--url", "localhost:8080", "x"), "expected http(s)://HOST:PORT")
    down = run_cli("analyze", "--url", refused_url().removesuffix("/v1"), "Oil rose.")
    assert down.returncode == 128 and "does not answer" in down.stderr and "Traceback" not in down.stderr
    assert_clean_error(run_cli("serve", "render", "--model-uri", "s3://m/x", "--gpus", "12", "--nodes", "8"),
                       "GPUs must divide evenly over nodes")  # fmt: skip
