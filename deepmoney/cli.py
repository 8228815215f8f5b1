"""`deepmoney <verb>`: every verb is one function, and `COMMANDS` registers them all in one place.

A verb parses its flags into the config, makes one library call and prints the result on stdout
(nothing else goes there). How a run ends — one `error: …` line and exit 2 for a mistake, 130/143
when interrupted — is `deepmoney.shell`'s, shared with the pods' entrypoint.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from deepmoney.config import dump_config, load_config, overrides_from_flags
from deepmoney.errors import UserError
from deepmoney.shell import global_options, make_app, run_app
from deepmoney.train.command import RUNNER
from deepmoney.train.command import train as train_verb


def _run_training(*args: Any) -> Any:
    from deepmoney.launch.runner import run_training

    return run_training(*args)


app = make_app("deepmoney", "Financial reports and textbooks -> domain LLM -> news-analysis service.",
               {RUNNER: _run_training})  # fmt: skip
GROUPS = {
    "config": typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True),
    "model": typer.Typer(help="Base models: make a tiny one, or point at a real checkpoint.", no_args_is_help=True),
    "data": typer.Typer(help="Build the training corpora.", no_args_is_help=True),
    "registry": typer.Typer(help="Look up registered models.", no_args_is_help=True),
    "track": typer.Typer(help="MLflow tracking of finished outputs.", no_args_is_help=True),
    "marketdata": typer.Typer(
        help="The macro/micro database the news analysis reads, as of a date.", no_args_is_help=True
    ),
    "serve": typer.Typer(help="Serve the news analysis, or render its KServe objects.", invoke_without_command=True),
    "pipeline": typer.Typer(help="The Kubeflow pipeline: compile it, or run it here.", no_args_is_help=True),
    "intake": typer.Typer(
        help="News intake: the subjective/objective classifier and near-duplicates, before the chain.",
        no_args_is_help=True,
    ),
}
MARKETDATA_URL_HELP = "SQLAlchemy URL of the database (default: marketdata.url, else the embedded default)."
OVERWRITE_HELP = "Replace an output made from other inputs or settings (never a directory of another kind)."


def config_show(ctx: typer.Context) -> None:
    """Print the resolved configuration (defaults < YAML < DEEPMONEY_* environment) as YAML."""
    typer.echo(dump_config(load_config(global_options(ctx).config)), nl=False)


def model_init(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to write the model to.")],
    tokenizer_corpus: Annotated[
        list[str],
        typer.Option(
            "--tokenizer-corpus", help="Files or directories (any supported format) to train the tokenizer on."
        ),
    ],
    preset: Annotated[str | None, typer.Option("--preset", help="tiny (≈5M), small (≈100M), 1b (≈1.1B).")] = None,
    vocab_size: Annotated[int | None, typer.Option("--vocab-size", help="Tokenizer vocabulary size.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the random initialisation.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Make a random-init LLaMA-architecture model and a byte-level BPE tokenizer trained on a corpus."""
    from deepmoney.model_init import init_model

    options = global_options(ctx)
    config = load_config(
        options.config,
        overrides_from_flags(**{"model.preset": preset, "model.vocab_size": vocab_size, "model.seed": seed}),
    )
    result = init_model(tokenizer_corpus, output, config, quiet=options.quiet, overwrite=overwrite)
    manifest = result.manifest
    state = "reused" if result.reused else "written"
    typer.echo(
        f"model {state}: {output} ({manifest.architecture}, preset {manifest.preset}, "
        f"{manifest.parameters / 1e6:.1f}M parameters, vocabulary {manifest.vocab_size})"
    )


