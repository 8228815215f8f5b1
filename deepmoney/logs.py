"""Logging set-up shared by the CLI and the entrypoints that run in pods: everything goes to stderr.

stdout carries a command's result only, so library chatter is kept off it and quieted: HTTP
clients and MLflow at WARNING, progress bars of the Hugging Face libraries off under --quiet.
"""

import json
import logging
import os
import shutil
import sys
import warnings

from deepmoney import env

# Libraries that log every HTTP call, file lock or migration at INFO; our log is about our work.
# kserve.trace: KServe's two timing lines per request (the serving steps log one line each).
NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "datasets", "httpx", "httpx2", "httpcore",
         "openai", "mlflow", "alembic", "git", "torch.distributed", "kserve.trace")  # fmt: skip


# Fields a record may carry (`log.info(..., extra={"request_id": rid})`) that the JSON format keeps.
CONTEXT_FIELDS = ("request_id", "step", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the context fields it carries."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}  # fmt: skip
        out |= {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) is not None}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Send log records to stderr; `DEEPMONEY_LOG_LEVEL` overrides the level chosen by the flags, and
    `DEEPMONEY_LOG_FORMAT=json` writes one JSON object per record (what a cluster's log collector parses)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    level_name = (env.get(env.LOG_LEVEL) or logging.getLevelName(level)).upper()
    handler = logging.StreamHandler(sys.stderr)
    if (env.get(env.LOG_FORMAT) or "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level_name, handlers=[handler], force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level_name)))
    if quiet:
        env.set_default(env.HF_HUB_DISABLE_PROGRESS_BARS, "1")  # transformers' "Loading weights" bars too
        env.set_default(env.MLFLOW_LOGGING_LEVEL, "WARNING")  # MLflow configures its loggers itself, at import
    # DeepSpeed (imported by accelerate whenever it is installed) warns at import that it picked the
    # CPU accelerator; on a machine without NVIDIA devices say so up front and skip the detection.
    if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
        env.set_default(env.DS_ACCELERATOR, "cpu")
    # DeepSpeed's ZeRO still calls the old name of this collective; the warning says nothing to our users.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+.* is deprecated", category=FutureWarning)
