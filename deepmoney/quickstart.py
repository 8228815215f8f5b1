"""The main job on the embedded default: what the README's first command runs.

For now: a tiny model whose tokenizer is trained on the bundled sample corpus, then the pt corpus
built from that corpus. Later stages (synthesis, training, registry, serving) extend this run.
"""

from __future__ import annotations

import json
from pathlib import Path

from deepmoney.config import load_config, overrides_from_flags
from deepmoney.data.pt import build_pt
from deepmoney.errors import UserError
from deepmoney.model_init import init_model

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"


def run_quickstart(workdir: Path, corpus: Path | None, block_size: int, config_path: Path | None, quiet: bool) -> str:
    """Run the embedded pipeline in `workdir` and return a printable summary."""
    corpus = corpus or SAMPLE_CORPUS
    if not corpus.is_dir():
        raise UserError(f"corpus directory not found: {corpus} (pass --corpus, or run from a source checkout)")
    config = load_config(config_path, overrides_from_flags(**{"data.block_size": block_size}))
    model_dir = workdir / "base-model"
    pt_dir = workdir / "pt"
    model = init_model([str(corpus)], str(model_dir), config, quiet=quiet)
    pt = build_pt([str(corpus)], str(model_dir), str(pt_dir), config, quiet=quiet)
    m = pt.manifest
    sample = _first_block_text(pt_dir, model_dir)
    lines = [
        "deepmoney quickstart (embedded default)",
        f"  base model    {model_dir} ({model.manifest['parameters'] / 1e6:.1f}M parameters, "
        f"vocabulary {model.manifest['vocab_size']}{', reused' if model.reused else ''})",
        f"  pt corpus     {pt_dir}{' (reused)' if pt.reused else ''}",
        f"  documents     {m['documents']} kept of {m['documents_read']} read; "
        f"{m['dedup_removed']} duplicates removed; {m['rejected']} inputs rejected",
        f"  chapters      {m['chapters']}",
        f"  tokens        {m['tokens']} in {m['blocks']} blocks of {m['block_size']}; "
        f"{m['tokens_dropped']} dropped (final partial block only)",
        "  first block   " + json.dumps(sample[:160], ensure_ascii=False),
    ]
    return "\n".join(lines)


def _first_block_text(pt_dir: Path, model_dir: Path) -> str:
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    shard = sorted((pt_dir / "data").glob("*.parquet"))[0]
    ids = pq.read_table(shard, columns=["input_ids"]).column("input_ids")[0].as_py()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return tokenizer.decode(ids, skip_special_tokens=True)
