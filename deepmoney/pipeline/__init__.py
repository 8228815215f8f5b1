"""The deepmoney pipeline on Kubeflow Pipelines: stages (plain functions), components, the pipeline, compile."""
