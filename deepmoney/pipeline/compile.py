"""`deepmoney pipeline compile`: the pipeline as the YAML users submit with `kfp run create -f FILE`."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import yaml

from deepmoney.errors import UserError

log = logging.getLogger(__name__)

COMMITTED = "pipelines/deepmoney_pipeline.yaml"  # the compiled pipeline in the repository (a golden test)


def _is_pipeline(path: Path) -> bool:
    try:  # the pipeline spec, then (with kfp.kubernetes settings) its platform spec
        spec = next(yaml.safe_load_all(path.read_text(encoding="utf-8")), None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(spec, dict) and "pipelineInfo" in spec and "deploymentSpec" in spec


def compile_pipeline(output: str | Path) -> Path:
    """Compile the deepmoney pipeline to `output` (replacing an earlier compiled pipeline, nothing else)."""
    try:
        from kfp import compiler

        from deepmoney.pipeline.definition import deepmoney_pipeline
    except ImportError as exc:
        raise UserError(f"compiling the pipeline needs the Kubeflow Pipelines SDK ({exc.name} is missing): "
                        "scripts/install.sh pipelines (or pip install 'deepmoney[pipelines]')") from None  # fmt: skip
    path = Path(output)
    if path.is_dir():
        raise UserError(f"--output {path} is a directory; give the YAML file to write, e.g. {path}/deepmoney.yaml")
    if path.exists() and not _is_pipeline(path):
        raise UserError(f"--output {path} exists and is not a compiled pipeline; choose another file (nothing written)")
    if not path.parent.is_dir():
        raise UserError(f"--output {path}: no directory {path.parent}")
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".yaml", dir=path.parent)
    os.close(handle)
    try:
        compiler.Compiler().compile(deepmoney_pipeline, staging)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    log.info("pipeline written to %s; submit it with: kfp run create -f %s ...", path, path)
    return path
