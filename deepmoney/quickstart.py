"""The main job on the embedded default: what the README's first command runs.

The whole deepmoney pipeline, run here by `kfp.local` — the same pipeline a cluster runs — on the bundled
sample corpus, then the champion served and asked about one bundled dated news item:

1. a tiny base model whose tokenizer is trained on the corpus, and two more tiny models (other seeds)
   that play the questioner and the answerer (the extractor is the questioner's model): the embedded
   models, nothing downloaded;
2. a local MLflow server (`WORKDIR/mlflow`: sqlite store, proxied artifacts) unless MLFLOW_TRACKING_URI
   names one; it is left running so that its UI stays open, and a later run reuses it;
3. the pipeline (`pipeline.local.run_local`): build-pt and synthesis each in 2 shards, pt then sft training
   on 2 CPU ranks under torchrun, evaluation, registration and promotion, the intake classifier;
4. the champion served by the local KServe ModelServer behind the chain (intake first), and the news item
   analysed: the three steps' answers and the figures step 3 computed.

Its settings are the recipe `recipes/quickstart.yaml` (or --config) and `PARAMETERS` (each can be changed
with `--param NAME=VALUE`). A second run reuses every finished stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepmoney import env
from deepmoney.config import DeepmoneyConfig, deep_merge, load_config, overrides_from_flags
from deepmoney.errors import UserError
from deepmoney.model_init import init_model

log = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = CHECKOUT / "examples" / "corpus"
SAMPLE_NEWS = CHECKOUT / "examples" / "news" / "news.jsonl"
RECIPE = CHECKOUT / "recipes" / "quickstart.yaml"
REGISTERED_NAME = "deepmoney-quickstart"
# The embedded role models: the base model's architecture and corpus, other random initialisations, so that the
# answerer is a different model from the questioner (as synthesis requires).
ROLE_SEEDS = {"questioner": 1, "answerer": 2}
PARAMETERS: dict[str, Any] = {
    "pt_shards": 2,  # build-pt fans out over 2 workers and merges (the bytes of one build)
    "sft_shards": 2,  # synthesis too
    "backend": "local",  # torchrun in the task's own process tree
    "nodes": 1,
    "gpus_per_node": 2,  # two CPU ranks, as a GPU node would run
    "pt_max_steps": 80,  # at the recipe's learning rate (2e-3: a random-init model learns fast)
    # The role models are random, so the sft dataset is noise: a few steps at a fine-tuning rate show the stage;
    # at pt's rate they would unlearn what pt taught, and the evaluation would rightly refuse the model promotion.
    "sft_max_steps": 5,
    "sft_learning_rate": 2e-5,
    "registered_model": REGISTERED_NAME,
}


def run_quickstart(workdir: Path, corpus: Path | None, config_path: Path | None, params: dict[str, Any],
                   news_id: str | None = None, quiet: bool = False) -> str:  # fmt: skip
    """Run the pipeline and the analysis in `workdir`; a printable summary."""
    from deepmoney.pipeline.local import check_parameters, run_local

    corpus = (corpus or SAMPLE_CORPUS).resolve()
    if not corpus.is_dir():
        raise UserError(f"corpus directory not found: {corpus} (pass --corpus, or run from a source checkout)")
    config_path = _recipe(config_path)
    config = load_config(config_path)
    item = _news_item(news_id)
    workdir = workdir.resolve()
    models = {"base": workdir / "base-model", **{role: workdir / f"{role}-model" for role in ROLE_SEEDS}}
    arguments = {**PARAMETERS, "corpus": [str(corpus)], "base_model": str(models["base"]), "workdir": str(workdir),
                 "questioner": f"local:{models['questioner']}", "answerer": f"local:{models['answerer']}",
                 "extractor": f"local:{models['questioner']}", **params}  # fmt: skip
    check_parameters(arguments)  # a mistyped --param fails before anything is made or started
    _embedded_models(models, corpus, config, quiet)
    with _tracking(workdir) as (tracking, server_note):
        result = run_local(arguments, str(config_path) if config_path else None)
        champion = _champion(str(arguments["registered_model"]), config)
        answer, answer_path = _analyze(workdir, champion, result["outputs"], item, config)
    return "\n".join(_summary(workdir, models, result, champion, item, answer, answer_path, tracking, server_note))


def stop_quickstart_server(workdir: Path) -> str:
    """Stop the MLflow server a quickstart in `workdir` left running; a line saying what was done."""
    from deepmoney.tracking.local_server import stop_server

    home = workdir.resolve() / "mlflow"
    return f"stopped the MLflow server of {home}" if stop_server(home) else f"no MLflow server was running for {home}"


def _recipe(config_path: Path | None) -> Path | None:
    if config_path is not None or env.get(env.CONFIG) is not None:
        return config_path
    if not RECIPE.is_file():
        raise UserError(f"the quickstart recipe {RECIPE} is missing; run from a source checkout or pass --config")
    return RECIPE


def _news_item(news_id: str | None) -> dict[str, Any]:
    from deepmoney.serving.client import read_items

    if not SAMPLE_NEWS.is_file():
        raise UserError(f"the bundled news {SAMPLE_NEWS} is missing; run from a source checkout")
    items = read_items(SAMPLE_NEWS)
    if news_id is None:
        return items[0]
    for item in items:
        if item.get("id") == news_id:
            return item
    raise UserError(f"--news {news_id}: no such item in {SAMPLE_NEWS}; it has {', '.join(i['id'] for i in items)}")


def _embedded_models(models: dict[str, Path], corpus: Path, config: DeepmoneyConfig, quiet: bool) -> None:
    """Make the base model and the two role models (`model init`; each reused when it is already there)."""
    init_model([str(corpus)], str(models["base"]), config, quiet=quiet)
    for role, seed in ROLE_SEEDS.items():
        role_config = load_config(overrides=deep_merge(config.model_dump(mode="json", exclude_unset=True),
                                                       overrides_from_flags(**{"model.seed": seed})))  # fmt: skip
        init_model([str(corpus)], str(models[role]), role_config, quiet=quiet)


@contextlib.contextmanager
def _tracking(workdir: Path) -> Iterator[tuple[str, str]]:
    """MLFLOW_TRACKING_URI for the run: the one set, or the workdir's local server (started or reused)."""
    given = env.get(env.MLFLOW_TRACKING_URI)
    if given:
        yield given, "(MLFLOW_TRACKING_URI)"
        return
    from deepmoney.tracking.local_server import ensure_server

    server = ensure_server(workdir / "mlflow")
    os.environ[env.MLFLOW_TRACKING_URI] = server.url
    try:
        note = "reused" if server.reused else "started"
        yield server.url, f"({note}; it keeps running: `deepmoney quickstart --stop` ends it)"
    finally:
        os.environ.pop(env.MLFLOW_TRACKING_URI, None)


