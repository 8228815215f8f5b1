"""The news-analysis service: KServe models (the embedded OpenAI-compatible LLM predictor, one model
per chain step, `chain`), its loopback server, the `analyze` client, and the builders of the
InferenceService / LLMInferenceService / InferenceGraph objects that serve it on a cluster.

Serving imports only the building blocks (`models`, `llm`, `analysis`, `marketdata`): an
import-linter contract keeps training, evaluation and synthesis — and DeepSpeed — out of the
serving image.
"""
