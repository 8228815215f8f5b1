"""The quantitative toolbox step 3 runs on fetched as-of data (figures computed, not described)."""
