"""Evaluation results in MLflow: a run of its own, linked to the training run it evaluates.

Evaluation is useful without MLflow (everything is also in the output directory), so a missing
or unreachable server is reported once and the evaluation still succeeds, marked
`mlflow_pending` when a server was configured; `deepmoney track sync` uploads it later. The
registry, which needs the results there, says so when asked to promote.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from deepmoney.config import MlflowConfig
from deepmoney.errors import UserError
from deepmoney.tracking import tags
from deepmoney.tracking.server import connect, mlflow_error, tracking_uri
from deepmoney.tracking.training import METRICS_FILE

log = logging.getLogger(__name__)

ARTIFACTS = ("qa.jsonl", "chain.jsonl", "evaluation.png")


def _client(config: MlflowConfig, strict: bool) -> Any | None:
    """A client for the configured server; None (or, when `strict`, a UserError) when there is none or it is down."""
    if not tracking_uri(config) and not strict:
        return None
    try:
        return connect(config, "record the evaluation")
    except UserError as exc:
        if strict:
            raise
        log.warning("%s: the evaluation is only in the output directory; upload it later with deepmoney track sync",
                    exc)  # fmt: skip
        return None


def log_evaluation(config: MlflowConfig, record: dict[str, Any], params: dict[str, Any], files: Path,
                   strict: bool = False) -> str | None:  # fmt: skip
    """Log `record` (metrics, lineage), `params` and the artifacts in `files` as an evaluation run; its id.

    None when there is no server to log to (or it fails) — unless `strict`, then that is a UserError.
    """
    client = _client(config, strict)
    if client is None:
        if not tracking_uri(config):
            log.info("no MLflow tracking URI: the evaluation is only in its output directory")
        return None
    from mlflow.entities import Metric, Param

    try:
        training = record["training_run_id"]
        if training:
            experiment_id = client.get_run(training).info.experiment_id
        else:
            experiment = client.get_experiment_by_name(config.experiment)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        run_tags = {
            tags.KIND: tags.EVALUATION,
            tags.EVAL_DIGEST: record["eval_digest"],
            tags.EVALUATED_MODEL: record["model"],
            tags.TOKENIZER_SIZE: str(record["tokenizer_size"]),
        }
        if training:
            run_tags[tags.EVALUATED_RUN] = training
        run = client.create_run(experiment_id, run_name=f"eval-{record['eval_digest'][:8]}", tags=run_tags)
        run_id = run.info.run_id
        now = int(run.info.start_time)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in sorted(record["metrics"].items())],
            params=[Param("eval_digest", record["eval_digest"]), Param("model", record["model"][:6000]),
                    *(Param(f"eval.{k}", json.dumps(v)[:6000]) for k, v in params.items())],
        )  # fmt: skip
        for name in ARTIFACTS:
            if (files / name).is_file():
                client.log_artifact(run_id, str(files / name))
        client.log_dict(run_id, {**record, "mlflow_run_id": run_id}, "evaluation.json")
        client.set_terminated(run_id, "FINISHED")
        if training:
            client.set_tag(training, tags.LAST_EVALUATION, run_id)
    except Exception as exc:  # the local results stand; tracking is best effort here
        message = mlflow_error(exc)
        if strict:
            raise UserError(f"MLflow failed to record the evaluation: {message}") from None
        log.warning("MLflow failed to record the evaluation (%s): it is only in its output directory", message)
        return None
    log.info("evaluation logged to MLflow run %s", run_id)
    return run_id


def training_loss_curve(config: MlflowConfig, run_id: str | None, train_output: Path | None
                        ) -> list[tuple[int, float]]:  # fmt: skip
    """The training loss by step: from a train output's metrics.jsonl, else from the training run in MLflow."""
    local = train_output / METRICS_FILE if train_output else None
    if local is not None and local.is_file():
        points = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(int(p["step"]), float(p["loss"])) for p in points if "loss" in p]
    if run_id:
        client = _client(config, strict=False)
        if client is not None:
            try:
                return [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
            except Exception as exc:
                log.warning("could not read the training loss of run %s: %s", run_id, mlflow_error(exc))
    return []
