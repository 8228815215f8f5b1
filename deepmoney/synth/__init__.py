"""SFT data synthesis: a questioner asks about each chapter, a different answerer answers from the
chapter alone, and an extractor names the report's underlying assets for the instruction."""
