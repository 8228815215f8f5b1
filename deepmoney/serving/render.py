"""`deepmoney serve render`: the serving objects for one model and GPU layout, as YAML to `kubectl apply`.

The model's shape, when its config.json is given, is checked against the layout (tensor parallel
must divide the attention heads) and sizes the start-up allowance of the probes; the step models'
image is tied to this package's version unless another is given.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from deepmoney.errors import UserError
from deepmoney.kube import default_image, to_yaml
from deepmoney.models.shape import decoder_parameters
from deepmoney.serving.manifests import LLMSpec, StepSpec, llm_url, render, router_headers_note

log = logging.getLogger(__name__)

BYTES_PER_PARAMETER = 2  # bf16 weights


def read_model_config(path: str) -> dict[str, Any]:
    """A Hugging Face config.json, from its path or its model directory."""
    file = Path(path)
    file = file / "config.json" if file.is_dir() else file
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--model-config {path}: no such file; give the model's config.json or its directory") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--model-config {path}: not a readable config.json ({exc})") from None
    if not isinstance(config, dict) or "num_attention_heads" not in config:
        raise UserError(f"--model-config {path}: no num_attention_heads in it; is it a causal LM's config.json?")
    return config


def parameters(config: dict[str, Any]) -> int:
    """Parameters of a LLaMA-style decoder from its config.json (the count `models.shape` makes for training)."""
    heads = int(config["num_attention_heads"])
    return decoder_parameters(
        hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]), heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads), vocab=int(config.get("vocab_size", 0)),
        intermediate=int(config.get("intermediate_size") or 4 * int(config["hidden_size"])),
        tied=bool(config.get("tie_word_embeddings")), head_dim=config.get("head_dim"),
    )  # fmt: skip


def render_yaml(*, model_uri: str, gpus: int, nodes: int, image: str | None, namespace: str | None,
                model_config: str | None, kind: str, market_data_secret: str | None,
                served_model_name: str, intake_model_uri: str | None = None) -> str:  # fmt: skip
    """The objects `render` makes, as multi-document YAML, after the ConfigMap change request ids need (comments)."""
    shape: dict[str, Any] = {}
    if model_config is not None:
        config = read_model_config(model_config)
        shape = {
            "attention_heads": int(config["num_attention_heads"]),
            "kv_heads": int(config.get("num_key_value_heads") or config["num_attention_heads"]),
            "model_size_gb": max(1.0, parameters(config) * BYTES_PER_PARAMETER / 1e9),
        }
    else:
        log.warning("no --model-config: the tensor-parallel size is not checked against the model's heads")
    llm = LLMSpec(model_uri=model_uri, gpus=gpus, nodes=nodes, namespace=namespace,
                  served_model_name=served_model_name, **shape)  # fmt: skip
    steps = StepSpec(image=image or default_image(), llm_url=llm_url(llm), served_model_name=served_model_name,
                     namespace=namespace, market_data_secret=market_data_secret,
                     intake_model_uri=intake_model_uri)  # fmt: skip
    note = "\n".join(line if line.startswith("#") else f"#   {line}" for line in router_headers_note().splitlines())
    return f"{note}\n{to_yaml(render(llm, steps, kind))}"
