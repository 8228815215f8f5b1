"""The intake classifier's training in MLflow: a run with its settings, held-out scores and the model's files.

Like evaluation, training the classifier is useful without MLflow: a missing or unreachable
server is reported once and the output directory holds everything — unless the run is to be
registered (`strict`), which needs the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deepmoney.config import MlflowConfig
from deepmoney.errors import UserError
from deepmoney.tracking import tags
from deepmoney.tracking.server import connect, mlflow_error, tracking_uri

log = logging.getLogger(__name__)

MODEL_ARTIFACTS = "model"  # the run's artifact folder of the classifier's files, and its reference.json


def log_classifier(config: MlflowConfig, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                   model_dir: Path, extra_files: list[Path], strict: bool = False) -> str | None:  # fmt: skip
    """Log a classifier training as an MLflow run (params, metrics, the model's files); the run id or None."""
    if not tracking_uri(config):
        if strict:
            raise UserError("cannot register the classifier: no MLflow tracking server; set MLFLOW_TRACKING_URI")
        log.info("no MLflow tracking URI: the classifier is only in its output directory")
        return None
    try:
        client = connect(config, "record the classifier's training")
    except UserError as exc:
        if strict:
            raise
        log.warning("%s: the classifier is only in its output directory", exc)
        return None
    from mlflow.entities import Metric, Param

    try:
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags={tags.KIND: tags.INTAKE_CLASSIFIER})
        run_id = run.info.run_id
        now = int(run.info.start_time)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())],
                         params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])  # fmt: skip
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACTS)
        for path in extra_files:
            client.log_artifact(run_id, str(path))
        model_uri = f"{run.info.artifact_uri}/{MODEL_ARTIFACTS}"
        # the registry finds a run's model through this reference (registry._run_model)
        client.log_dict(run_id, {"uri": model_uri}, f"{MODEL_ARTIFACTS}/reference.json")
        client.set_tag(run_id, tags.MODEL_URI, model_uri)
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # the local output stands; tracking is best effort unless registering
        if strict:
            raise UserError(f"MLflow failed to record the classifier: {mlflow_error(exc)}") from None
        log.warning("MLflow failed to record the classifier (%s): it is only in its output directory",
                    mlflow_error(exc))  # fmt: skip
        return None
    log.info("classifier training logged to MLflow run %s", run_id)
    return run_id
