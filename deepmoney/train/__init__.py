"""Training: pt and sft on the packed corpora, the entrypoint of every launcher (`python -m deepmoney.train`)."""
