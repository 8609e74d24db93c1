"""Prefect 3 flows: thin orchestration over the stage functions in ``pipelines``."""
