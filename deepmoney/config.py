"""Typed configuration: defaults < YAML file < environment (`DEEPMONEY_*`) < command-line flags.

One pydantic model per stage. Every field carries its description, which `deepmoney config show`
and docs/configuration are made from. An invalid value is reported one line per field, naming the
field and what it accepts (see `format_validation_error`).
"""

from __future__ import annotations

import contextvars
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

from deepmoney import env
from deepmoney.errors import UserError

_yaml_path: contextvars.ContextVar[str | None] = contextvars.ContextVar("yaml_path", default=None)
_NOT_IN_FINGERPRINT = {"fingerprint": False}
# The password of a URL's user (`//user:PASSWORD@`), also in a malformed URL such as `postgresql//user:pw@host`.
_URL_PASSWORD = re.compile(r"(//[^\s/@:]*:)[^\s@]+@")


def operational(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """A field that changes how a stage runs (workers, logging, retries), not what it produces.

    Such fields are left out of the fingerprint of a stage's output (`result_settings`), so changing
    them neither invalidates a finished output nor makes a resumed run refuse its own work.
    """
    return Field(default, json_schema_extra=_NOT_IN_FINGERPRINT, **kwargs)


def result_settings(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """The values of `section` that decide a stage's result, flat (`{"data.block_size": 1024}`).

    Fields declared with `operational` are left out, nested sections are walked.
    """
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        if field.json_schema_extra == _NOT_IN_FINGERPRINT:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            out.update(result_settings(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = section.model_dump(mode="json", include={name})[name]
    return out


def hide_passwords(value: Any) -> Any:
    """`value` (a string, or lists and dicts of them) with the password of every URL in it replaced by `***`.

    Config values may carry credentials (a `marketdata.url` from a Secret, a tracking URI with its
    user's password): whatever is logged, recorded in MLflow or written beside an output passes through this.
    """
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {key: hide_passwords(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [hide_passwords(inner) for inner in value]
    return value


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Section):
    """Where `s3://` URIs point. Local paths need no configuration."""

    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, Ceph, moto); unset = AWS, or AWS_ENDPOINT_URL if set.",
    )
    s3_region: str | None = Field(None, description="Region for S3 requests; unset = boto3's default chain.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket addressing; most on-premise stores need 'path'."
    )
    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per S3 request (boto3 standard retries).")


class ModelConfig(Section):
    """The base model: a real checkpoint, or a freshly made tiny one for tests and the quickstart."""

    preset: Literal["tiny", "small", "1b"] = Field(
        "tiny", description="Model size: tiny ≈ 5M parameters, small ≈ 100M, 1b ≈ 1.1B (GPU benchmarks)."
    )
    base_model: str | None = Field(
        None, description="Path or s3:// URI of a Hugging Face model directory; nothing is fetched from a hub."
    )
    vocab_size: int | None = Field(
        None, ge=300, le=262144, description="Tokenizer vocabulary for `model init`; unset = the preset's."
    )
    seed: int = Field(0, description="Seed of the random initialisation and of tokenizer training order.")


class DedupConfig(Section):
    """Exact and near-duplicate removal (MinHash LSH)."""

    enabled: bool = Field(True, description="Remove exact and near duplicates.")
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Estimated Jaccard similarity at or above which a document is dropped."
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (memory: 8 bytes each per document).")
    word_ngram: int = Field(5, ge=1, le=20, description="Shingle size in words for space-separated text.")
    cjk_ngram: int = Field(5, ge=1, le=20, description="Shingle size in characters for Chinese/Japanese text.")


class ChapterConfig(Section):
    """Chapter splitting."""

    max_chars: int = Field(
        8000, ge=200, description="Chapters longer than this are cut at paragraph or sentence boundaries."
    )
    min_chars: int = Field(80, ge=0, description="A heading section shorter than this is merged into its neighbour.")


class SummaryConfig(Section):
    """The context header written before each document in the pt corpus."""

    enabled: bool = Field(True, description="Prefix each document with its context header.")
    max_sentences: int = Field(3, ge=1, le=20, description="Sentences in the extractive summary.")
    max_chars: int = Field(600, ge=50, description="Upper bound on the summary length in characters.")
    key_figures: int = Field(6, ge=0, le=50, description="Key figures (numbers with units) listed in the header.")


class DataConfig(Section):
    """Ingest, cleaning, dedup, chapters and the packed pt corpus."""

    block_size: int = Field(1024, ge=16, le=1_048_576, description="Tokens per packed pt block.")
    min_chars: int = Field(100, ge=0, description="Documents shorter than this after cleaning are dropped (reported).")
    max_document_mb: float = Field(
        32.0, gt=0, description="Files larger than this are rejected before reading; raise it for huge files."
    )
    add_bos: bool = Field(True, description="Start every document with the tokenizer's BOS token.")
    shard_rows: int = Field(50_000, ge=1, description="Packed blocks per Parquet shard.")
    workers: int = operational(
        0, ge=0, description="Processes that read, clean, summarize and tokenize documents; 0 = one per CPU core."
    )
    records_per_task: int = operational(256, ge=1, description="JSONL records handed to a worker at a time.")
    heldout_fraction: float = Field(
        0.05, ge=0.0, le=0.5,
        description="Share of documents held out of pt and sft training for evaluation (chosen by content).",
    )  # fmt: skip
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    chapters: ChapterConfig = Field(default_factory=ChapterConfig)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)


class RoleConfig(Section):
    """An LLM role (summarizer, questioner, answerer, extractor). API keys never go here: see llm/roles.py."""

    endpoint: str | None = Field(
        None,
        description="`local:MODEL_DIR` for the in-process model, or an OpenAI-compatible base URL + `#MODEL`; "
        "for synth roles a command-line flag overrides it.",
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(512, ge=1, le=32768, description="Longest answer, in tokens.")
    seed: int | None = Field(0, description="Sampling seed sent with each request (servers that honour it).")
    structured: bool = Field(
        True,
        description="Ask for lists as JSON by schema (response_format over HTTP, constrained decoding for "
        "local:); answers are still parsed as free text when an endpoint ignores it. false: for an endpoint that "
        "rejects response_format.",
    )
    concurrency: int = operational(16, ge=1, le=4096, description="Requests in flight to this role's endpoint.")
    timeout: float = operational(120.0, gt=0, description="Seconds to wait for one answer before retrying.")
    attempts: int = operational(
        8, ge=1, le=100, description="Tries per request before it counts as failed (transient errors are retried)."
    )
    context_tokens: int | None = Field(
        None,
        ge=256,
        description="The endpoint's context window in tokens, to fit chapters into prompts; "
        "unset = read from a local model, or only the chapter length cap (synth.max_chapter_chars) for URLs.",
    )
    prompt: str | None = Field(
        None, description="A prompt template file replacing the built-in one (same {placeholders})."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint_form(cls, value: str | None) -> str | None:
        if value is not None and not (
            value.startswith("local:") or (value.startswith(("http://", "https://")) and "#" in value)
        ):
            raise ValueError("expected `local:MODEL_DIR` or `http(s)://HOST/v1#MODEL_NAME`")
        return value


class SynthConfig(Section):
    """sft synthesis: the three roles and the filters."""

    questioner: RoleConfig = Field(default_factory=lambda: RoleConfig(temperature=0.7, max_tokens=512))
    answerer: RoleConfig = Field(default_factory=lambda: RoleConfig(temperature=0.2, max_tokens=768))
    extractor: RoleConfig = Field(default_factory=lambda: RoleConfig(temperature=0.0, max_tokens=128))
    questions_per_chapter: int = Field(3, ge=1, le=50, description="Questions kept per chapter.")
    max_chapters: int | None = Field(
        None, ge=1, description="Ask about the first N chapters only (input order; unset = every chapter)."
    )
    min_grounding: float = Field(
        0.5, ge=0.0, le=1.0, description="Least share of an answer's content words found in its chapter."
    )
    max_question_similarity: float = Field(
        0.7, ge=0.0, le=1.0, description="ROUGE-L above which a question duplicates an earlier one of the report."
    )
    max_chapter_chars: int = Field(
        6000, ge=200, description="Chapters are cut to this length to fit the roles' context (recorded)."
    )


class ZeroConfig(Section):
    """DeepSpeed ZeRO: how optimizer state, gradients and parameters are split across ranks."""

    stage: Literal[0, 1, 2, 3] = Field(
        2, description="ZeRO stage: 2 splits optimizer state and gradients, 3 also weights."
    )
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory (DeepSpeed CPU Adam).")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (stage 3 only).")
    overlap_comm: bool = Field(True, description="Overlap gradient reduction with the backward pass.")
    bucket_size: int = Field(
        200_000_000, ge=1_000_000, description="Elements per reduce/all-gather bucket; lower it if memory is tight."
    )


class LoraConfig(Section):
    """LoRA adapters (peft) instead of full-parameter training."""

    enabled: bool = Field(False, description="Train LoRA adapters; the base weights stay frozen.")
    rank: int = Field(16, ge=1, le=1024, description="Adapter rank r.")
    alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / rank).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear (every linear layer but the output head)."
    )
    merge: bool = Field(True, description="Merge the adapters into the weights of the output model.")


class MlflowConfig(Section):
    """Experiment tracking (rank 0 only). Without a tracking URI, training runs and says so once."""

    tracking_uri: str | None = Field(None, description="MLflow tracking server; unset = MLFLOW_TRACKING_URI.")
    experiment: str = Field("deepmoney", description="Experiment the runs go to.")
    artifact_location: str | None = Field(
        None, description="Where a new experiment keeps its artifacts (e.g. s3://…); unset = the server's default."
    )
    run_name: str | None = Field(None, description="Run name; unset = <stage>-<output directory name>.")
    log_model: Literal["copy", "reference", "none"] = Field(
        "copy",
        description="copy: log the output model with mlflow.transformers; reference: log only where the "
        "weights are stored (for models too large to copy); none: log no model.",
    )
    system_metrics: bool = Field(True, description="Log CPU/GPU/memory use as system metrics.")
    timeout: float = Field(10.0, gt=0, description="Seconds one MLflow request may take before it counts as failed.")


class TrainConfig(Section):
    """Training (pt or sft): the loop, the schedule, checkpoints and the launcher."""

    stage: Literal["pt", "sft"] = Field("pt", description="pt: packed corpus blocks; sft: chat examples.")
    model: str | None = Field(None, description="Base model directory or s3:// URI; unset = model.base_model.")
    data: str | None = Field(None, description="pt corpus (build-pt output) or sft dataset (synth output or JSONL).")
    output: str | None = operational(None, description="Output directory: checkpoints/, final/, manifest.json.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; unset = `epochs` passes over the data.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data when max_steps is unset.")
    micro_batch: int = Field(4, ge=1, description="Blocks per rank per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    global_batch: int | None = Field(
        None, ge=1, description="Blocks per optimizer step over all ranks; when set, grad_accum is derived from it."
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; unset = 2e-5 for full training, 2e-4 for LoRA."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a share of the peak.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 on GPUs that support it, else fp32."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    attention: Literal["segment_sdpa", "sdpa", "eager", "flash_attention_2"] = Field(
        "segment_sdpa",
        description="Attention kernel. segment_sdpa: causal sdpa run per packed segment, so a block costs the sum "
        "of its segments' squared lengths instead of the block length squared (short sft examples in long blocks); "
        "sdpa/eager: one block-diagonal mask over the whole block; flash_attention_2 keeps packed examples apart "
        "by positions alone.",
    )
    fused_loss: bool = Field(
        True, description="Output layer and loss in one chunked pass (no full logits tensor); llama/mistral/qwen."
    )
    block_size: int | None = Field(
        None, ge=16, description="sft: tokens per packed block; unset = 1024, capped at the model's positions."
    )
    train_on_prompt: bool = Field(False, description="sft: learn the prompt tokens too, not only the answers.")
    save_every: int = operational(
        500, ge=1, description="Optimizer steps between checkpoints (one is also written at the end)."
    )
    keep_last: int = operational(3, ge=1, description="Checkpoints kept; older ones are deleted.")
    checkpoint_uri: str | None = operational(
        None, description="s3:// prefix that every checkpoint is also copied to, and resumed from when none is local."
    )
    resume: bool = operational(
        True, description="Continue from the newest complete checkpoint in the output directory."
    )
    log_every: int = operational(10, ge=1, description="Optimizer steps between metric lines.")
    seed: int = Field(42, description="Seed of data order and initialisation of new weights.")
    loader_workers: int = operational(1, ge=0, description="DataLoader worker processes per rank.")
    nproc: int = operational(1, ge=1, description="Local launcher: processes (CPU) or GPUs on this machine.")
    max_restarts: int = operational(
        3, ge=0, description="Local launcher: restarts of the process group after a failure."
    )
    zero: ZeroConfig = Field(default_factory=ZeroConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    mlflow: MlflowConfig = operational(default_factory=MlflowConfig)


class EvalConfig(Section):
    """`deepmoney evaluate`: what is measured on the held-out data, and how."""

    window: int = Field(1024, ge=16, description="Tokens per perplexity window (capped at the model's positions).")
    batch_size: int = operational(8, ge=1, description="Windows or prompts per forward pass.")
    max_qa: int = Field(200, ge=0, description="Held-out questions to answer and score (the first N, file order).")
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer, in tokens (greedy decoding).")
    news: str | None = Field(None, description="News items for the chain checks (JSONL); unset = the built-in set.")
    chain: bool = Field(True, description="Run the three-step analysis on the news items and check its structure.")
    benchmarks: list[str] = Field(
        default_factory=list, description="Local finance benchmark files (FinBen, FinEval, CFBenchmark layouts)."
    )
    seed: int = Field(0, description="Seed for everything random in the evaluation.")
    chart: bool = Field(True, description="Write and log a PNG chart of the metrics and the training loss.")


class RegistryConfig(Section):
    """`deepmoney register` / `promote`: the MLflow model registry and the promotion policy."""

    primary_metric: str = Field(
        "perplexity", description="Metric a candidate must win on (lower is better for perplexity and loss)."
    )
    margin: float = Field(
        0.01, ge=0.0, description="Relative improvement over the champion needed on the primary metric (0.01 = 1%)."
    )
    guards: dict[str, float] = Field(
        default_factory=lambda: {"qa_token_f1": 0.02, "qa_rouge_l": 0.02, "chain_pass_rate": 0.05},
        description="Metrics that must not get worse than the champion's by more than this (absolute).",
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description="Absolute bounds the first champion must meet (upper bounds for perplexity/loss, else lower); "
        "perplexity must always beat a uniform guess over the vocabulary.",
    )
    artifacts_destination: str | None = Field(
        None, description="The tracking server's --artifacts-destination (s3://…): maps mlflow-artifacts:/ URIs to S3."
    )
    lock_settle_seconds: float = Field(
        1.0, gt=0, description="Promotion lock: how long a claim must survive before it counts (see registry.py)."
    )
    lock_timeout_seconds: float = Field(
        120.0, gt=0, description="Promotion lock: how long to wait for another promotion; older locks are stale."
    )


class MarketDataConfig(Section):
    """The macro/micro database the news analysis reads (docs/marketdata.md)."""

    url: str | None = Field(
        None,
        description="SQLAlchemy URL of a firm's database (sqlite:///…, postgresql://…); unset = the embedded "
        "default (real public series from the arch and statsmodels packages, built on first use).",
    )
    window: int = Field(
        24, ge=1, description="Observations per series given to an analysis (the latest as of the news date)."
    )


class QuantConfig(Section):
    """Step 3's computed figures: the toolbox run on series fetched as of the news date (docs/serving.md)."""

    enabled: bool = Field(True, description="Run the analysis specification step 3 writes and return its figures.")
    market_series: str = Field(
        "us.sp500.close", min_length=1, description="The market index an event study's market model regresses on."
    )
    history: int = Field(
        250,
        ge=20,
        le=5000,
        description="Observations fetched per series (as of the news date) for regressions, "
        "correlations, Granger tests and VARs; event studies fetch what their windows need.",
    )
    chart: bool = Field(True, description="Return a PNG chart of the series around the event (base64).")
    sandbox: bool = Field(
        False,
        description="Also ask step 3 for a short program and run it in the sandbox (no network, scratch "
        "directory only, CPU and memory limits, numpy/pandas/statsmodels only); off by default.",
    )
    sandbox_cpu_seconds: int = Field(10, ge=1, le=600, description="CPU-time limit of a sandboxed program.")
    sandbox_wall_seconds: float = Field(20.0, gt=0, le=600, description="Wall-clock limit of a sandboxed program.")
    sandbox_memory_mb: int = Field(1024, ge=256, le=65536, description="Address-space limit of a sandboxed program.")


class ServingConfig(Section):
    """The news-analysis service: its server, the LLM it asks, and the limits it holds requests to (docs/serving.md)."""

    served_model_name: str = Field("deepmoney", min_length=1, description="Model name of the OpenAI-compatible API.")
    max_batch: int = Field(32, ge=1, le=512, description="Embedded predictor: requests generated in one batch.")
    batch_window_ms: float = Field(
        5.0, ge=0, description="Embedded predictor: how long a batch waits for more requests to join it."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of every step (0 = greedy).")
    sectors_max_tokens: int = Field(256, ge=32, description="Step 1's answer, in tokens.")
    method_max_tokens: int = Field(768, ge=64, description="Step 2's answer, in tokens.")
    analysis_max_tokens: int = Field(1536, ge=64, description="Step 3's answer, in tokens.")
    structured: bool = Field(
        True,
        description="Ask every step for JSON by schema (response_format / constrained decoding); off = free text.",
    )
    llm_timeout_s: float = Field(300.0, gt=0, description="Seconds one LLM call may take before the step fails (504).")
    llm_attempts: int = Field(2, ge=1, le=10, description="Tries of an LLM call that failed transiently.")
    llm_concurrency: int = Field(128, ge=1, description="LLM calls in flight at once, over all requests.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 above).")
    max_news_chars: int = Field(20_000, ge=100, description="Longest news text accepted (400 above).")
    dictionary_in_prompt: int = Field(
        40,
        ge=0,
        description="Step 2 is shown the data dictionary (each series' id, name and unit) and names series by id, "
        "when the database holds at most this many series (0: never; a larger database is matched by name).",
    )
    on_data_unavailable: Literal["note", "error"] = Field(
        "note",
        description="Market database down: 'note' answers without data and says so; 'error' answers 503.",
    )
    quant: QuantConfig = Field(default_factory=QuantConfig)

    def max_tokens(self, step: str) -> int:
        """The token budget of an LLM step's answer."""
        return int(getattr(self, f"{step}_max_tokens"))


class ClassifierConfig(Section):
    """`deepmoney intake train`: the small BERT-class subjective/objective classifier trained from scratch."""

    hidden_size: int = Field(128, ge=16, le=1024, description="Width of the encoder.")
    layers: int = Field(2, ge=1, le=12, description="Transformer layers.")
    heads: int = Field(4, ge=1, le=16, description="Attention heads (must divide hidden_size).")
    vocab_size: int = Field(6000, ge=256, le=60000, description="WordPiece vocabulary trained on the training split.")
    max_length: int = Field(128, ge=16, le=512, description="Tokens per sentence (longer ones are cut).")
    epochs: int = Field(8, ge=1, le=200, description="Passes over the training split.")
    batch_size: int = Field(32, ge=1, le=1024, description="Sentences per optimizer step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Peak AdamW learning rate (linear decay).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout of the hidden states and attention.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Label smoothing of the training loss.")
    token_dropout: float = Field(
        0.15,
        ge=0,
        lt=0.9,
        description="Share of a training sentence's tokens replaced by [UNK] at each pass, so that the model "
        "learns to judge a sentence with words it has never seen (as it must on real news).",
    )
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay.")
    heldout_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Share of every (language, label) group kept out of training for the report."
    )
    seed: int = Field(0, description="Seed of the split, the initialisation and the batch order.")

    @field_validator("heads")
    @classmethod
    def _heads_divide(cls, value: int, info: Any) -> int:
        hidden = info.data.get("hidden_size")
        if hidden and hidden % value:
            raise ValueError(f"heads ({value}) must divide hidden_size ({hidden})")
        return value


class IntakeConfig(Section):
    """News intake before the analysis chain: near-duplicates over a window, and the subjective/objective filter."""

    window: int = Field(5000, ge=1, description="Recent kept items a new item is compared with for duplicates.")
    dedup: DedupConfig = Field(
        default_factory=lambda: DedupConfig(threshold=0.7),
        description="MinHash settings; news rewrites are looser than corpus copies, hence the lower threshold.",
    )
    forward_labels: list[Literal["objective", "subjective"]] = Field(
        default_factory=lambda: ["objective"],
        description="Labels that go on to the chain (the recipe analyses objective news only).",
    )
    forward_duplicates: bool = Field(False, description="Let near-duplicates of a kept item go on to the chain too.")
    subjective_threshold: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="Probability of 'subjective' above which an item is subjective. Above a half: "
        "a classifier trained on sentences is less sure of whole articles, and dropping objective news costs more "
        "than letting an opinion through (docs/intake.md).",
    )
    batch_size: int = operational(64, ge=1, le=4096, description="Items classified at a time (and made durable).")
    registered_name: str = Field(
        "deepmoney-intake", min_length=1, description="Registered model name of the classifier (intake train)."
    )
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)


class GangConfig(Section):
    """Gang scheduling of a PyTorchJob (`runPolicy.schedulingPolicy`, for Volcano or the scheduler plugins)."""

    enabled: bool = Field(False, description="Start every pod of the job at once or none (no half-started jobs).")
    queue: str | None = Field(None, description="Scheduler queue of the job (Volcano queue).")
    priority_class: str | None = Field(None, description="PriorityClass of the job's pod group.")
    schedule_timeout_seconds: int | None = Field(
        None, ge=1, description="How long the pod group may wait to be scheduled before the job fails."
    )


class LaunchConfig(Section):
    """`deepmoney launch`: a training run as a PyTorchJob (Training Operator v1) or TrainJob (Kubeflow Trainer v2).

    Where the pods run and what they get; none of it changes what is trained (docs/launch.md).
    """

    namespace: str = Field("default", description="Namespace of the job and its ConfigMap.")
    image: str | None = Field(None, description="The project image of the pods; unset = this version's release.")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field("IfNotPresent", description="Pull policy.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull a private image.")
    service_account: str | None = Field(None, description="ServiceAccount of the pods (e.g. one bound to S3 by IRSA).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource a GPU is requested as.")
    cpu_per_node: str | None = Field(None, description="CPU request and limit per pod (e.g. '96'); unset = none.")
    memory_per_node: str | None = Field(None, description="Memory request and limit per pod (e.g. '1600Gi').")
    shm_size: str = Field(
        "64Gi",
        description="Size of /dev/shm (a memory emptyDir); NCCL and DataLoader workers fail on 64 MiB.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Labels of the GPU pool's nodes (e.g. node.kubernetes.io/instance-type)."
    )
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations for the pool's taints.")
    affinity: dict[str, Any] | None = Field(None, description="Pod affinity (e.g. to keep the nodes in one rack).")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment of the training container (the fabric's NCCL_* settings, say); "
        "NCCL_DEBUG=WARN unless set here.",
    )

    s3_secret: str | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) for s3:// data."
    )
    mlflow_secret: str | None = Field(
        None, description="Secret with MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN)."
    )
    volume_claim: str | None = Field(
        None, description="ReadWriteMany PVC every pod mounts: the output, checkpoints, and local data and models."
    )
    volume_mount: str = Field("/workspace", description="Where the claim is mounted in the pods.")
    run_as_user: int = Field(10001, ge=1, description="Non-root user the pods run as (also their fsGroup).")
    elastic: bool = Field(
        False,
        description="PyTorchJob: Workers only, with an elasticPolicy (c10d rendezvous), not Master + Workers.",
    )
    min_nodes: int | None = Field(None, ge=1, description="Elastic: fewest nodes the job runs on; unset = --nodes.")
    max_restarts: int = Field(3, ge=0, description="Restarts of the whole job after a crash (not a user error).")
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "Running", description="PyTorchJob: pods deleted when the job ends (Running keeps failed pods' logs)."
    )
    ttl_seconds_after_finished: int | None = Field(
        259200, ge=0, description="Seconds a finished job is kept before Kubernetes deletes it; unset = kept."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Wall-clock limit of the job: it fails when it runs longer."
    )
    kueue_queue: str | None = Field(None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name).")
    gang: GangConfig = Field(default_factory=GangConfig)
    runtime: str = Field(
        "torch-distributed", description="TrainJob: the (Cluster)TrainingRuntime it runs on (a torch runtime)."
    )
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = Field(
        "ClusterTrainingRuntime",
        description="TrainJob: the runtime's kind: Trainer's cluster-wide torch runtime, or a namespaced one "
        "(the Helm chart's training.runtime).",
    )
    kubeconfig: str | None = Field(
        None, description="kubeconfig file of the cluster; unset = $KUBECONFIG, ~/.kube/config, or in-cluster."
    )
    context: str | None = Field(None, description="kubeconfig context; unset = its current context.")
    api_attempts: int = Field(5, ge=1, le=20, description="Tries of a Kubernetes API call that failed transiently.")
    poll_seconds: float = Field(10.0, gt=0, description="How often a waiting launcher reads the job's status.")
    restarting_limit_seconds: float = Field(
        900.0, gt=0, description="A job Restarting (or with pods Terminating) this long is reported, not waited on."
    )

    @field_validator("env")
    @classmethod
    def _names_as_written(cls, value: dict[str, str]) -> dict[str, str]:
        # DEEPMONEY_LAUNCH__ENV__NCCL_DEBUG=INFO arrives as {"nccl_debug": ...}: the pod needs NCCL_DEBUG
        written = env.nested_names("launch", "env")
        return {written.get(name, name): setting for name, setting in value.items()}


