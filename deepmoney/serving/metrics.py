"""Prometheus metrics of the chain, served on the ModelServer's `/metrics` beside KServe's own.

Latency histograms are labelled by the LLM's model name and the step, so that a dashboard shows
where a request's time goes (the step's own work versus waiting for the LLM); token counters show
what each step costs the LLM.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

STEP_SECONDS = Histogram(
    "deepmoney_step_seconds", "Wall time of one chain step, LLM calls included.", ["model", "step"], buckets=_BUCKETS
)
LLM_SECONDS = Histogram(
    "deepmoney_llm_seconds", "Wall time of the LLM call a step makes.", ["model", "step"], buckets=_BUCKETS
)
LLM_TOKENS = Counter("deepmoney_llm_tokens", "Tokens of the LLM calls, by step and kind.", ["model", "step", "kind"])
STEP_FAILURES = Counter("deepmoney_step_failures", "Steps that failed, by HTTP status.", ["step", "status"])
CHAIN_REQUESTS = Counter("deepmoney_chain_requests", "Chain requests, by outcome.", ["outcome"])
EMBEDDED_BATCH = Histogram(
    "deepmoney_embedded_batch_size", "Requests per batch of the embedded LLM predictor.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)  # fmt: skip
INTAKE_VERDICTS = Counter("deepmoney_intake_verdicts", "News the intake labelled, by label and novelty.",
                          ["label", "novelty"])  # fmt: skip
COMPUTED = Counter("deepmoney_computed", "Step-3 computations, by method and whose specification ran.",
                   ["method", "source"])  # fmt: skip
