"""`deepmoney track sync OUT`: upload to MLflow what a training or an evaluation kept offline.

A training that ran while MLflow was unreachable (at the start, or for part of the run) finished
anyway, with its metrics in `metrics.jsonl`, the undelivered rest in `mlflow_offline.json` and
`mlflow_pending: true` in its manifest. Syncing creates the run it would have had (or completes
the one it had), with its params, tags, dataset inputs, every metric step MLflow lacks, the logged
dicts and the model, then records the run id in the manifest. An evaluation made offline becomes
its evaluation run, linked to the (synced) training run. After that, `register` and `promote` work
as for a run that was tracked live. Syncing twice changes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from deepmoney.config import MlflowConfig, hide_passwords
from deepmoney.errors import UserError
from deepmoney.stage import EvaluationManifest, TrainManifest, manifest_kind, read_manifest, write_manifest
from deepmoney.storage import Storage, atomic_write_bytes
from deepmoney.tracking import tags
from deepmoney.tracking.evaluation import log_evaluation
from deepmoney.tracking.server import connect, mlflow_error, tracking_uri
from deepmoney.tracking.training import OFFLINE_FILE, RUN_FILE, Tracker, read_metrics

log = logging.getLogger(__name__)


def sync_output(output: str, config: MlflowConfig, storage: Storage | None = None) -> tuple[str, bool]:
    """Upload a train or evaluate output's offline tracking; returns (MLflow run id, whether anything was sent)."""
    storage = storage or Storage()
    kind = manifest_kind(storage, output)
    if kind == "model":
        return sync_training(Path(output), config, storage)
    if kind == "evaluation":
        return sync_evaluation(Path(output), config, storage)
    raise UserError(f"{output} is not a finished train or evaluate output (manifest kind {kind or 'none'}); "
                    "only those are tracked in MLflow")  # fmt: skip


def _offline(output: Path) -> dict[str, Any]:
    path = output / OFFLINE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def sync_training(output: Path, config: MlflowConfig, storage: Storage) -> tuple[str, bool]:
    """Create or complete the MLflow run of a finished training output (see the module docstring)."""
    manifest = read_manifest(storage, output, TrainManifest)
    pending = bool((manifest.model_extra or {}).get("mlflow_pending"))
    if manifest.mlflow_run_id and not pending:
        return manifest.mlflow_run_id, False
    offline = _offline(output)
    run = offline.get("run") or {}
    if manifest.mlflow_run_id is None and not run:
        raise UserError(f"{output} was trained without tracking (no MLflow URI was set, so nothing was kept to "
                        "upload); train again with MLFLOW_TRACKING_URI set")  # fmt: skip
    kept = {k: run[k] for k in ("experiment", "artifact_location") if run.get(k)}
    settings = config.model_copy(update={**kept, "system_metrics": False})  # the machine now is not the trainer
    client = connect(settings, f"sync {output}")
    given = tracking_uri(settings)
    uri = hide_passwords(given)  # as recorded in the output and logged
    if manifest.mlflow_run_id and manifest.mlflow_tracking_uri and manifest.mlflow_tracking_uri not in (uri, given):
        raise UserError(f"{output} was tracked at {hide_passwords(manifest.mlflow_tracking_uri)}, not {uri}; sync it "
                        "to that server")  # fmt: skip
    tracker = Tracker(settings, True, output, record_locally=False)
    if manifest.mlflow_run_id is None:
        (output / RUN_FILE).unlink(missing_ok=True)  # a run id from another server must not be reopened
        tracker.start(run.get("run_name") or f"{manifest.stage}-{output.name}", run.get("params", {}),
                      {**run.get("tags", {}), tags.SYNCED_FROM: str(output.resolve())})  # fmt: skip
    else:
        atomic_write_bytes(output / RUN_FILE, json.dumps({"run_id": manifest.mlflow_run_id, "tracking_uri": uri})
                           .encode())  # fmt: skip
        tracker.start("", {}, {})
        if offline.get("params"):
            tracker.log_params(offline["params"])
    if not tracker.active:
        raise UserError(f"cannot sync {output}: MLflow did not accept the run; nothing was changed")
    for dataset in offline.get("datasets", []):
        tracker.log_dataset(dataset["info"], dataset["context"])
    for name, data in offline.get("dicts", {}).items():
        tracker.log_dict(data, name)
    if offline.get("tags"):
        tracker.set_tags(offline["tags"])
    _send_missing_metrics(client, tracker, output)
    model_uri = manifest.mlflow_model_uri
    if offline.get("model"):
        wanted = offline["model"]
        model_uri = tracker.log_model(Path(manifest.final), wanted["mode"], wanted["reference"]) or model_uri
    tracker.end("FINISHED")
    if tracker.pending:
        raise UserError(f"MLflow did not take all of {output} (see the warnings above); run the sync again")
    updated = manifest.model_copy(update={"mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": uri,
                                          "mlflow_model_uri": model_uri})  # fmt: skip
    updated.__pydantic_extra__ = {**(manifest.model_extra or {}), "mlflow_pending": False}
    atomic_write_bytes(output / RUN_FILE, json.dumps({"run_id": tracker.run_id, "tracking_uri": uri}).encode())
    write_manifest(output / "manifest.json", updated)
    (output / OFFLINE_FILE).unlink(missing_ok=True)
    log.info("synced %s to MLflow run %s at %s", output, tracker.run_id, uri)
    return str(tracker.run_id), True


def _send_missing_metrics(client: Any, tracker: Tracker, output: Path) -> None:
    """Every metrics.jsonl value whose step MLflow does not have yet for that metric."""
    lines = read_metrics(output)
    keys = {k for line in lines for k in line if k != "step"}
    have: dict[str, set[int]] = {}
    for key in keys:
        try:
            have[key] = {m.step for m in client.get_metric_history(tracker.run_id, key)}
        except Exception as exc:
            raise UserError(f"cannot read the metrics of run {tracker.run_id}: {mlflow_error(exc)}") from None
    for line in lines:
        step = int(line["step"])
        missing = {k: float(v) for k, v in line.items() if k != "step" and step not in have.get(k, set())}
        if missing:
            tracker.log_metrics(missing, step)
    tracker.flush()


def sync_evaluation(output: Path, config: MlflowConfig, storage: Storage) -> tuple[str, bool]:
    """Log an evaluation made offline as its evaluation run, linked to its training run."""
    manifest = read_manifest(storage, output, EvaluationManifest)
    if manifest.mlflow_run_id:
        return manifest.mlflow_run_id, False
    extra = manifest.model_extra or {}
    training = manifest.training_run_id
    train_output = extra.get("training_output")
    if training is None and train_output:
        trained = read_manifest(storage, train_output, TrainManifest)
        if trained.mlflow_run_id is None or (trained.model_extra or {}).get("mlflow_pending"):
            raise UserError(f"the model evaluated in {output} comes from {train_output}, which is not in MLflow yet; "
                            f"sync it first: deepmoney track sync {train_output} {output}")  # fmt: skip
        training = trained.mlflow_run_id
    record = {**manifest.model_dump(mode="json"), "training_run_id": training}
    run_id = log_evaluation(config, record, extra.get("params", {}), output, strict=True)
    assert run_id is not None  # strict: a failure raised
    updated = manifest.model_copy(update={"mlflow_run_id": run_id, "training_run_id": training})
    updated.__pydantic_extra__ = {**extra, "mlflow_pending": False}
    write_manifest(output / "manifest.json", updated)
    log.info("synced evaluation %s to MLflow run %s", output, run_id)
    return run_id, True