def _champion(name: str, config: DeepmoneyConfig) -> dict[str, Any]:
    """The registered champion the run left (the pipeline promotes only a candidate that wins)."""
    from deepmoney.registry import alias_version

    champion = alias_version(name, "champion", config)
    if champion is None:
        raise UserError(f"the pipeline left no champion of {name}: the evaluation did not earn the trained model "
                        "promotion (its reasons are in the run log above), so there is nothing to serve")  # fmt: skip
    return champion


def _analyze(workdir: Path, champion: dict[str, Any], outputs: dict[str, str], item: dict[str, Any],
             config: DeepmoneyConfig) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """Serve the champion (the local KServe ModelServer, intake first) and analyse `item`; its answer and file."""
    from deepmoney.serving.client import analyze, chain_url, save_charts
    from deepmoney.serving.server import BackgroundServer, ServeOptions, resolve_llm
    from deepmoney.storage import atomic_write_bytes

    name = champion["name"]
    model_dir = resolve_llm(f"models:/{name}/{champion['version']}", config)
    options = ServeOptions(config=config, model_dir=model_dir, port=0, intake_model=outputs["intake_classifier"])
    log.info(
        "serving %s version %s (%s) and analysing news item %s", name, champion["version"], model_dir, item.get("id")
    )
    with BackgroundServer(options) as server:
        answers = analyze(chain_url(server.url), [item], concurrency=1)
    answer = answers[0]
    if answer.status != 200:
        raise UserError(f"the analysis of news item {answer.id} failed: HTTP {answer.status} "
                        f"{answer.body.get('error', '')}")  # fmt: skip
    directory = workdir / "analysis"
    directory.mkdir(parents=True, exist_ok=True)
    save_charts(answers, directory)
    path = directory / f"{answer.id}.json"
    atomic_write_bytes(path, json.dumps({"id": answer.id, **answer.body}, indent=2, ensure_ascii=False).encode())
    return answer.body, path


