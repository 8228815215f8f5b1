"""Logging set-up shared by the CLI and the entrypoints that run in pods."""

import logging
import os
import shutil
import sys
import warnings


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Send log records to stderr; `DEEPMONEY_LOG_LEVEL` overrides the level chosen by the flags."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    level = os.environ.get("DEEPMONEY_LOG_LEVEL", logging.getLevelName(level)).upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # These libraries log every HTTP call or file lock at INFO; keep the CLI's log about our work.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # DeepSpeed (imported by accelerate whenever it is installed) warns at import that it picked the
    # CPU accelerator; on a machine without NVIDIA devices say so up front and skip the detection.
    if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed's ZeRO still calls the old name of this collective; the warning says nothing to our users.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+.* is deprecated", category=FutureWarning)
