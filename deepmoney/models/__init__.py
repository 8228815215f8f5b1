"""Models: presets and tiny-model init, one resolver for every way a model is named, loading, one generator.

- `presets`: the shapes of locally made models; `init`: a tokenizer and a random-init model.
- `resolve`: a directory, a train output (or its `final/`), `s3://`, `runs:/`, `models:/…` ->
  a local Hugging Face directory and its lineage (training run, registered version).
- `load`: tokenizer and weights ready to run; `shape`: sizes read from config.json.
- `generate`: batched chat generation, the one generator of the synthesis roles, evaluation and
  serving.
"""
