"""Orchestration: dvc.yaml from the recipe, what DVC says about it, the Prefect flow over it."""
