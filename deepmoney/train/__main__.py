"""`python -m deepmoney.train …`: the container command of training pods, with the flags of `deepmoney train`.

The process is one rank of a job: under torchrun (RANK, WORLD_SIZE, … set), alone, or — given
only Kubeflow Trainer's `PET_*` variables — the torchrun those variables describe. Root options
(`--config FILE`, `--quiet`, `--verbose`) may come anywhere.
"""

from __future__ import annotations

import sys

from deepmoney.shell import make_app, run_app, split_root_options
from deepmoney.train.command import RUNNER, run_rank, train

app = make_app("python -m deepmoney.train", "Train one rank of a deepmoney job.", {RUNNER: run_rank})
app.command("train")(train)


def _argv(args: list[str]) -> list[str]:
    """The app's one verb, `train`, after the root options (`python -m deepmoney.train train …` is the same)."""
    root, rest = split_root_options(args)
    return [*root, "train", *(rest[1:] if rest[:1] == ["train"] else rest)]


if __name__ == "__main__":
    run_app(app, _argv(sys.argv[1:]), "python -m deepmoney.train")