def data_build_pt(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="Files, directories or s3:// URIs.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Model or tokenizer directory (path or s3://).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output directory or s3:// prefix.")],
    block_size: Annotated[int | None, typer.Option("--block-size", help="Tokens per packed block.")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first bad input instead of recording it.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="K/N: prepare every Nth task from the Kth (then data merge-pt).")
    ] = None,
) -> None:
    """Build the packed pre-training corpus: ingest, clean, dedup, chapters, context header, tokens, blocks."""
    options = global_options(ctx)
    config = load_config(options.config, overrides_from_flags(**{"data.block_size": block_size}))
    quiet = quiet or options.quiet
    if shard is not None:
        from deepmoney.data.pt_shards import build_pt_shard

        part = _parse_shard(shard)
        result = build_pt_shard(inputs, tokenizer, output, config, part, strict=strict, quiet=quiet,
                                overwrite=overwrite)  # fmt: skip
        m = result.manifest
        typer.echo(f"pt shard {m['shard']}/{m['shard_count']} {'reused' if result.reused else 'written'}: "
                   f"{result.output} ({m['tasks']} of {m['tasks_total']} tasks, {m['documents']} documents); "
                   "merge all shards with: deepmoney data merge-pt --input SHARD... --output DIR")  # fmt: skip
        return
    from deepmoney.data.pt import build_pt

    result = build_pt(inputs, tokenizer, output, config, strict=strict, quiet=quiet, overwrite=overwrite)
    typer.echo(_pt_summary(result.manifest, result.output, result.reused))


