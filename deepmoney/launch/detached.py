"""`python -m deepmoney.launch.detached [--quiet]`: the process `deepmoney launch --backend local --no-wait` leaves.

It reads the run's resolved config (YAML) from stdin, trains it with the local launcher — holding the
output's lock, so that later launches attach — and records how it ended in the output's
launcher-exit.json (exit code and one-line error), since no terminal is there to see it. Its stdout and
stderr are the output's launcher.log. SIGTERM (`--cancel`) stops torchrun and its ranks first.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from deepmoney.config import load_config
from deepmoney.errors import EXIT_FAILED, EXIT_USER, UserError
from deepmoney.launch.local import launch_local
from deepmoney.launch.local_backend import write_exit
from deepmoney.logs import setup_logging
from deepmoney.shell import Interrupted, handle_signals

log = logging.getLogger("deepmoney.launch.detached")


def main(argv: list[str]) -> int:
    """Train the config on stdin; the exit code (also recorded in launcher-exit.json)."""
    handle_signals()
    setup_logging(quiet="--quiet" in argv)
    config = load_config(overrides=yaml.safe_load(sys.stdin.read()))
    output = Path(str(config.train.output))
    try:
        manifest = launch_local(config, quiet="--quiet" in argv, echo=False)
    except UserError as exc:
        code, error = getattr(exc, "exit_code", EXIT_USER), str(exc)
    except Interrupted as exc:
        code, error = exc.code, f"stopped by {exc} (deepmoney launch --cancel, or the machine); launch again to resume"
    except Exception as exc:  # a bug: keep the traceback in launcher.log, the cause in the record
        log.exception("the detached run of %s crashed", output)
        code, error = EXIT_FAILED, f"{type(exc).__name__}: {exc}"
    else:
        write_exit(output, 0, None)
        log.info("trained %s: %s", output, manifest.get("final"))
        return 0
    log.error("%s", error)
    write_exit(output, code, error)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
