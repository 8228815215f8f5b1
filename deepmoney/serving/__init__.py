"""KServe models and the builders of InferenceService / InferenceGraph objects (the serving issue fills this in).

Serving imports only the building blocks (`models`, `llm`, `analysis`, and next `marketdata`):
an import-linter contract keeps training, evaluation and synthesis — and DeepSpeed — out of the
serving image.
"""