def data_merge_pt(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="The outputs of build-pt --shard K/N, all K.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output directory or s3:// prefix.")],
    block_size: Annotated[int | None, typer.Option("--block-size", help="Tokens per block (as the shards).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Merge build-pt shards into the pt corpus: global near-dedup in input order, packing — as one build."""
    from deepmoney.data.pt_shards import merge_pt_shards

    options = global_options(ctx)
    config = load_config(options.config, overrides_from_flags(**{"data.block_size": block_size}))
    result = merge_pt_shards(inputs, output, config, quiet=quiet or options.quiet, overwrite=overwrite)
    typer.echo(_pt_summary(result.manifest, result.output, result.reused))


def _pt_summary(manifest: dict[str, Any], output: str, reused: bool) -> str:
    dropped, heldout = manifest["dropped"], manifest["heldout"]
    lines = [
        f"pt corpus {'reused (up to date)' if reused else 'written'}: {output}",
        f"  documents     {manifest['documents']} kept of {manifest['documents_read']} read"
        f" ({dropped['exact_duplicate']} exact and {dropped['near_duplicate']} near duplicates,"
        f" {dropped['too_short']} too short)",
        f"  held out      {heldout['documents']} documents, {heldout['tokens']} tokens (evaluation only)",
        f"  rejected      {manifest['rejected']} inputs (see rejected.jsonl)",
        f"  chapters      {manifest['chapters']}",
        f"  tokens        {manifest['tokens']} -> {manifest['blocks']} blocks of {manifest['block_size']}"
        f" ({manifest['tokens_dropped']} dropped in the final partial block)",
    ]
    return "\n".join(lines)


def synth(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="Files, directories or s3:// URIs.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output directory or s3:// prefix.")],
    questioner: Annotated[
        str | None,
        typer.Option("--questioner", help="local:MODEL_DIR or http(s)://HOST/v1#MODEL (or synth.questioner)."),
    ] = None,
    answerer: Annotated[str | None, typer.Option("--answerer", help="A different model from the questioner's.")] = None,
    extractor: Annotated[str | None, typer.Option("--extractor", help="Names each report's underlying assets.")] = None,
    questions_per_chapter: Annotated[int | None, typer.Option("--questions-per-chapter", min=1, max=50)] = None,
    max_chapters: Annotated[int | None, typer.Option("--max-chapters", min=1, help="Stop after N chapters.")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Requests in flight per role.")
    ] = None,
    request_timeout: Annotated[
        float | None, typer.Option("--request-timeout", min=0.1, help="Seconds per request.")
    ] = None,
    allow_same_model: Annotated[
        bool, typer.Option("--allow-same-model", help="Let one model both ask and answer (not recommended).")
    ] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="K/N: this process's share of the documents (merge with synth-merge).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Synthesize the sft dataset: questions per chapter, answers from the chapter alone, assets in the instruction."""
    from deepmoney.synth.run import SynthOptions, role_endpoints, synthesize

    options = global_options(ctx)
    config = load_config(options.config)
    endpoints = role_endpoints(config, {"questioner": questioner, "answerer": answerer, "extractor": extractor})
    synth_options = SynthOptions.from_config(
        config.synth,
        concurrency=concurrency,
        timeout=request_timeout,
        questions_per_chapter=questions_per_chapter,
        max_chapters=max_chapters,
        allow_same_model=allow_same_model,
        shard=_parse_shard(shard),
    )
    result = synthesize(inputs, output, endpoints, config, synth_options, quiet=quiet or options.quiet,
                        overwrite=overwrite)  # fmt: skip
    m = result.manifest
    typer.echo(
        f"sft dataset {'reused (up to date)' if result.reused else 'written'}: {output}\n"
        f"  chapters      {m['chapters_covered']} of {m['chapters']} gave records ({m['chapters_truncated']} cut "
        "to fit the roles' context)\n"
        f"  records       {m['records']} (alpaca.jsonl, sharegpt.jsonl, dataset_info.json); "
        f"{m['heldout_records']} held out (heldout_alpaca.jsonl)\n"
        f"  rejected      {m['rejected']} (see rejected.jsonl)"
    )


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    k, sep, n = value.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise UserError(f"--shard {value}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(k), int(n)


def synth_merge(
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="The output directories of shards 0..N-1.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where the merged dataset goes.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Merge the outputs of `synth --shard K/N` runs into one dataset, in the order of an unsharded run."""
    from deepmoney.synth.merge import merge_shards

    manifest = merge_shards(inputs, output, overwrite=overwrite)
    typer.echo(
        f"merged {len(inputs)} shards into {output}: {manifest['records']} records, {manifest['rejected']} rejected"
    )


def evaluate(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", help="Model dir, train output (or its final/), s3://, runs:/ or models:/ URI.")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Directory for the manifest and the details.")],
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="build-pt and/or synth outputs (or a directory holding both); one of each kind."),
    ] = None,
    news: Annotated[str | None, typer.Option("--news", help="News items (JSONL) for the chain checks.")] = None,
    benchmark: Annotated[
        list[str] | None, typer.Option("--benchmark", help="Local finance benchmark files (FinBen, FinEval, …).")
    ] = None,
    max_qa: Annotated[int | None, typer.Option("--max-qa", min=0, help="Held-out questions to answer.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Prompts per forward pass.")] = None,
    no_chain: Annotated[bool, typer.Option("--no-chain", help="Skip the three-step news analysis checks.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Evaluate a model: held-out perplexity and QA, news-chain checks, finance benchmarks; logged to MLflow."""
    from deepmoney.evaluate.run import evaluate as run_evaluation

    options = global_options(ctx)
    flags = {"news": news, "benchmarks": benchmark or None, "max_qa": max_qa, "max_new_tokens": max_new_tokens,
             "batch_size": batch_size, "chain": False if no_chain else None}  # fmt: skip
    config = load_config(options.config, overrides_from_flags(**{f"evaluate.{k}": v for k, v in flags.items()}))
    result = run_evaluation(model, data or [], output, config, quiet=options.quiet, overwrite=overwrite)
    manifest = result.manifest
    state = "reused (up to date)" if result.reused else "written"
    lines = [f"evaluation {state}: {output} ({model} on evaluation set {manifest.eval_digest})"]
    lines += [f"  {k:<28}{_number(v)}" for k, v in sorted(manifest.metrics.items())]
    tracked = manifest.mlflow_run_id or ("(kept offline: deepmoney track sync)" if getattr(manifest,
                                         "mlflow_pending", False) else "(not tracked)")  # fmt: skip
    lines.append(f"  mlflow run    {tracked}")
    typer.echo("\n".join(lines))


def _number(value: float) -> str:
    """A metric as a person reads it: counts as integers, rates and scores with four decimals."""
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def register(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Option("--run-id", help="The MLflow run of a training (its manifest has it).")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    source: Annotated[
        str | None, typer.Option("--source", help="Where the weights are (s3://…), instead of what the run logged.")
    ] = None,
) -> None:
    """Register a training run's model as a new version (prints the version number)."""
    from deepmoney.registry import register as run_register

    result = run_register(run_id, name, load_config(global_options(ctx).config), source)
    typer.echo(str(result["version"]))


def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    version: Annotated[int, typer.Option("--version", min=1, help="The candidate version.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the decision; change nothing.")] = False,
    expect_champion: Annotated[
        int | None,
        typer.Option("--expect-champion", min=1, help="Change nothing unless this version is still the champion."),
    ] = None,
) -> None:
    """Compare a version with the champion on the same evaluation set; make it champion or challenger (JSON)."""
    from deepmoney.registry import PromotionRaced
    from deepmoney.registry import promote as run_promote

    try:
        result = run_promote(name, version, load_config(global_options(ctx).config), dry_run, expect_champion)
    except PromotionRaced as raced:
        typer.echo(json.dumps(raced.result, indent=2))
        raise
    typer.echo(json.dumps(result, indent=2))


def registry_uri(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    alias: Annotated[str | None, typer.Option("--alias", help="e.g. champion.")] = None,
    version: Annotated[int | None, typer.Option("--version", min=1, help="A version number.")] = None,
) -> None:
    """Print the storage URI (s3://…) of a registered version's Hugging Face folder, for KServe's storageUri."""
    from deepmoney.registry import serving_uri

    typer.echo(serving_uri(name, load_config(global_options(ctx).config), alias=alias, version=version))


def track_sync(
    ctx: typer.Context,
    outputs: Annotated[list[str], typer.Argument(help="train and evaluate output directories, trainings first.")],
) -> None:
    """Upload to MLflow what a training or an evaluation kept offline (the server was down); then register it."""
    from deepmoney.tracking.sync import sync_output

    config = load_config(global_options(ctx).config)
    for output in outputs:
        run_id, sent = sync_output(output, config.train.mlflow)
        typer.echo(f"{output}: {'synced to' if sent else 'already in'} MLflow run {run_id}")


def marketdata_list(
    ctx: typer.Context, url: Annotated[str | None, typer.Option("--url", help=MARKETDATA_URL_HELP)] = None
) -> None:
    """Print the data dictionary: one line per series (id, frequency, unit, English and Chinese names)."""
    from deepmoney.marketdata import MarketData

    with MarketData.open(url or load_config(global_options(ctx).config).marketdata.url) as market:
        rows = [f"{s.id:<28}{s.frequency:<11}{s.name_en} | {s.name_zh} ({s.unit})" for s in market.catalogue()]
    typer.echo("\n".join(rows))


def marketdata_show(
    ctx: typer.Context,
    series: Annotated[str, typer.Argument(help="A series id from `deepmoney marketdata list`.")],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="YYYY-MM-DD: only values published by then (default: the latest).")
    ] = None,
    window: Annotated[
        int | None, typer.Option("--window", min=1, help="Observations (default: marketdata.window).")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help=MARKETDATA_URL_HELP)] = None,
) -> None:
    """Print one series as of a date as JSON: its summary figures and the observations."""
    from deepmoney.marketdata import MarketData

    day = _iso_date(as_of, "--as-of")
    config = load_config(global_options(ctx).config)
    with MarketData.open(url or config.marketdata.url) as market:
        observations = market.fetch(series, day, window or config.marketdata.window)
    summary = MarketData.summary(observations)
    summary["points"] = [[p.period_end.isoformat(), p.value] for p in observations.points]
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


