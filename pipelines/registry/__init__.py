"""The MLflow model registry: one run and one registered version per training, aliases, and the models CLI."""
