"""Importing KServe without letting it read our command line.

`kserve.model_server` parses `sys.argv` with argparse at import time (its own `--http_port`,
`--model_name`, ...; argparse also accepts their prefixes, so our `--model` would be taken for
`--model_name`). Import it here, with only the program name in `sys.argv`, before anything else
imports it.
"""

from __future__ import annotations

import sys
import warnings


def import_kserve() -> None:
    """Import kserve and its model server with an empty command line; and keep it off the logging set-up."""
    if "kserve.model_server" in sys.modules:
        return
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve.model_server as model_server
    finally:
        sys.argv = saved
    model_server.args.configure_logging = False  # logs go through ours, to stderr; stdout is for results
    # KServe's v1 endpoints answer with FastAPI's ORJSONResponse, which FastAPI now calls deprecated.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