def _iso_date(text: str | None, flag: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected a date as YYYY-MM-DD") from None


def marketdata_load(
    url: Annotated[str, typer.Option("--url", help="SQLAlchemy URL of the database to fill (created if missing).")],
    dictionary: Annotated[str, typer.Option("--dictionary", help="CSV or Parquet: one row per series.")],
    observations: Annotated[str, typer.Option("--observations", help="CSV or Parquet: series_id, period_end, value.")],
) -> None:
    """Fill a firm's own database from CSV/Parquet files, all or nothing (schema: docs/marketdata.md)."""
    from deepmoney.marketdata import load_table

    counts = load_table(url, dictionary, observations)
    typer.echo(f"loaded {counts['series']} series and {counts['observations']} observations "
               f"({counts['replaced_series']} series replaced)")  # fmt: skip


SERVE_STEPS_HELP = "Comma-separated steps to host (intake,sectors,method,data,analysis); default: all, plus chain."


def serve(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option("--model", help="The LLM to serve: a model dir, train output, s3://, runs:/ or models:/N@alias."),
    ] = None,
    llm: Annotated[
        str | None, typer.Option("--llm", help="Instead of --model: an OpenAI-compatible URL#MODEL the steps ask.")
    ] = None,
    market_data: Annotated[str | None, typer.Option("--market-data", help=MARKETDATA_URL_HELP)] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 in a pod).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8080,
    steps: Annotated[str | None, typer.Option("--steps", help=SERVE_STEPS_HELP)] = None,
    intake_model: Annotated[
        str | None,
        typer.Option("--intake-model", help="The intake classifier (intake train's output): the chain starts with it."),
    ] = None,
) -> None:
    """Serve the news analysis: a KServe ModelServer with the LLM, the step models and `chain` (Ctrl-C stops)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from deepmoney.serving.server import ServeOptions, resolve_llm, serve_forever
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("kserve"):
            raise
        raise UserError("deepmoney serve needs KServe: install the serve extra (scripts/install.sh serve)") from None

    config = load_config(global_options(ctx).config)
    chosen = tuple(s.strip() for s in steps.split(",") if s.strip()) if steps else None
    options = ServeOptions(
        config=config,
        model_dir=resolve_llm(model, config) if model else None,
        llm=llm,
        market_data=market_data,
        host=host,
        port=port,
        intake_model=intake_model,
        **({"steps": chosen} if chosen else {}),
    )
    serve_forever(options)


def serve_render(
    ctx: typer.Context,
    model_uri: Annotated[str, typer.Option("--model-uri", help="storageUri of the LLM (`deepmoney registry uri`).")],
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="GPUs in all (tensor parallel = GPUs per node); default: planned.")
    ] = None,
    nodes: Annotated[
        int | None, typer.Option("--nodes", help="Nodes the LLM spans, with --gpus (more than 1 needs pvc://).")
    ] = None,
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="GPU type (a100-40, a100-80, h100-80, h200-141): plan or check fit.")
    ] = None,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs a node has, for the planner.")] = 8,
    context: Annotated[
        int, typer.Option("--context", min=1, help="Tokens per sequence (vLLM max_model_len), for the KV cache.")
    ] = 4096,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Sequences at once (vLLM max_num_seqs), for the KV cache.")
    ] = 32,
    image: Annotated[
        str | None, typer.Option("--image", help="The step models' image (default: this version's).")
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace of the objects.")] = None,
    model_config: Annotated[
        str | None,
        typer.Option("--model-config", help="The model's config.json (or its dir, or a planner preset): shape."),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="inferenceservice (KServe v1beta1) or llminferenceservice (v1alpha2).")
    ] = "inferenceservice",
    market_data_secret: Annotated[
        str | None, typer.Option("--market-data-secret", help="Secret with key 'url': the firm's database.")
    ] = None,
    intake_model_uri: Annotated[
        str | None,
        typer.Option("--intake-model-uri", help="storageUri of the intake classifier: the graph starts with it."),
    ] = None,
) -> None:
    """Print the serving objects as YAML: the LLM (tensor parallel, planned or given), the steps, the graph."""
    from deepmoney.serving.render import Sizing, render_yaml

    sizing = Sizing(gpu=gpu, gpus_per_node=gpus_per_node, context=context, concurrency=concurrency)
    typer.echo(render_yaml(model_uri=model_uri, gpus=gpus, nodes=nodes, image=image, namespace=namespace,
                           model_config=model_config, kind=kind, market_data_secret=market_data_secret,
                           served_model_name=load_config(global_options(ctx).config).serving.served_model_name,
                           intake_model_uri=intake_model_uri, sizing=sizing),
               nl=False)  # fmt: skip


def analyze(
    url: Annotated[str, typer.Option("--url", help="The server (http://127.0.0.1:8080) or, with --graph, the graph.")],
    text: Annotated[str | None, typer.Argument(help="The news text (or --file).")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="JSONL: news (or text), id, date, language.")] = None,
    date: Annotated[
        str | None, typer.Option("--date", help="YYYY-MM-DD the news was published (data as of then).")
    ] = None,
    language: Annotated[str | None, typer.Option("--language", help="en or zh (default: detected).")] = None,
    graph: Annotated[bool, typer.Option("--graph", help="--url is an InferenceGraph's URL: post to it as is.")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Items in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for one answer.")] = 900.0,
    charts: Annotated[
        Path | None, typer.Option("--charts", help="Write each computed chart to DIR/<id>.png (its path replaces it).")
    ] = None,
) -> None:
    """Analyse news with a running chain: one JSON answer per item (sectors, answers, data, figures, timings)."""
    from deepmoney.serving.client import analyze as run_analyze
    from deepmoney.serving.client import chain_url, one_item, read_items, report, save_charts

    if (text is None) == (file is None):
        raise UserError("pass the news text or --file news.jsonl (one of them)")
    if file is not None and (date or language):
        raise UserError("--date and --language are for one text; put date and language in each line of --file")
    items = read_items(file) if file is not None else one_item(str(text), date, language)
    items = items if isinstance(items, list) else [items]
    if charts is not None and charts.exists() and not charts.is_dir():
        raise UserError(f"--charts {charts} is a file; give a directory for the charts")
    answers = run_analyze(chain_url(url, graph), items, concurrency, timeout)
    if charts is not None:
        save_charts(answers, charts)
    lines, error = report(answers)
    typer.echo("\n".join(lines))
    if error is not None:
        raise error


def intake_train(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to write the classifier to.")],
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Labelled JSONL (text, label, language); default: the set deepmoney ships."),
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Register it in MLflow as intake.registered_name (needs a server).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Train the subjective/objective classifier; print its held-out accuracy and F1 (JSON)."""
    from deepmoney.intake.train import train_intake_classifier

    options = global_options(ctx)
    config = load_config(options.config)
    result = train_intake_classifier(output, data or None, config, strict_tracking=register, overwrite=overwrite,
                                     quiet=options.quiet)  # fmt: skip
    manifest = result.manifest
    summary: dict[str, Any] = {"output": result.output, "reused": result.reused, "metrics": manifest.metrics,
                               "train_examples": manifest.train_examples, "heldout_examples": manifest.heldout_examples,
                               "mlflow_run_id": manifest.mlflow_run_id}  # fmt: skip
    if register:
        from deepmoney.registry import register as run_register

        if manifest.mlflow_run_id is None:
            raise UserError(f"{output} was trained without MLflow, so it cannot be registered; "
                            "train it again with MLFLOW_TRACKING_URI set (--overwrite)")  # fmt: skip
        summary["registered"] = run_register(manifest.mlflow_run_id, config.intake.registered_name, config)
    typer.echo(json.dumps(summary, indent=2))


