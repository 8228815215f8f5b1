"""A two-stage slice of the deepmoney pipeline (build-pt shards under ParallelFor, then merge-pt), for kfp.local.

No `from __future__ import annotations` here: KFP reads the pipeline's parameter types from live annotations.
"""

from typing import List  # noqa: UP035

from kfp import dsl

from deepmoney.pipeline import components as c

SETTINGS = {"data": {"block_size": 64, "shard_rows": 40}}


@dsl.pipeline(name="corpus-fan-out")
def corpus_only(corpus: List[str], base_model: str, workdir: str, shards: int) -> None:  # noqa: UP006
    """The real corpus components, fanned out and merged as in the deepmoney pipeline."""
    plan = c.plan_shards(count=shards)
    with dsl.ParallelFor(plan.output) as shard:
        part = c.build_pt_shard(corpus=corpus, base_model=base_model, workdir=workdir, shard=shard, config=SETTINGS)
    c.merge_pt(shards=dsl.Collected(part.outputs["pt_shard"]), workdir=workdir, config=SETTINGS)
