"""`python -m deepmoney.train …`: the same as `deepmoney train …` (the container command of training pods)."""

from __future__ import annotations

import sys

from deepmoney.cli import main


def _argv(args: list[str]) -> list[str]:
    """Root options (`--config F`, `--quiet`) may come anywhere; the CLI wants them before the verb."""
    root: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in ("--config", "-c") and i + 1 < len(args):
            root += args[i : i + 2]
            i += 2
            continue
        if args[i].startswith("--config=") or args[i] in ("--quiet", "-q", "--verbose", "-v"):
            root.append(args[i])
        else:
            rest.append(args[i])
        i += 1
    return [*root, "train", *rest]


if __name__ == "__main__":
    main(_argv(sys.argv[1:]))
