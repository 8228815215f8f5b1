"""The chain's orchestration overhead and throughput, and the embedded predictor's batching.

Part 1 — orchestration. A scripted OpenAI-compatible LLM answers every request after exactly L
seconds (its own process); `deepmoney serve --llm` hosts the chain (its own process, with a bare
KServe echo model beside it); this process is the client. For each chain request:

    overhead = client-observed chain time - the LLM time its three LLM steps measured

reported p50/p95 as a fraction of the LLM time and per step (overhead / 4 steps), at 1 and 32
concurrent clients, beside two baselines measured in the same run: direct LLM calls (the same
client class calling the LLM, no chain), and the echo model (one ModelServer hop with an empty
body of work: the floor of any step, at the same concurrency). Throughput at 32 clients is
compared with the ideal C / (3 L) of a fixed-latency LLM, and the CPU cores each process kept
busy while the chains ran are shown (a Python process is one event loop: near 1.0, it is the
bottleneck, whatever the machine's other cores do).
Workloads: L = 50 ms, 200 ms and 1 s (a 67B model's answer takes seconds).

Part 2 — batching. `deepmoney serve --model` on a locally made random-init model (presets tiny
and small), 32 concurrent OpenAI chat requests of 32 new tokens each: completion tokens/s with
batching (serving.max_batch 32) against one request at a time (max_batch 1).

    .venv/bin/python benchmarks/chain_latency.py [--latencies 0.05,0.2] [--presets tiny,small] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"overhead_fraction_p50": 0.05, "per_step_vs_echo_p50": 2.0, "throughput_vs_ideal": 0.9, "batching": 3.0}


def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------------ processes


def _scripted_llm(latency: float) -> None:
    """Child process: the fixed-latency LLM; prints its base URL, serves until stdin closes."""
    from deepmoney.llm.scripted_server import Capacity, ScriptedOpenAIServer

    def answer(model: str, messages: list[dict[str, str]]) -> str:
        user = messages[-1]["content"]
        if '{"sectors": [' in user:
            return json.dumps({"sectors": ["Energy", "Transportation"]})
        if '{"method": ' in user:
            return json.dumps({"method": "An event study.", "data": ["WTI crude oil price", "S&P 500 index"]})
        return json.dumps({"analysis": "WTI fell 3% over the window.", "direction": "negative"})

    with ScriptedOpenAIServer(responder=answer, models=("bench",), capacity=Capacity(None, latency, 0.0)) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


def _chain_server(llm: str, port: int) -> None:
    """Child process: the chain server with an echo model beside it."""
    from deepmoney.serving.kserve_import import import_kserve

    import_kserve()
    from kserve import Model

    from deepmoney.config import load_config
    from deepmoney.logs import setup_logging
    from deepmoney.serving.server import ServeOptions, serve_forever

    class Echo(Model):
        def load(self) -> bool:
            self.ready = True
            return True

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            return payload

    setup_logging(quiet=True)
    serve_forever(ServeOptions(config=load_config(), llm=llm, port=port, extra_models=[Echo("echo")]))


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, model: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx2.get(f"{url}/v2/models/{model}/ready", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


# ------------------------------------------------------------------------------------ part 1


async def _clients(concurrency: int, requests: int, call: Any) -> tuple[list[Any], float]:
    """`requests` calls from `concurrency` clients, each starting its next call when the last one ends."""
    results: list[Any] = []
    todo = iter(range(requests))

    async def client() -> None:
        for i in todo:
            results.append(await call(i))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - start


async def _measure(url: str, llm: str, concurrency: int, requests: int, pids: dict[str, int]) -> dict[str, Any]:
    from deepmoney.llm.client import OpenAIChatClient, RetryPolicy, Sampling
    from deepmoney.llm.roles import parse_endpoint
    from deepmoney.serving.client import http_client

    async with http_client(concurrency + 4, 120) as http:

        async def chain(i: int) -> tuple[float, float]:
            started = time.perf_counter()
            item = {"news": f"OPEC cut output by {i % 97} percent.", "date": "2015-06-01"}
            response = await http.post(f"{url}/v1/models/chain:predict", json=item)
            elapsed = (time.perf_counter() - started) * 1000
            body = response.json()
            assert response.status_code == 200, body
            return elapsed, sum(body["llm_ms"].values())

        async def echo(i: int) -> float:
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/models/echo:predict", json={"news": f"item {i}"})
            assert response.status_code == 200
            return (time.perf_counter() - started) * 1000

        await _clients(min(concurrency, 4), 8, chain)  # warm-up: connections, lazy imports, the database
        before = {k: _cpu_seconds([pid]) for k, pid in pids.items()}
        chains, wall = await _clients(concurrency, requests, chain)
        cores = {k: (_cpu_seconds([pid]) - before[k]) / wall for k, pid in pids.items()}  # during the chains
        echoes, _ = await _clients(concurrency, requests * 4, echo)
    client = OpenAIChatClient(parse_endpoint("bench", llm), concurrency=concurrency, policy=RetryPolicy(timeout=60))

    async def direct(i: int) -> float:
        started = time.perf_counter()
        await client.chat([{"role": "user", "content": f"direct {concurrency} {i}"}], Sampling(max_tokens=64))
        return (time.perf_counter() - started) * 1000

    await _clients(min(concurrency, 4), 8, direct)
    directs, _ = await _clients(concurrency, requests * 3, direct)
    await client.aclose()
    overhead = [total - llm for total, llm in chains]
    fractions = [(total - llm) / llm for total, llm in chains]
    return {
        "chain_ms": _quantiles([t for t, _ in chains]), "llm_ms": _quantiles([llm for _, llm in chains]),
        "overhead_ms": _quantiles(overhead), "overhead_fraction": _quantiles(fractions),
        "per_step_overhead_ms": tuple(v / 4 for v in _quantiles(overhead)), "echo_ms": _quantiles(echoes),
        "direct_ms": _quantiles(directs), "throughput": requests / wall, "cores": cores,
        "cores_busy": sum(cores.values()),
    }  # fmt: skip


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def orchestration(latencies: list[float], requests: int) -> list[dict[str, Any]]:
    """Part 1 for each LLM latency, at 1 and 32 clients."""
    rows = []
    for latency in latencies:
        llm_process = _spawn(__file__, "--_llm", str(latency))
        base = llm_process.stdout.readline().strip()
        llm = f"{base}#bench"
        port = _free_port()
        server = _spawn(__file__, "--_server", llm, str(port))
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, "chain", server)
            for concurrency in (1, 32):
                # Whole rounds: every client makes the same number of requests, so the last round is as
                # full as the first (a partial last round would count its clients' idle time as ours).
                rounds = requests if concurrency == 1 else max(3, requests // 4)
                if latency >= 1.0:  # the same statistics in a quarter of the time
                    rounds = max(3, rounds // 4)
                n = rounds * concurrency
                pids = {"llm": llm_process.pid, "server": server.pid, "client": os.getpid()}
                result = asyncio.run(_measure(url, llm, concurrency, n, pids))
                ideal = concurrency / (3 * latency)
                per_step = result["per_step_overhead_ms"][0] / result["echo_ms"][0]
                rows.append({"latency_s": latency, "clients": concurrency, "requests": n, **result,
                             "ideal_throughput": ideal, "throughput_vs_ideal": result["throughput"] / ideal,
                             "chain_vs_3_direct_p50": result["chain_ms"][0] / (3 * result["direct_ms"][0]),
                             "per_step_vs_echo_p50": per_step})  # fmt: skip
        finally:
            _stop(server)
            llm_process.stdin.close()
            _stop(llm_process)
    return rows


# ------------------------------------------------------------------------------------ part 2


def _make_model(preset: str, directory: Path) -> Path:
    from deepmoney.config import load_config, overrides_from_flags
    from deepmoney.model_init import init_model

    output = directory / preset
    init_model([str(ROOT / "examples" / "corpus")], str(output), load_config(overrides=overrides_from_flags(
        **{"model.preset": preset})), quiet=True)  # fmt: skip
    return output


async def _tokens_per_second(url: str, clients: int, requests: int, max_tokens: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0, timeout=600)

    async def ask(i: int) -> int:
        reply = await client.chat.completions.create(
            model="deepmoney", messages=[{"role": "user", "content": f"Question {i}: what moves copper prices?"}],
            max_tokens=max_tokens, temperature=0)  # fmt: skip
        return reply.usage.completion_tokens

    await _clients(2, 2, ask)  # warm-up
    tokens, wall = await _clients(clients, requests, ask)
    await client.close()
    return sum(tokens) / wall


def batching(presets: list[str], clients: int, requests: int, max_tokens: int) -> list[dict[str, Any]]:
    """Part 2 for each preset: tokens/s with batches of up to 32 against one request at a time."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for preset in presets:
            model = _make_model(preset, Path(scratch))
            rates = {}
            for max_batch in (32, 1):
                port = _free_port()
                server = _spawn("-m", "deepmoney", "-q", "serve", "--model", str(model), "--port", str(port),
                                env={"DEEPMONEY_SERVING__MAX_BATCH": str(max_batch)})  # fmt: skip
                url = f"http://127.0.0.1:{port}"
                try:
                    _wait_ready(url, "deepmoney", server)
                    rates[max_batch] = asyncio.run(_tokens_per_second(url, clients, requests, max_tokens))
                finally:
                    _stop(server)
            rows.append({"preset": preset, "clients": clients, "max_tokens": max_tokens, "batched_tok_s": rates[32],
                         "one_at_a_time_tok_s": rates[1], "batching": rates[32] / rates[1]})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------ report


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:7.2f} / {pair[1]:7.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_llm":
        return _scripted_llm(float(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "--_server":
        return _chain_server(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", default="0.05,0.2,1.0", help="LLM latencies L in seconds, comma-separated")
    parser.add_argument("--requests", type=int, default=40, help="chain requests at 1 client (rounds/4 at 32)")
    parser.add_argument("--presets", default="tiny,small", help="model presets of the batching part ('' skips it)")
    parser.add_argument("--batch-requests", type=int, default=96, help="requests per batching measurement")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens per batching request")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, not a measurement)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.batch_requests = 8, 32
    rows = orchestration([float(v) for v in args.latencies.split(",")], args.requests)
    print("part 1: chain orchestration (p50 / p95, ms)")
    print(f"{'L s':>5} {'C':>3} {'chain':>17} {'LLM':>17} {'overhead':>17} {'ovh/LLM':>15} {'per step':>17} "
          f"{'echo':>17} {'direct':>17} {'req/s':>7} {'/ideal':>6} {'cores':>5}")  # fmt: skip
    for r in rows:
        fraction = f"{r['overhead_fraction'][0]:6.3f}/{r['overhead_fraction'][1]:6.3f}"
        print(f"{r['latency_s']:>5} {r['clients']:>3} {_ms(r['chain_ms'])} {_ms(r['llm_ms'])} {_ms(r['overhead_ms'])} "
              f"{fraction:>15} {_ms(r['per_step_overhead_ms'])} {_ms(r['echo_ms'])} {_ms(r['direct_ms'])} "
              f"{r['throughput']:7.1f} {r['throughput_vs_ideal']:6.2f} {r['cores_busy']:5.2f}")  # fmt: skip
    print(
        "  cores busy (LLM / chain server / clients): "
        + ", ".join(
            f"L={r['latency_s']} C={r['clients']}: " + "/".join(f"{v:.2f}" for v in r["cores"].values()) for r in rows
        )
    )
    print("  per step / echo p50: " + ", ".join(f"L={r['latency_s']} C={r['clients']}: {r['per_step_vs_echo_p50']:.2f}"
                                              for r in rows))  # fmt: skip
    print("  chain / 3 direct calls p50: " + ", ".join(
        f"L={r['latency_s']} C={r['clients']}: {r['chain_vs_3_direct_p50']:.3f}" for r in rows))  # fmt: skip
    batch_rows = batching([p for p in args.presets.split(",") if p], 32, args.batch_requests, args.max_tokens)
    print("part 2: embedded predictor, 32 clients")
    for r in batch_rows:
        print(f"  {r['preset']:>6}: batched {r['batched_tok_s']:8.1f} tok/s, one at a time "
              f"{r['one_at_a_time_tok_s']:8.1f} tok/s: x{r['batching']:.2f}")  # fmt: skip
    print(json.dumps({"goals": GOALS, "orchestration": rows, "batching": batch_rows}))


if __name__ == "__main__":
    main()