def intake_run(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="The classifier directory (intake train's output).")],
    input_path: Annotated[Path, typer.Option("--input", help="JSONL news: id, text, optional date.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Directory for verdicts.jsonl and forward.jsonl.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Label every item (objective/subjective, duplicate of), resumably; print the counts (JSON)."""
    from deepmoney.intake.stream import run_intake

    options = global_options(ctx)
    manifest = run_intake(model, input_path, output, load_config(options.config), quiet=options.quiet,
                          overwrite=overwrite)  # fmt: skip
    keys = ("items", "objective", "subjective", "duplicates", "rejected", "forwarded", "resumed")
    typer.echo(json.dumps({"output": output, **{k: getattr(manifest, k) for k in keys}}, indent=2))


def plan(
    model: Annotated[
        str, typer.Option("--model", help="A preset (deepseek-llm-67b, ...) or a config.json / model dir.")
    ],
    gpu: Annotated[str, typer.Option("--gpu", help="a100-40, a100-80, h100-80 or h200-141.")],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes of the training pool.")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (the pt block size).")] = 4096,
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Sequences per GPU per pass.")] = 1,
    mfu: Annotated[float, typer.Option("--mfu", help="Model-FLOPs utilisation assumed (0.3-0.5 typical).")] = 0.4,
    tokens: Annotated[float | None, typer.Option("--tokens", help="Tokens to train on: the time it takes.")] = None,
    precision: Annotated[
        str, typer.Option("--precision", help="mixed (DeepSpeed bf16, 16 B/param), amp (18) or pure_bf16 (8).")
    ] = "mixed",
    context: Annotated[int, typer.Option("--context", help="Serving: tokens per sequence in the KV cache.")] = 4096,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Serving: sequences served at once.")] = 32,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per option (then the serving plan).")
    ] = False,
) -> None:
    """Memory per GPU for each ZeRO setup, whether it fits, the speed and time; the serving parallelism."""
    from deepmoney.plan.hardware import gpu as find_gpu
    from deepmoney.plan.memory import PRECISIONS
    from deepmoney.plan.plan import Request, options, serving
    from deepmoney.plan.report import json_lines, table
    from deepmoney.plan.shapes import shape

    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if context < 1 or concurrency < 1:
        raise UserError("--context and --concurrency must be at least 1")
    request = Request(shape(model), find_gpu(gpu), nodes, gpus_per_node, seq_len, micro_batch, mfu, tokens, precision)
    found = options(request)
    served = serving(request.shape, request.gpu, context, concurrency, gpus_per_node)
    typer.echo(json_lines(found, served) if as_json else table(request, found, served))


