"""deepmoney: financial research reports and textbooks -> domain LLM -> news-analysis service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepmoney")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
