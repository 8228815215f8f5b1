"""Request throughput of the LLM client against a loopback server of fixed capacity.

The server runs at most C requests at once, each taking log-normal time with mean L, so no client
can exceed the ideal rate C / L. We print the rate our client achieves (bounded concurrency C,
each request sent the moment a slot frees) as a fraction of that ideal, and its ratio against the
batch-and-gather pattern (send 50, wait for all 50 including the slowest, send the next 50: how
distilabel-style pipelines drive an endpoint), measured in the same run against the same server.

    .venv/bin/python benchmarks/synth_throughput.py [--requests 1000] [--concurrency 16] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from deepmoney.llm.client import OpenAIChatClient, RetryPolicy, Sampling
from deepmoney.llm.roles import parse_endpoint
from deepmoney.llm.scripted_server import Capacity, ScriptedOpenAIServer


def _client(server: ScriptedOpenAIServer, concurrency: int) -> OpenAIChatClient:
    endpoint = parse_endpoint("answerer", f"{server.base_url}#test-model", environ={})
    return OpenAIChatClient(endpoint, concurrency=concurrency, policy=RetryPolicy(timeout=30))


def _messages(tag: str, i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{tag} question {i} about the chapter"}]


async def _warm(client: OpenAIChatClient, tag: str) -> None:
    """One request first, so that the SDK's lazy imports and connection set-up are not timed."""
    await client.chat(_messages(f"warm-up {tag}", 0), Sampling())


async def ours(server: ScriptedOpenAIServer, requests: int, concurrency: int) -> float:
    """Bounded concurrency: a new request starts the moment one finishes."""
    client = _client(server, concurrency)
    await _warm(client, "ours")
    start = time.perf_counter()
    await asyncio.gather(*(client.chat(_messages("ours", i), Sampling()) for i in range(requests)))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return requests / elapsed


async def batch_and_gather(server: ScriptedOpenAIServer, requests: int, batch: int) -> float:
    """Send `batch` requests, wait for the slowest of them, then send the next batch."""
    client = _client(server, batch)
    await _warm(client, "batch")
    start = time.perf_counter()
    for first in range(0, requests, batch):
        ids = range(first, min(first + batch, requests))
        await asyncio.gather(*(client.chat(_messages("batch", i), Sampling()) for i in ids))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="more requests, less end-of-run tail")
    parser.add_argument("--concurrency", type=int, default=16, help="server capacity C (and our client's bound)")
    parser.add_argument("--latency", type=float, default=0.2, help="mean request latency L in seconds")
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal shape of the latency")
    parser.add_argument("--batch", type=int, default=50, help="batch size of the batch-and-gather baseline")
    args = parser.parse_args()
    capacity = Capacity(concurrency=args.concurrency, mean_latency=args.latency, sigma=args.sigma)
    ideal = args.concurrency / args.latency
    with ScriptedOpenAIServer(capacity=capacity) as server:
        rate = asyncio.run(ours(server, args.requests, args.concurrency))
        baseline = asyncio.run(batch_and_gather(server, args.requests, args.batch))
    report = {
        "requests": args.requests, "capacity": args.concurrency, "mean_latency_s": args.latency,
        "ideal_rate": ideal, "our_rate": rate, "batch_and_gather_rate": baseline,
        "fraction_of_ideal": rate / ideal, "ratio_vs_batch_and_gather": rate / baseline,
    }  # fmt: skip
    print(f"server capacity C={args.concurrency}, mean latency L={args.latency}s: ideal C/L = {ideal:.1f} req/s")
    print(f"ours (bounded concurrency)   {rate:8.1f} req/s   {rate / ideal:5.2f} of ideal")
    print(f"batch-and-gather ({args.batch:>3})      {baseline:8.1f} req/s   {baseline / ideal:5.2f} of ideal")
    print(f"ratio ours / batch-and-gather {rate / baseline:5.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
