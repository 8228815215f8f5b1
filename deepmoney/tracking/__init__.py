"""MLflow for every stage: the server, the tag names, training and evaluation runs, and offline sync."""
