"""Herd: the modern LLM training recipe as one declarative, incremental pipeline."""

from herd.env import configure_environment

configure_environment()
