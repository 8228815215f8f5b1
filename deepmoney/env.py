"""Every environment variable deepmoney reads or sets, named once (a test keeps it that way).

Configuration values come from `DEEPMONEY_<SECTION>__<KEY>` (see `config.py`); the variables
below are the others: where the config file is, logging, the launcher's bookkeeping, secrets, and
the variables of the tools we run under (torchrun, the Kubeflow operators, MLflow, S3, DeepSpeed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# -- deepmoney's own ---------------------------------------------------------------------------
PREFIX = "DEEPMONEY_"
NESTED_DELIMITER = "__"  # DEEPMONEY_DATA__BLOCK_SIZE=512 sets data.block_size
CONFIG = "DEEPMONEY_CONFIG"  # the YAML config file, when --config is not given
LOG_LEVEL = "DEEPMONEY_LOG_LEVEL"  # overrides the level --quiet/--verbose choose
LOG_FORMAT = "DEEPMONEY_LOG_FORMAT"  # "text" (default) or "json": one JSON object per record, for log collectors
LAUNCHED = "DEEPMONEY_LAUNCHED"  # set by the local launcher in the ranks it starts
LAUNCH_ATTEMPT = "DEEPMONEY_LAUNCH_ATTEMPT"  # which start of the ranks this is (0 = the first)
VENV = "DEEPMONEY_VENV"  # the virtual environment scripts/install.sh installs into
PIPELINE_ERRORS = "DEEPMONEY_PIPELINE_ERRORS"  # file the tasks of a local pipeline run append their errors to
OPENAI_API_KEY = "OPENAI_API_KEY"  # the fallback API key of every role


def role_api_key(role: str) -> str:
    """The variable holding a role's API key, e.g. DEEPMONEY_QUESTIONER_API_KEY."""
    return f"{PREFIX}{role.upper()}_API_KEY"


def role_api_key_file(role: str) -> str:
    """The variable naming a file (a mounted secret) that holds a role's API key."""
    return role_api_key(role) + "_FILE"


ROLES_WITH_KEYS = ("questioner", "answerer", "extractor", "summarizer", "llm")  # llm: `deepmoney serve --llm`
# DEEPMONEY_* variables that are not configuration values (anything else with the prefix must be one).
NOT_CONFIG = frozenset(
    {CONFIG, LOG_LEVEL, LOG_FORMAT, LAUNCHED, LAUNCH_ATTEMPT, VENV, PIPELINE_ERRORS}
    | {role_api_key(r) for r in ROLES_WITH_KEYS}
    | {role_api_key_file(r) for r in ROLES_WITH_KEYS}
)

# -- torchrun (and a PyTorchJob whose command is torchrun) -------------------------------------
RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
TORCHELASTIC_RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"

# -- Kubeflow Trainer v2 / Training Operator elastic: the arguments of a torchrun to start ------
PET_NNODES = "PET_NNODES"
PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
PET_NODE_RANK = "PET_NODE_RANK"
PET_MASTER_ADDR = "PET_MASTER_ADDR"
PET_MASTER_PORT = "PET_MASTER_PORT"

# -- services and libraries --------------------------------------------------------------------
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
MLFLOW_HTTP_REQUEST_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
MLFLOW_HTTP_REQUEST_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
MLFLOW_LOGGING_LEVEL = "MLFLOW_LOGGING_LEVEL"  # MLflow sets its own loggers' level from this at import
MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # stdout is for our results
AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
MLFLOW_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
MLFLOW_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
MLFLOW_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
KUBERNETES_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"  # set in every pod: inside a cluster, use its service account
NCCL_DEBUG = "NCCL_DEBUG"  # NCCL's log level (WARN in training pods: errors and warnings only)
DS_ACCELERATOR = "DS_ACCELERATOR"  # DeepSpeed's accelerator choice ("cpu" without GPUs)
OMP_NUM_THREADS = "OMP_NUM_THREADS"
TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"
HF_HUB_DISABLE_PROGRESS_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"  # also turns off transformers' bars
PYTHONUNBUFFERED = "PYTHONUNBUFFERED"
XDG_CACHE_HOME = "XDG_CACHE_HOME"  # the embedded market-data database is built under it (~/.cache)
TORCH_EXTENSIONS_DIR = "TORCH_EXTENSIONS_DIR"  # where torch builds C++ ops (DeepSpeed's CPU shm op), else ~/.cache


def nested_names(*path: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The names under `DEEPMONEY_<PATH>__` in the environment, by their lower-case form.

    pydantic-settings lower-cases the keys of a dict it reads from variables such as
    `DEEPMONEY_LAUNCH__ENV__NCCL_DEBUG`; this gives them back as they were written.
    """
    marker = PREFIX + NESTED_DELIMITER.join(part.upper() for part in path) + NESTED_DELIMITER
    names = (os.environ if environ is None else environ).keys()
    return {name[len(marker) :].lower(): name[len(marker) :] for name in names if name.upper().startswith(marker)}


def get(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of `name` (None when unset or empty)."""
    value = (os.environ if environ is None else environ).get(name)
    return value or None


def set_default(name: str, value: str) -> None:
    """Set `name` in this process's environment unless the user already set it."""
    os.environ.setdefault(name, value)


def config_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The DEEPMONEY_* variables that are meant as configuration values (everything but NOT_CONFIG)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(PREFIX) and k not in NOT_CONFIG}
