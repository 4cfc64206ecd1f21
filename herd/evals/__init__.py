"""Evaluations: held-out measures of a model and the report that gathers them."""
