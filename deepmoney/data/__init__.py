"""Ingest, clean, deduplicate, split into chapters, and build the pt corpus."""