def launch(
    ctx: typer.Context,
    backend: Annotated[str, typer.Option("--backend", help="local (torchrun here), pytorchjob or trainjob.")],
    stage: Annotated[str | None, typer.Option("--stage", help="pt (packed corpus) or sft (chat examples).")] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Pods (one per node) of the job.")] = 1,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs per pod (0: a CPU pool; default 8); local: ranks.")
    ] = None,
    render: Annotated[bool, typer.Option("--render", help="Print the objects as YAML; submit nothing.")] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="Job name; default <stage>-<output directory name>.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Base model: s3://, models:/ or a path on the claim.")
    ] = None,
    data: Annotated[str | None, typer.Option("--data", help="pt corpus or sft dataset: s3:// or on the claim.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output directory on the claim.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="The pods' image (default: this version's).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace of the job.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Optimizer steps.")] = None,
    micro_batch: Annotated[int | None, typer.Option("--micro-batch", min=1, help="Blocks per rank per pass.")] = None,
    zero: Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage: 0, 1, 2 or 3.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapters or all parameters.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the job ends (default).")] = True,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop waiting after this many seconds (the job goes on).")
    ] = None,
    cancel: Annotated[bool, typer.Option("--cancel", help="Delete this run's job instead of submitting it.")] = False,
    logs: Annotated[bool, typer.Option("--logs", help="Print this run's pod logs instead of submitting it.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="With --logs: the first pod's log as it is written.")
    ] = False,
) -> None:
    """Train on the cluster's GPU pool as a PyTorchJob or TrainJob (--render prints it), or here with torchrun."""
    from deepmoney.launch.launcher import launcher_for
    from deepmoney.launch.render import check_backend

    options = global_options(ctx)
    local = check_backend(backend) == "local"
    flags = {"train.stage": stage, "train.model": model, "train.data": data, "train.output": output,
             "train.max_steps": max_steps, "train.micro_batch": micro_batch, "train.zero.stage": zero,
             "train.lora.enabled": lora, "launch.image": image, "launch.namespace": namespace,
             "train.nproc": gpus_per_node if local else None}  # fmt: skip
    if sum((render, cancel, logs)) > 1:
        raise UserError("--render, --cancel and --logs are different actions; give one")
    if follow and not logs:
        raise UserError("--follow goes with --logs")
    config = load_config(options.config, overrides_from_flags(**flags))
    launcher = launcher_for(config, backend, nodes=nodes, gpus_per_node=gpus_per_node, name=name,
                            quiet=options.quiet)  # fmt: skip
    if render:
        from deepmoney.kube import to_yaml

        typer.echo(to_yaml(launcher.render()), nl=False)
    elif cancel:
        typer.echo(json.dumps(launcher.cancel()))
    elif follow:
        for line in launcher.follow():
            typer.echo(line)
    elif logs:
        for source, text in launcher.logs().items():
            typer.echo(f"==> {source} <==\n{text.rstrip()}")
    else:
        typer.echo(json.dumps(launcher.submit(wait=wait, timeout=timeout)))


