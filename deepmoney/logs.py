"""Logging set-up shared by the CLI and the entrypoints that run in pods."""

import logging
import os
import sys


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
