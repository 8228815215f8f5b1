"""The MLflow model registry: register a training run's model, promote it by evidence, find its weights.

- `register`: the model a training run logged (an MLflow logged model, or a reference to weights
  stored elsewhere) becomes a new version of a registered model, tagged with its lineage: base
  model, data digests, training run, code revision, evaluation summary. Registering the same run
  again returns the existing version.
- `promote`: the candidate is compared with the version the `champion` alias points to, on the
  same evaluation set (equal evaluation digests). It becomes `champion` only if it beats the
  champion's primary metric by the margin and regresses no guard metric beyond its tolerance;
  otherwise it becomes `challenger`. The first model becomes champion if it passes the floors.
  The decision and both sets of numbers are written as tags on the version. Aliases, not the
  deprecated stages. If the champion changes while a promotion is deciding, that promotion
  changes nothing and reports the new champion.
- `serving_uri`: the `s3://` folder behind a version, for a KServe `storageUri` (KServe knows no
  `models:/` or `mlflow-artifacts:` scheme).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from deepmoney.config import DeepmoneyConfig, RegistryConfig
from deepmoney.errors import UserError
from deepmoney.stage import utc_now
from deepmoney.tracking import tags as T
from deepmoney.tracking.server import connect, mlflow_error

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
LOWER_IS_BETTER = ("perplexity", "heldout_loss", "loss")


class PromotionRaced(UserError):
    """The champion changed while this promotion was deciding; nothing was changed."""

    def __init__(self, result: dict[str, Any], expected: int | None = None) -> None:
        now = result["champion_now"]
        now_text = f"version {now}" if now is not None else "no version"
        if expected is not None:
            message = (f"the champion is {now_text}, not version {expected} (--expect-champion); nothing was "
                       "changed; check the registry and run promote again")  # fmt: skip
        else:
            message = (f"the champion changed to {now_text} while deciding; nothing was changed; run promote "
                       "again to compare with the new champion")  # fmt: skip
        super().__init__(message)
        self.result = result


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of `metric` are better."""
    return metric in LOWER_IS_BETTER