def pipeline_compile(
    output: Annotated[Path, typer.Option("--output", "-o", help="The YAML file to write.")] = Path(
        "deepmoney_pipeline.yaml"
    ),
) -> None:
    """Compile the deepmoney pipeline to YAML; submit it with `kfp run create -f FILE -e EXPERIMENT KEY=VALUE ...`."""
    from deepmoney.pipeline.compile import compile_pipeline

    typer.echo(str(compile_pipeline(output)))


def pipeline_run(
    ctx: typer.Context,
    local: Annotated[bool, typer.Option("--local", help="Run it here with kfp.local (one process per task).")] = False,
    params: Annotated[
        Path | None, typer.Option("--params", help="YAML/JSON file of pipeline parameters (corpus, workdir, ...).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE (repeatable; the value is read as YAML).")
    ] = None,
) -> None:
    """Run the deepmoney pipeline: --local runs the same pipeline here (on a cluster: kfp run create -f ...)."""
    from deepmoney.pipeline.local import read_parameters, run_local

    if not local:
        raise UserError("on a cluster, submit the compiled pipeline (deepmoney pipeline compile --output FILE, "
                        "then kfp run create -f FILE); --local runs it here")  # fmt: skip
    arguments = read_parameters(params, param or [])
    typer.echo(json.dumps(run_local(arguments, global_options(ctx).config), indent=2))


