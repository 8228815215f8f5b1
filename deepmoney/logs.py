"""Logging set-up shared by the CLI and the entrypoints that run in pods: everything goes to stderr.

stdout carries a command's result only, so library chatter is kept off it and quieted: HTTP
clients and MLflow at WARNING, progress bars of the Hugging Face libraries off under --quiet.
"""

import logging
import os
import shutil
import sys
import warnings

from deepmoney import env

# Libraries that log every HTTP call, file lock or migration at INFO; our log is about our work.
NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "datasets", "httpx", "httpx2", "httpcore",
         "openai", "mlflow", "alembic", "git", "torch.distributed")  # fmt: skip


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Send log records to stderr; `DEEPMONEY_LOG_LEVEL` overrides the level chosen by the flags."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    level_name = (env.get(env.LOG_LEVEL) or logging.getLevelName(level)).upper()
    logging.basicConfig(
        level=level_name,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
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
