"""LLM clients for the synthesis roles and the serving steps.

Every role (summarizer, questioner, answerer, extractor) is reached through the same interface,
whether the model sits behind an OpenAI-compatible HTTP endpoint (vLLM, KServe, a hosted API) or
runs in this process (the offline default).
"""