def quickstart(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the run's outputs go.")] = Path(
        ".deepmoney/quickstart"
    ),
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="Corpus directory; default: the bundled sample.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="A pipeline parameter NAME=VALUE over the quickstart's (repeatable)."),
    ] = None,
    news: Annotated[
        str | None, typer.Option("--news", help="Id of the bundled news item to analyse (default: the first).")
    ] = None,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the MLflow server an earlier quickstart in --workdir left running.")
    ] = False,
) -> None:
    """Run the main job on the embedded default: the whole pipeline here (kfp.local) on the sample corpus, the
    champion served, one dated news item analysed (recipes/quickstart.yaml)."""
    from deepmoney.pipeline.local import read_parameters
    from deepmoney.quickstart import run_quickstart, stop_quickstart_server

    if stop:
        typer.echo(stop_quickstart_server(workdir))
        return
    options = global_options(ctx)
    params = read_parameters(None, param or [])
    typer.echo(run_quickstart(workdir, corpus, options.config, params, news, options.quiet))


COMMANDS: dict[str, Callable[..., None]] = {
    "config show": config_show,
    "model init": model_init,
    "data build-pt": data_build_pt,
    "data merge-pt": data_merge_pt,
    "synth": synth,
    "synth-merge": synth_merge,
    "train": train_verb,
    "evaluate": evaluate,
    "register": register,
    "promote": promote,
    "registry uri": registry_uri,
    "track sync": track_sync,
    "marketdata list": marketdata_list,
    "marketdata show": marketdata_show,
    "marketdata load": marketdata_load,
    "serve render": serve_render,
    "pipeline compile": pipeline_compile,
    "pipeline run": pipeline_run,
    "analyze": analyze,
    "intake train": intake_train,
    "intake run": intake_run,
    "plan": plan,
    "launch": launch,
    "quickstart": quickstart,
}


def _register() -> None:
    for name, function in COMMANDS.items():
        group, _, verb = name.rpartition(" ")
        (GROUPS[group] if group else app).command(verb)(function)
    GROUPS["serve"].callback()(serve)
    for group, sub in GROUPS.items():
        app.add_typer(sub, name=group)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    run_app(app, list(sys.argv[1:] if argv is None else argv), "deepmoney")
