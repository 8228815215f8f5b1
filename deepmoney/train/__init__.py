"""Training: pt and sft on the packed corpora (the entrypoint arrives with the training issue)."""
