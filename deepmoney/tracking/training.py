"""Rank-0 experiment tracking with MLflow that never costs a training run, nor loses what it tracks.

Every metric line also goes to `metrics.jsonl` in the output directory. With no tracking URI the
run says so once and goes on. A server that is unreachable at the start, or fails mid-run, is
reported once; metrics are buffered and sent when it answers again (tried at most once a minute).
Whatever could not be delivered — the run itself, its params and tags, dataset inputs, logged
dicts, the model — is kept in `mlflow_offline.json` beside `metrics.jsonl`, and the output's
manifest says `mlflow_pending: true`; `deepmoney track sync OUT` (or re-running the same training)
uploads it later, so a model trained while MLflow was down can still be registered. A resumed run
continues the same MLflow run (its id is kept in the output directory).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from deepmoney.config import MlflowConfig, hide_passwords
from deepmoney.storage import atomic_write_bytes
from deepmoney.tracking import tags
from deepmoney.tracking.server import configure_client, reachable, tracking_uri

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
OFFLINE_FILE = "mlflow_offline.json"
METRICS_FILE = "metrics.jsonl"
RETRY_SECONDS = 60.0
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template*", "vocab.*",
                   "merges.txt", "*.model", "*.tiktoken")  # fmt: skip


def flatten_params(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow's flat `a.b.c: text` pairs (lists as JSON), each cut to MLflow's 6000 characters.

    URLs are recorded without their passwords (a tracking URI may carry its user's).
    """
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            out.update(flatten_params(inner, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = hide_passwords(json.dumps(value) if isinstance(value, list) else str(value))[:6000]
    return out


def tokenizer_files(model_dir: Path) -> list[Path]:
    """The tokenizer's files in a Hugging Face model directory."""
    return sorted({p for pattern in TOKENIZER_FILES for p in Path(model_dir).glob(pattern) if p.is_file()})


def read_metrics(output: Path) -> list[dict[str, Any]]:
    """The metric lines of a training output (`metrics.jsonl`), in order."""
    path = output / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Tracker:
    """MLflow logging on rank 0; a no-op elsewhere. Failures degrade to files in the output directory."""

    def __init__(self, config: MlflowConfig, is_main: bool, output: Path, record_locally: bool = True) -> None:
        self.config = config
        self.is_main = is_main
        self.output = output
        self.record_locally = record_locally  # False when replaying a run kept offline (sync)
        self.uri = tracking_uri(config) if is_main else None
        self.shown_uri = hide_passwords(self.uri)  # the URI as logged and recorded: without a password in it
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._buffer: list[tuple[dict[str, float], int]] = []
        self._down_since: float | None = None
        self._mlflow: Any = None
        self._offline: dict[str, Any] = {}  # what MLflow has not received yet (OFFLINE_FILE)

    @property
    def active(self) -> bool:
        """Whether there is a run on a server to send to."""
        return self._mlflow is not None and self.run_id is not None

    @property
    def pending(self) -> bool:
        """Tracking was asked for, but MLflow lacks part of this run (see OFFLINE_FILE): sync it later."""
        return bool(self.uri) and (not self.active or bool(self._buffer) or bool(self._offline))

    def _failed(self, what: str, exc: BaseException | str) -> None:
        if self._down_since is None:
            reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            reason = hide_passwords(reason)  # MLflow's messages name the URL they called
            log.warning(
                "MLflow at %s failed to %s (%s); training continues, everything is kept in %s; upload it later "
                "with: deepmoney track sync %s",
                self.shown_uri, what, reason, self.output, self.output,
            )  # fmt: skip
        self._down_since = time.monotonic()

    def _keep(self, key: str, value: Any) -> None:
        """Remember something MLflow did not get, in the output directory (read back by `sync`)."""
        if not self.is_main or not self.uri or not self.record_locally:
            return
        if key == "dicts":
            self._offline.setdefault("dicts", {}).update(value)
        elif key == "datasets":
            self._offline.setdefault("datasets", []).append(value)
        else:
            self._offline[key] = value
        atomic_write_bytes(self.output / OFFLINE_FILE, json.dumps(self._offline, indent=2, default=str).encode())

    def start(self, run_name: str, params: dict[str, Any], run_tags: dict[str, str]) -> str | None:
        """Open (or reopen, after a restart) the MLflow run; returns its id, or None without a reachable server."""
        if not self.is_main:
            return None
        if not self.uri:
            log.info("no MLflow tracking URI (MLFLOW_TRACKING_URI or train.mlflow.tracking_uri): not tracking")
            return None
        run_record = {"experiment": self.config.experiment, "artifact_location": self.config.artifact_location,
                      "run_name": run_name, "params": flatten_params(params), "tags": run_tags}  # fmt: skip
        configure_client(self.config)
        problem = reachable(self.uri, self.config.timeout)
        if problem:
            self._failed("answer its health check", problem)
            self._down_since = None  # no run to send to: nothing is retried during training
            self._keep("run", run_record)
            return None
        import mlflow

        previous = self.output / RUN_FILE
        try:
            mlflow.set_tracking_uri(self.uri)
            if self.config.artifact_location and mlflow.get_experiment_by_name(self.config.experiment) is None:
                mlflow.create_experiment(self.config.experiment, artifact_location=self.config.artifact_location)
            experiment = mlflow.set_experiment(self.config.experiment)
            run_id = None
            if previous.is_file():
                saved = json.loads(previous.read_text(encoding="utf-8"))
                if saved.get("tracking_uri") in (self.shown_uri, self.uri):  # older outputs kept the URI as given
                    run_id = saved["run_id"]
            run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=run_tags,
                                   log_system_metrics=self.config.system_metrics)  # fmt: skip
        except Exception as exc:
            self._failed("start a run", exc)
            self._down_since = None
            self._keep("run", run_record)
            return None
        self._mlflow = mlflow
        self.run_id = run.info.run_id
        self.experiment_id = experiment.experiment_id
        if self.record_locally:
            atomic_write_bytes(previous, json.dumps({"run_id": self.run_id, "tracking_uri": self.shown_uri}).encode())
        log.info("MLflow run %s (experiment %s at %s)", self.run_id, self.config.experiment, self.shown_uri)
        if run_id is None:
            self.log_params(run_record["params"])
        return self.run_id

    def log_params(self, params: dict[str, str]) -> None:
        """Flat params of the run, without URL passwords (kept for later when MLflow does not take them)."""
        params = {key: hide_passwords(str(value)) for key, value in params.items()}
        if not self._call("log params", lambda: self._mlflow.log_params(params)):
            self._keep("params", params)

    def _call(self, what: str, fn: Any) -> bool:
        if not self.active:
            return False
        try:
            fn()
        except Exception as exc:
            self._failed(what, exc)
            return False
        return True

    def log_dataset(self, info: dict[str, Any], context: str) -> None:
        """The training data as an MLflow dataset input, with its digest and source."""
        if not self.active:
            self._keep("datasets", {"info": info, "context": context})
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource, S3ArtifactDatasetSource

        uri = str(info["uri"])
        source = S3ArtifactDatasetSource(uri) if uri.startswith("s3://") else LocalArtifactDatasetSource(uri)
        dataset = MetaDataset(source=source, name=f"{info['stage']}-{Path(uri).name}", digest=str(info["digest"])[:36])
        logged = self._call("log the dataset", lambda: self._mlflow.log_input(dataset, context=context))
        logged = self._call("log the dataset summary", lambda: self._mlflow.log_dict(info, f"datasets/{context}.json")
                            ) and logged  # fmt: skip
        if not logged:
            self._keep("datasets", {"info": info, "context": context})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One metrics line: to metrics.jsonl always, to MLflow when it answers (buffered while it does not)."""
        if not self.is_main:
            return
        if self.record_locally:
            with open(self.output / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")
        if not self.active:
            return
        self._buffer.append((metrics, step))
        if self._down_since is not None and time.monotonic() - self._down_since < RETRY_SECONDS:
            return
        self.flush()

    def flush(self) -> None:
        """Send buffered metrics; on success the server counts as up again."""
        if not self.active or not self._buffer:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for metrics, step in self._buffer for k, v in metrics.items()]
        client = self._mlflow.MlflowClient()

        def send() -> None:
            for i in range(0, len(batch), 1000):  # the server's limit per log_batch request
                client.log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=True)

        if self._call("log metrics", send):
            if self._down_since is not None:
                log.info("MLflow at %s answers again; %d buffered metric lines sent", self.shown_uri, len(self._buffer))
            self._down_since = None
            self._buffer.clear()

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        """A JSON artifact of the run (kept for later when MLflow does not take it)."""
        if not self._call(f"log {name}", lambda: self._mlflow.log_dict(data, name)):
            self._keep("dicts", {name: data})

    def set_tags(self, run_tags: dict[str, str]) -> None:
        """Tags on the run (kept for later when MLflow does not take them)."""
        if not self._call("set tags", lambda: self._mlflow.set_tags(run_tags)):
            self._keep("tags", {**self._offline.get("tags", {}), **run_tags})

    def log_model(self, final_dir: Path, mode: str, reference: dict[str, Any]) -> str | None:
        """The output model: copied into MLflow (mlflow.transformers), or only a reference to its files.

        Returns the logged model's URI (`models:/…`) when it was copied. The copy loads the model on
        rank 0's CPU, so for models of tens of GB choose `reference`.
        """
        if mode == "none" or not self.is_main or not self.uri:
            return None
        if not self.active:
            self._keep("model", {"mode": mode, "reference": reference})
            return None
        self.set_tags({tags.MODEL_URI: str(reference["uri"])})
        if mode == "reference":
            self.log_dict(reference, "model/reference.json")
            return None
        logged: list[str] = []

        def copy() -> None:
            logged.append(_log_transformers_model(self._mlflow, final_dir))

        if not self._call("log the model", copy):
            self._keep("model", {"mode": mode, "reference": reference})
        return logged[0] if logged else None

    def end(self, status: str = "FINISHED") -> None:
        """Flush and end the run; what could not be sent stays in the output directory for `sync`."""
        if not self.active:
            return
        self.flush()
        if self._buffer:
            self._keep("unsent_metrics", len(self._buffer))
        self._call("end the run", lambda: self._mlflow.end_run(status=status))


def _log_transformers_model(mlflow: Any, final_dir: Path) -> str:
    """Log a Hugging Face directory with mlflow.transformers; its `model/` folder gets the tokenizer too."""
    import mlflow.transformers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # It looks for a model card and licence on the Hub for every model; ours are local.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(final_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(final_dir, local_files_only=True)
    # Pinned here: MLflow's own inference imports every optional transformers extra (torchvision …).
    requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                         task="text-generation", pip_requirements=requirements)  # fmt: skip
    # The flavor keeps the tokenizer under components/; a copy beside the weights makes the logged
    # model's model/ folder a complete Hugging Face directory that KServe can serve.
    with tempfile.TemporaryDirectory() as scratch:
        for path in tokenizer_files(final_dir):
            shutil.copy2(path, scratch)
        mlflow.MlflowClient().log_model_artifacts(info.model_id, scratch, "model")
    return info.model_uri
