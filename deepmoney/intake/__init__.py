"""News intake before the chain: near-duplicates collapsed over a window of recent items (and, next,
the subjective/objective classifier of the news-intake issue)."""
