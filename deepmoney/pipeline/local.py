"""`deepmoney pipeline run --local`: the same pipeline on this machine, with `kfp.local`'s SubprocessRunner.

Every task runs as a subprocess of this interpreter (no per-task virtual environment: the installed
package is used), in the pipeline's own order; `kfp.kubernetes` settings are ignored locally, so the
Secrets' variables come from this environment. kfp.local logs to stdout; here it goes to stderr, so
stdout carries the run's result only. When a task fails on a user mistake (a missing corpus, an
unreachable endpoint, a bad model URI), the run ends with that task's own one-line message
(`stages.run_stage` appends it to the file named by DEEPMONEY_PIPELINE_ERRORS).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from deepmoney import env
from deepmoney.errors import UserError
from deepmoney.storage import is_s3

log = logging.getLogger(__name__)

LOCAL_DEFAULTS: dict[str, Any] = {"backend": "local", "nodes": 1, "gpus_per_node": 2}
REQUIRED = ("corpus", "base_model", "workdir")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own lines that say nothing a user reads: each task's executor input (a JSON dump of the parameters
# the run's result already lists), the executor's module loading, separators and blank lines.
_NOISE = re.compile(
    r"^(\[KFP Executor .*\]: (Looking for|Loading KFP) component|.*INFO root: Wrote executor output|"
    r".*Streamed logs:|-{20,})|^$"
)


class KfpLogFilter(io.TextIOBase):
    """A text stream that passes kfp.local's log on to `target` without its noise (`_NOISE`, executor inputs)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._pending = ""
        self._skip_until: str | None = None  # the closing line of an executor-input dump being skipped

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        bare = _ANSI.sub("", line).strip()
        if self._skip_until == "{":  # the line after "Got executor_input:" opens the dump
            self._skip_until = None
            if bare == "{":
                self._skip_until = line.rstrip().replace("{", "}")  # closed by "}" at the same indentation
                return
        elif self._skip_until is not None:
            if line.rstrip() == self._skip_until:
                self._skip_until = None
            return
        if bare.endswith("Got executor_input:"):
            self._skip_until = "{"
        elif not _NOISE.match(bare):
            self.target.write(line + "\n")

    def flush(self) -> None:
        self.target.flush()


def pipeline_parameters() -> dict[str, Any]:
    """The pipeline's parameters and their defaults (required ones map to None)."""
    from deepmoney.pipeline.definition import deepmoney_pipeline

    spec = deepmoney_pipeline.component_spec.inputs or {}
    return {name: (None if entry.default is None and not entry.optional else entry.default)
            for name, entry in spec.items()}  # fmt: skip


def read_parameters(path: Path | None, pairs: list[str]) -> dict[str, Any]:
    """Parameters from a YAML/JSON file and `name=value` pairs (values read as YAML: lists, numbers, booleans)."""
    params: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"--params {path}: no such file") from None
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--params {path}: not a readable YAML mapping ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"--params {path}: expected a mapping of parameter names to values")
        params.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--param {pair!r}: expected NAME=VALUE, e.g. --param pt_shards=2")
        params[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    return params


def check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The local run's arguments: the local defaults under `params`; unknown or missing names refused."""
    known = pipeline_parameters()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise UserError(f"unknown pipeline parameter {unknown[0]!r}; the pipeline takes {', '.join(sorted(known))}")
    merged = {**LOCAL_DEFAULTS, **params}
    missing = [name for name in REQUIRED if merged.get(name) in (None, "", [])]
    if missing:
        raise UserError(f"missing pipeline parameter {', '.join(missing)}: give --param {missing[0]}=... "
                        "(or put it in --params FILE)")  # fmt: skip
    if isinstance(merged["corpus"], str):
        merged["corpus"] = [merged["corpus"]]
    return merged


def run_local(params: dict[str, Any], config_file: str | None = None) -> dict[str, Any]:
    """Run the deepmoney pipeline here; what it wrote where. A failed task raises its own one-line error."""
    from kfp import local

    from deepmoney.pipeline import stages
    from deepmoney.pipeline.definition import deepmoney_pipeline

    if config_file:
        from deepmoney.config import load_config

        load_config(Path(config_file))  # a missing or invalid file fails here, once, rather than in every task
    arguments = check_parameters(params)
    workdir = str(arguments["workdir"])
    root = Path(tempfile.mkdtemp(prefix="deepmoney-kfp-")) if is_s3(workdir) else Path(workdir) / ".kfp"
    root.mkdir(parents=True, exist_ok=True)
    errors = root / "errors.log"
    errors.unlink(missing_ok=True)
    saved = {name: os.environ.get(name) for name in (env.PIPELINE_ERRORS, env.CONFIG)}
    os.environ[env.PIPELINE_ERRORS] = str(errors)
    if config_file:
        os.environ[env.CONFIG] = str(Path(config_file).resolve())  # the tasks read the same deepmoney config
    try:
        with contextlib.redirect_stdout(KfpLogFilter(sys.stderr)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
            deepmoney_pipeline(**arguments)
    except RuntimeError as exc:
        first = errors.read_text(encoding="utf-8").splitlines()[0] if errors.is_file() else ""
        raise UserError(f"the pipeline failed at {first}" if first else
                        f"the pipeline failed: {_ANSI.sub('', str(exc))} (its log is above)") from None  # fmt: skip
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    train_dir = str(arguments.get("train_dir") or workdir)
    outputs = {"pt_corpus": stages.output_uri(workdir, stages.PT_CORPUS),
               "sft_dataset": stages.output_uri(workdir, stages.SFT_DATASET),
               "pt_model": stages.output_uri(train_dir, stages.TRAIN_OUTPUT.format(stage="pt")),
               "sft_model": stages.output_uri(train_dir, stages.TRAIN_OUTPUT.format(stage="sft")),
               "evaluation": stages.output_uri(workdir, stages.EVALUATION),
               "intake_classifier": stages.output_uri(workdir, stages.INTAKE)}  # fmt: skip
    return {"workdir": workdir, "pipeline_root": str(root), "parameters": arguments, "outputs": outputs}