def _summary(workdir: Path, models: dict[str, Path], result: dict[str, Any], champion: dict[str, Any],
             item: dict[str, Any], answer: dict[str, Any], answer_path: Path, tracking: str,
             server_note: str) -> list[str]:  # fmt: skip
    outputs = result["outputs"]
    manifests = {name: _manifest(Path(uri)) for name, uri in outputs.items()}
    pt, sft = manifests["pt_corpus"], manifests["sft_dataset"]
    pt_model, sft_model, evaluation = manifests["pt_model"], manifests["sft_model"], manifests["evaluation"]
    metrics = evaluation.get("metrics", {})
    lines = [
        "deepmoney quickstart: the deepmoney pipeline on the embedded default (kfp.local), then one news item",
        f"  pt corpus      {pt.get('documents')} documents, {pt.get('tokens')} tokens in {pt.get('blocks')} blocks "
        f"of {pt.get('block_size')} ({result['parameters']['pt_shards']} shards merged)",
        f"  sft dataset    {sft.get('records')} question-answer records, {sft.get('rejected')} rejected by the filters "
        f"({result['parameters']['sft_shards']} shards merged)",
        f"  pt training    {_training(pt_model)}",
        f"  sft training   {_training(sft_model)}",
        f"  evaluation     held-out perplexity {metrics.get('perplexity', float('nan')):.1f}",
        f"  registry       {_registry(champion)}",
        f"  news           {item.get('id')} ({item.get('date')}): {_short(item.get('news'), 100)}",
    ]
    lines += _answer_lines(answer)
    lines += [
        f"  MLflow UI      {tracking} {server_note}",
        "  written to     " + str(workdir),
        *(f"    {label:<20} {path}" for label, path in _written(models, outputs, answer_path, answer)),
    ]
    return lines


def _answer_lines(answer: dict[str, Any]) -> list[str]:
    """The three steps' answers and the computed figures, each labelled."""
    lines = []
    intake = answer.get("intake") or {}
    if intake:
        lines.append(f"  intake         {intake.get('label')} ({intake.get('score', 0):.2f}); "
                     f"{'forwarded to the chain' if intake.get('forward') else 'not forwarded'}")  # fmt: skip
    stopped = answer.get("stopped")
    if stopped:
        lines.append(f"  stopped        at {stopped.get('step')}: {stopped.get('reason')}")
    sectors = ", ".join(s.get("name", "?") for s in answer.get("sectors") or []) or "(none)"
    lines.append(f"  step 1         sectors or targets affected: {sectors}")
    data = ", ".join(answer.get("data_requested") or []) or "(none)"
    lines.append(f"  step 2         method: {_short(answer.get('method'))}; data it needs: {data}")
    lines.append(f"  step 3         analysis: {_short(answer.get('analysis'))}")
    computed = answer.get("computed") or {}
    if computed.get("figures"):
        lines.append(f"  figures        {computed.get('method')} ({computed.get('source')} specification) on "
                     f"{', '.join(s['id'] for s in computed.get('series') or [])}, as of {computed.get('as_of')}: "
                     f"{_figures(computed['figures'])}")  # fmt: skip
        lines += [f"                 note: {_short(note, 200)}" for note in computed.get("notes") or []]
    else:
        lines.append(f"  figures        none computed: {computed.get('error') or 'no computation in the answer'}")
    return lines


def _written(models: dict[str, Path], outputs: dict[str, str], answer_path: Path, answer: dict[str, Any]
             ) -> list[tuple[str, str]]:  # fmt: skip
    rows = [(f"{name} model", str(path)) for name, path in models.items()]
    rows += [(name.replace("_", " "), uri) for name, uri in outputs.items()]
    rows.append(("answer", str(answer_path)))
    chart = (answer.get("computed") or {}).get("chart_png")
    if chart:
        rows.append(("chart", str(chart)))
    return rows


def _training(manifest: dict[str, Any]) -> str:
    first, final = manifest.get("first_loss"), manifest.get("final_loss")
    loss = f", loss {first:.3f} -> {final:.3f}" if first is not None and final is not None else ""
    return f"{manifest.get('steps')} steps on {manifest.get('world_size')} CPU ranks{loss}"


def _registry(champion: dict[str, Any]) -> str:
    return (f"{champion['name']} version {champion['version']} is the champion (run {champion['run_id']}): "
            f"{_short(champion.get('reasons') or champion.get('decision'), 200)}")  # fmt: skip


def _manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _short(text: Any, limit: int = 160) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _figures(figures: dict[str, Any]) -> str:
    """The computed numbers (4 significant digits), then how many values each table holds; unset ones left out."""
    numbers = [f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in figures.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and k != "method"]  # fmt: skip
    tables = [f"{k}: {len(v)} values" for k, v in figures.items() if isinstance(v, list | dict) and v]
    return "; ".join(numbers + tables)