def _mlflow_call(what: str, fn: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as exc:
        raise UserError(f"{what}: {mlflow_error(exc)}") from None


# --- register -------------------------------------------------------------------------------------


def register(run_id: str, name: str, config: DeepmoneyConfig, source: str | None = None) -> dict[str, Any]:
    """Register the model of training run `run_id` as a version of `name`; returns {version, source, created}.

    `source` overrides where the version's weights are (e.g. the run's `final/` copied to S3).
    """
    client = connect(config.train.mlflow, "register a model")
    run = _mlflow_call(f"no MLflow run {run_id}", lambda: client.get_run(run_id))
    existing = _mlflow_call("search the registry", lambda: client.search_model_versions(
        f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'"))  # fmt: skip
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        log.info("run %s is already registered as %s version %s", run_id, name, version.version)
        return {"version": int(version.version), "source": version.source, "created": False}
    source, model_id = (source, None) if source else _run_model(client, run)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        _mlflow_call(f"create registered model {name}", lambda: client.create_registered_model(
            name, description="deepmoney finance LLM; versions are training runs, promoted by evaluation"))  # fmt: skip
    tags = _lineage_tags(client, run)
    try:
        version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
    except MlflowException as exc:
        local = "source" in mlflow_error(exc).lower() and not source.startswith(("s3://", "models:/"))
        hint = "; the server takes no local paths: copy the weights to S3 and pass --source s3://…" if local else ""
        raise UserError(f"register run {run_id}: {mlflow_error(exc)}{hint}") from None
    log.info("registered run %s as %s version %s (%s)", run_id, name, version.version, source)
    return {"version": int(version.version), "source": source, "created": True}


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _run_model(client: Any, run: Any) -> tuple[str, str | None]:
    """Where a training run's model is: its logged model, or the reference it logged instead."""
    run_id = run.info.run_id
    logged = _mlflow_call("search logged models", lambda: client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"))  # fmt: skip
    if logged:
        newest = max(logged, key=lambda m: m.creation_timestamp)
        return f"models:/{newest.model_id}", newest.model_id
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/model/reference.json")
        return json.loads(text)["uri"], None
    except (MlflowException, OSError, ValueError, KeyError):
        pass
    raise UserError(
        f"run {run_id} has no model: it logged neither a model nor a reference to one "
        "(train.mlflow.log_model=none, or not a training run); register a run that logged its model"
    )


def _lineage_tags(client: Any, run: Any) -> dict[str, str]:
    params, tags = run.data.params, run.data.tags
    digests = {d.dataset.name: d.dataset.digest for d in (run.inputs.dataset_inputs if run.inputs else [])}
    out = {
        T.TRAINING_RUN: run.info.run_id,
        T.BASE_MODEL: params.get("model", "unknown"),
        T.STAGE: tags.get(T.STAGE, "unknown"),
        T.DATA_DIGESTS: json.dumps(digests, sort_keys=True)[:5000],
        T.GIT_REVISION: tags.get("mlflow.source.git.commit") or tags.get(T.GIT_REVISION, "unknown"),
        T.VERSION: tags.get(T.VERSION, "unknown"),
    }
    latest = _evaluations(client, run.info.run_id, run.info.experiment_id)
    if latest:
        out[T.EVAL_DIGEST] = latest[0]["digest"]
        out[T.EVAL_SUMMARY] = json.dumps(latest[0]["metrics"], sort_keys=True)[:5000]
    return out


# --- evaluations ------------------------------------------------------------------------------------


def _evaluations(client: Any, training_run_id: str, experiment_id: str | None = None) -> list[dict[str, Any]]:
    """Evaluation runs of a training run, newest first: {digest, metrics, run_id, tokenizer_size}."""
    if experiment_id is None:
        experiment_id = _mlflow_call(f"read run {training_run_id}",
                                     lambda: client.get_run(training_run_id).info.experiment_id)  # fmt: skip
    runs = _mlflow_call("search evaluation runs", lambda: client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{T.EVALUATED_RUN}` = '{training_run_id}' and "
                      f"tags.`{T.KIND}` = '{T.EVALUATION}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    ))  # fmt: skip
    return [{"digest": r.data.tags.get(T.EVAL_DIGEST), "metrics": dict(r.data.metrics), "run_id": r.info.run_id,
             "tokenizer_size": int(r.data.tags.get(T.TOKENIZER_SIZE, "0") or 0)} for r in runs]  # fmt: skip


# --- promote ----------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """A decision and why."""

    decision: str
    reasons: list[str]


def decide(candidate: dict[str, float], champion: dict[str, float] | None, policy: RegistryConfig,
           tokenizer_size: int = 0) -> Verdict:  # fmt: skip
    """Champion or challenger, from the two sets of metrics (champion None: the first model, floors only).

    A first model must also beat a uniform guess over the `tokenizer_size` tokens it can emit (the
    tokenizer's, not the embedding's rows, which are padded past the tokenizer).
    """
    primary = policy.primary_metric
    if primary not in candidate:
        raise UserError(f"the candidate's evaluation has no {primary} (registry.primary_metric); it has "
                        f"{', '.join(sorted(candidate)) or 'no metrics'}")  # fmt: skip
    if champion is None:
        failures = []
        floors = dict(policy.floors)
        for metric, bound in floors.items():
            value = candidate.get(metric)
            ok = value is not None and (value <= bound if lower_is_better(metric) else value >= bound)
            if not ok:
                failures.append(f"{metric} {value} misses the floor {bound}")
        if "perplexity" in candidate and tokenizer_size and not candidate["perplexity"] < tokenizer_size:
            failures.append(f"perplexity {candidate['perplexity']:.4g} is no better than a uniform guess over the "
                            f"{tokenizer_size} tokens of its tokenizer")  # fmt: skip
        if not math.isfinite(candidate[primary]):
            failures.append(f"{primary} is {candidate[primary]}")
        if failures:
            return Verdict(CHALLENGER, ["first model, but " + "; ".join(failures)])
        return Verdict(CHAMPION, ["first model; it passes the floors"])
    if primary not in champion:
        raise UserError(f"the champion's evaluation has no {primary}; evaluate it again on the same set")
    new, old = candidate[primary], champion[primary]
    if lower_is_better(primary):
        wins, needed = new <= old * (1 - policy.margin), f"<= {old * (1 - policy.margin):.6g}"
    else:
        wins, needed = new >= old * (1 + policy.margin), f">= {old * (1 + policy.margin):.6g}"
    reasons = [f"{primary} {new:.6g} vs champion {old:.6g} (needs {needed}): {'wins' if wins else 'does not win'}"]
    regressions = []
    for metric, tolerance in sorted(policy.guards.items()):
        if metric not in candidate or metric not in champion:
            continue
        worse = (
            (candidate[metric] - champion[metric])
            if lower_is_better(metric)
            else (champion[metric] - candidate[metric])
        )
        if worse > tolerance:
            regressions.append(f"{metric} {candidate[metric]:.6g} vs {champion[metric]:.6g} regresses by "
                               f"{worse:.4g} > {tolerance}")  # fmt: skip
    reasons += regressions or ["no guard metric regresses beyond its tolerance"]
    return Verdict(CHAMPION if wins and not regressions else CHALLENGER, reasons)


def _alias(client: Any, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "alias" in str(exc).lower():
            return None
        raise UserError(f"read alias {alias} of {name}: {mlflow_error(exc)}") from None


def promote(name: str, version: int, config: DeepmoneyConfig, dry_run: bool = False,
            expect_champion: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Decide and (unless `dry_run`) apply champion/challenger for `name` version `version`."""
    client = connect(config.train.mlflow, "promote a model")
    policy = config.registry
    candidate = _mlflow_call(f"{name} version {version}", lambda: client.get_model_version(name, str(version)))
    observed = _alias(client, name, CHAMPION)
    result: dict[str, Any] = {"name": name, "version": version, "champion_before": observed, "dry_run": dry_run,
                              "primary_metric": policy.primary_metric, "changed": False}  # fmt: skip
    if expect_champion is not None and observed != expect_champion:
        raise PromotionRaced({**result, "decision": "aborted", "champion_now": observed}, expected=expect_champion)
    evaluations = _evaluations(client, candidate.run_id)
    if not evaluations:
        raise UserError(f"{name} version {version} has no evaluation; run: deepmoney evaluate --model "
                        f"models:/{name}/{version} --data DIR --output DIR")  # fmt: skip
    if observed == version:
        return {
            **result,
            "decision": CHAMPION,
            "reasons": ["already the champion"],
            "candidate": evaluations[0]["metrics"],
            "champion": evaluations[0]["metrics"],
            "eval_digest": evaluations[0]["digest"],
        }
    champion_metrics = None
    chosen = evaluations[0]
    if observed is not None:
        champion_version = _mlflow_call("read the champion", lambda: client.get_model_version(name, str(observed)))
        theirs = {e["digest"]: e for e in _evaluations(client, champion_version.run_id)}
        common = next((e for e in evaluations if e["digest"] in theirs), None)
        if common is None:
            raise UserError(f"the champion (version {observed}) has no evaluation on the candidate's evaluation set "
                            f"{chosen['digest']}; run: deepmoney evaluate --model models:/{name}@{CHAMPION} "
                            "--data <the same data> --output DIR")  # fmt: skip
        chosen, champion_metrics = common, theirs[common["digest"]]["metrics"]
    verdict = decide(chosen["metrics"], champion_metrics, policy, chosen["tokenizer_size"])
    result.update({"decision": verdict.decision, "reasons": verdict.reasons, "eval_digest": chosen["digest"],
                   "candidate": chosen["metrics"], "champion": champion_metrics})  # fmt: skip
    if dry_run:
        return result
    with promotion_lock(client, name, policy.lock_settle_seconds, policy.lock_timeout_seconds):
        now = _alias(client, name, CHAMPION)
        if now != observed:
            raise PromotionRaced({**result, "decision": "aborted", "champion_now": now})
        _apply(client, name, version, verdict.decision)
        _tag_decision(client, name, version, verdict, observed, chosen, champion_metrics)
    result["changed"] = True
    _log_comparison_chart(client, name, version, chosen, champion_metrics)
    log.info("%s version %s is now %s", name, version, verdict.decision)
    return result


def _tag_decision(client: Any, name: str, version: int, verdict: Verdict, observed: int | None,
                  chosen: dict[str, Any], champion_metrics: dict[str, float] | None) -> None:  # fmt: skip
    decision = {
        T.DECISION: verdict.decision,
        T.DECISION_REASONS: " | ".join(verdict.reasons)[:5000],
        T.COMPARED_WITH: str(observed) if observed is not None else "none",
        T.EVAL_DIGEST: chosen["digest"],
        T.CANDIDATE_METRICS: json.dumps(chosen["metrics"], sort_keys=True)[:5000],
        T.CHAMPION_METRICS: json.dumps(champion_metrics, sort_keys=True)[:5000],
        T.DECIDED_AT: utc_now(),
    }
    for key, value in decision.items():
        _mlflow_call("tag the version", lambda k=key, v=value: client.set_model_version_tag(name, str(version),
                                                                                            k, v))  # fmt: skip


@contextmanager
def promotion_lock(client: Any, name: str, settle: float, timeout: float) -> Iterator[None]:
    """Hold the registered model's promotion lock (a tag), so that one promotion decides at a time.

    The registry has no compare-and-set, so the lock is claimed by writing a unique token and
    reading it back after `settle` seconds: of contenders that wrote within that window the last
    writer holds it and the others see its token and wait. A lock older than `timeout` (a
    promotion that died holding it) is taken over.
    """
    from mlflow.exceptions import MlflowException

    token = f"{uuid.uuid4().hex}@{time.time():.3f}"
    deadline = time.monotonic() + timeout
    while True:
        holder = _mlflow_call("read the promotion lock", lambda: client.get_registered_model(name)).tags.get(
            T.PROMOTION_LOCK
        )
        stale = holder is not None and time.time() - float(holder.rsplit("@", 1)[-1]) > timeout
        if holder is None or stale:
            _mlflow_call("take the promotion lock",
                         lambda: client.set_registered_model_tag(name, T.PROMOTION_LOCK, token))  # fmt: skip
            time.sleep(settle)
            tags = _mlflow_call("read the promotion lock", lambda: client.get_registered_model(name)).tags
            if tags.get(T.PROMOTION_LOCK) == token:
                break
        if time.monotonic() > deadline:
            raise UserError(f"another promotion of {name} holds the lock ({holder}); try again later")
        time.sleep(settle / 2)
    try:
        yield
    finally:
        try:
            if client.get_registered_model(name).tags.get(T.PROMOTION_LOCK) == token:
                client.delete_registered_model_tag(name, T.PROMOTION_LOCK)
        except MlflowException as exc:
            log.warning("could not release the promotion lock of %s (%s); it expires after %.0f s", name,
                        mlflow_error(exc), timeout)  # fmt: skip


def _log_comparison_chart(client: Any, name: str, version: int, chosen: dict[str, Any],
                          champion_metrics: dict[str, float] | None) -> None:  # fmt: skip
    """The candidate-vs-champion chart, into the candidate's evaluation run (best effort)."""
    import tempfile
    from pathlib import Path

    from deepmoney.charts import metrics_chart

    try:
        with tempfile.TemporaryDirectory() as scratch:
            path = metrics_chart(Path(scratch, "promotion.png"), chosen["metrics"], champion_metrics,
                                 title=f"{name} version {version} vs champion on {chosen['digest']}")  # fmt: skip
            client.log_artifact(chosen["run_id"], str(path))
    except Exception as exc:  # a chart is not worth failing a promotion that already happened
        log.warning("could not log the comparison chart: %s", str(exc).splitlines()[0])


def _apply(client: Any, name: str, version: int, decision: str) -> None:
    if decision == CHAMPION:
        _mlflow_call("set the champion alias", lambda: client.set_registered_model_alias(name, CHAMPION, str(version)))
        if _alias(client, name, CHALLENGER) == version:
            _mlflow_call("clear the challenger alias", lambda: client.delete_registered_model_alias(name, CHALLENGER))
    else:
        _mlflow_call("set the challenger alias",
                     lambda: client.set_registered_model_alias(name, CHALLENGER, str(version)))  # fmt: skip


# --- serving URI ------------------------------------------------------------------------------------


def alias_version(name: str, alias: str, config: DeepmoneyConfig) -> dict[str, Any] | None:
    """The version of `name` behind `alias` (version, run id, the promotion's decision and reasons), or None."""
    client = connect(config.train.mlflow, "look up the registry")
    version = _alias(client, name, alias)
    if version is None:
        return None
    mv = _mlflow_call(f"{name} version {version}", lambda: client.get_model_version(name, str(version)))
    tags = mv.tags or {}
    return {"name": name, "alias": alias, "version": version, "run_id": mv.run_id,
            "decision": tags.get(T.DECISION), "reasons": tags.get(T.DECISION_REASONS, "")}  # fmt: skip


def serving_uri(name: str, config: DeepmoneyConfig, alias: str | None = None, version: int | None = None) -> str:
    """The storage URI (s3://…) of the Hugging Face folder behind a registered version."""
    if (alias is None) == (version is None):
        raise UserError("give exactly one of --alias or --version")
    client = connect(config.train.mlflow, "look up the registry")
    if alias is not None:
        mv = _mlflow_call(f"{name}@{alias}", lambda: client.get_model_version_by_alias(name, alias))
    else:
        mv = _mlflow_call(f"{name} version {version}", lambda: client.get_model_version(name, str(version)))
    source = mv.source
    if source.startswith("models:/"):
        model = _mlflow_call("read the logged model", lambda: client.get_logged_model(source.removeprefix("models:/")))
        location = model.artifact_location.rstrip("/") + "/model"  # the Hugging Face folder of the flavor
    elif source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        location = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    else:
        location = source
    return storage_location(location, config.registry.artifacts_destination)


def storage_location(location: str, destination: str | None) -> str:
    """`mlflow-artifacts:/…` -> the same path under the server's artifacts destination; other URIs unchanged."""
    if not location.startswith("mlflow-artifacts:"):
        return location
    path = location.removeprefix("mlflow-artifacts:")
    if path.startswith("//"):  # mlflow-artifacts://host:port/path
        path = "/" + path[2:].split("/", 1)[1] if "/" in path[2:] else "/"
    if not destination:
        raise UserError(
            f"{location} is served by the MLflow server; set registry.artifacts_destination to the "
            "server's --artifacts-destination (e.g. s3://mlflow/artifacts) to get its S3 location"
        )
    return destination.rstrip("/") + "/" + path.lstrip("/")
