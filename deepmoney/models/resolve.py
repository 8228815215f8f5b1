"""One resolver for every way a user names a model: a local Hugging Face directory plus where it came from.

Accepted everywhere a model is asked for (`--model`, a role's `local:DIR`, a base model):

- a model directory (config.json);
- a `deepmoney train` output directory, or its `final/` directory — both are linked to the
  training run through the output's manifest (`mlflow_run_id`), so an evaluation of either is an
  evaluation of that run;
- an `s3://` prefix holding a model directory (or a train output's `final/`);
- `runs:/RUN_ID/PATH`, `models:/NAME/VERSION`, `models:/NAME@ALIAS` (the registry) and
  `models:/m-…` (an MLflow logged model).

Remote models are downloaded once into `cache` (`storage.download_once`). `check_model` is the
same resolution without the download, for checks made before any work starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmoney.config import DeepmoneyConfig
from deepmoney.errors import UserError
from deepmoney.stage import MANIFEST, RUN_MARKER, TrainManifest, digest, manifest_kind, read_manifest
from deepmoney.storage import Storage, download_once, is_s3, join

log = logging.getLogger(__name__)

FORMS = "a model directory, a train output (or its final/), s3://, runs:/ or models:/ URI"


@dataclass
class ResolvedModel:
    """A model ready to load, and its lineage."""

    path: Path
    uri: str  # what the user passed
    training_run_id: str | None = None
    registered: tuple[str, str] | None = None  # (name, version)
    train_output: Path | None = None  # the local train output it is the final/ of


def hf_directory(root: Path) -> Path:
    """The Hugging Face directory in `root`: itself, an MLflow model's `model/` or a train output's `final/`."""
    for candidate in (root, root / "model", root / "final"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"no Hugging Face model in {root} (no config.json there, nor in model/ or final/)")


def _train_output(path: Path, what: str) -> ResolvedModel | None:
    """`path` as a train output, or as the final/ of one (the path `train` prints): its model and its run."""
    storage = Storage()
    for output in [path] + ([path.parent] if path.name == "final" else []):
        kind = manifest_kind(storage, output)
        if kind == "model":
            manifest = read_manifest(storage, output, TrainManifest)
            return ResolvedModel(output / "final", what, manifest.mlflow_run_id, train_output=output)
        if kind is None and (output / RUN_MARKER).is_file():
            raise UserError(f"{what}: the training in {output} has not finished (no {MANIFEST}); resume it with the "
                            "same `deepmoney train` command, or pass a finished model")  # fmt: skip
    return None


def resolve_model(uri: str, config: DeepmoneyConfig, cache: Path, what: str = "--model") -> ResolvedModel:
    """Turn a model reference into a local directory (downloading if needed) and find its lineage."""
    uri = str(uri)
    if uri.startswith(("runs:/", "models:/")):
        return _from_mlflow(uri, config, cache, what)
    if is_s3(uri):
        local = download_once(cache / f"model-{digest(uri)}", lambda d: Storage(config.storage).download_tree(uri, d))
        return ResolvedModel(hf_directory(local), uri)
    return local_model(Path(uri), what)


def local_model(path: Path, what: str = "--model") -> ResolvedModel:
    """A model on this machine: a model directory, a train output or its final/ (nothing to download)."""
    if not path.is_dir():
        raise UserError(f"{what} {path}: no such directory; pass {FORMS}")
    linked = _train_output(path, f"{what} {path}")
    if linked is not None:
        linked.uri = str(path)
        return linked
    return ResolvedModel(hf_directory(path), str(path))


def check_model(uri: str, config: DeepmoneyConfig, what: str = "--model") -> None:
    """Fail now, with one line, when `uri` names no reachable model (nothing is downloaded)."""
    uri = str(uri)
    if uri.startswith(("runs:/", "models:/")):
        _mlflow_source(uri, config, what)
        return
    if is_s3(uri):
        storage = Storage(config.storage)
        if not any(storage.exists(join(uri, *p)) for p in (["config.json"], ["final", "config.json"],
                                                            ["model", "config.json"])):  # fmt: skip
            raise UserError(f"{what} {uri}: no Hugging Face model there (no config.json); pass {FORMS}")
        return
    resolve_model(uri, config, Path("/nonexistent-cache"), what)  # local: resolving is checking


def _mlflow_source(uri: str, config: DeepmoneyConfig, what: str) -> tuple[str, str | None, tuple[str, str] | None]:
    """(artifact source, training run id, registered (name, version)) of a `runs:/` or `models:/` URI."""
    from mlflow.exceptions import MlflowException

    from deepmoney.tracking.server import connect, mlflow_error

    client = connect(config.train.mlflow, f"load {uri}")
    try:
        if uri.startswith("runs:/"):
            return uri, uri.removeprefix("runs:/").split("/", 1)[0], None
        if uri.startswith("models:/m-"):
            return uri, client.get_logged_model(uri.removeprefix("models:/").split("/", 1)[0]).source_run_id, None
        name, version = _registry_version(client, uri, what)
        return version.source, version.run_id, (name, version.version)
    except MlflowException as exc:
        raise UserError(f"{what} {uri}: {mlflow_error(exc)}") from None


def _from_mlflow(uri: str, config: DeepmoneyConfig, cache: Path, what: str) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    from deepmoney.tracking.server import mlflow_error

    source, run_id, registered = _mlflow_source(uri, config, what)
    remote = source.startswith(("runs:/", "models:/", "mlflow-artifacts:", "s3://"))
    if registered and not remote and Path(source).is_dir():  # weights on this machine (log_model=reference)
        return ResolvedModel(hf_directory(Path(source)), uri, run_id, registered)
    if registered and is_s3(source):
        resolved = resolve_model(source, config, cache, what)
        return ResolvedModel(resolved.path, uri, run_id, registered)

    def download(target: Path) -> None:
        log.info("downloading %s from MLflow", uri)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target))
        except MlflowException as exc:
            raise UserError(f"{what} {uri}: cannot download {source}: {mlflow_error(exc)}") from None

    from deepmoney.tracking.server import tracking_uri

    # Keyed by what the reference points at now, on which server: an alias that moved, or the same name and
    # version in another registry, is another model.
    target = download_once(cache / f"mlflow-{digest([tracking_uri(config.train.mlflow), source, run_id])}", download)
    for root in [*(p for p in sorted(target.iterdir()) if p.is_dir()), target]:
        try:
            return ResolvedModel(hf_directory(root), uri, run_id, registered)
        except UserError:
            continue
    raise UserError(f"{what} {uri}: the artifacts at {source} hold no Hugging Face model")


def _registry_version(client: Any, uri: str, what: str) -> tuple[str, Any]:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` -> (name, ModelVersion)."""
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, client.get_model_version_by_alias(name, alias)
    name, _, version = rest.partition("/")
    if not version.isdigit():
        raise UserError(f"{what} {uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, client.get_model_version(name, version)