class DeepmoneyConfig(BaseSettings):
    """The whole configuration. YAML file from `--config` or DEEPMONEY_CONFIG; env `DEEPMONEY_DATA__BLOCK_SIZE=512`."""

    model_config = SettingsConfigDict(
        env_prefix=env.PREFIX, env_nested_delimiter=env.NESTED_DELIMITER, extra="forbid", validate_assignment=True
    )

    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    summarizer: RoleConfig | None = Field(
        None, description="LLM that writes the context summaries; unset = the offline extractive summarizer."
    )
    synth: SynthConfig = Field(default_factory=SynthConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    marketdata: MarketDataConfig = Field(default_factory=MarketDataConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    launch: LaunchConfig = operational(default_factory=LaunchConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=_yaml_path.get()))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, section by section (nested dicts merged, other values replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def overrides_from_flags(**flags: Any) -> dict[str, Any]:
    """Turn `{"data.block_size": 512, "model.seed": None}` into a nested dict, skipping unset flags."""
    nested: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> DeepmoneyConfig:
    """Resolve the configuration; raise `UserError` with one line per invalid field."""
    path = path or env.get(env.CONFIG) or None
    _check_environment()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path} (pass an existing YAML file to --config)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML: {first}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping at the top level, not {type(loaded).__name__}")
    token = _yaml_path.set(str(path) if path else None)
    try:
        return DeepmoneyConfig(**(overrides or {}))
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source=str(path) if path else "environment/flags")) from None
    finally:
        _yaml_path.reset(token)


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds (`RoleConfig | None` -> RoleConfig), or None for a plain value."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _check_environment() -> None:
    """A DEEPMONEY_* variable that names no config field is a typo, not something to ignore silently."""
    for name in sorted(env.config_variables()):
        parts = name[len(env.PREFIX) :].lower().split(env.NESTED_DELIMITER)
        model: type[BaseModel] | None = DeepmoneyConfig
        for depth, part in enumerate(parts):
            if model is None:
                break  # below a plain value (e.g. a dict such as registry.guards): any key is the user's
            if part not in model.model_fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise UserError(
                    f"environment variable {name}: {where} has no field {part!r}; allowed there: "
                    f"{', '.join(sorted(model.model_fields))} (the form is DEEPMONEY_<SECTION>__<KEY>, e.g. "
                    "DEEPMONEY_DATA__BLOCK_SIZE)"
                )
            model = _section(model.model_fields[part].annotation)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = DeepmoneyConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        section = _section(getattr(field, "annotation", None))
        if section is None:
            return []
        model = section
    return sorted(model.model_fields)


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per bad field: `config error (SOURCE): data.block_size: <what is allowed> (got X)`."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed here: {', '.join(_allowed_keys(loc))}"
        else:
            msg = err["msg"]
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {hide_passwords(repr(got))})"
        lines.append(f"config error ({source}): {field}: {msg}{shown}")
    return "\n".join(lines)


def dump_config(config: DeepmoneyConfig) -> str:
    """The resolved configuration as YAML, as `deepmoney config show` prints it."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
