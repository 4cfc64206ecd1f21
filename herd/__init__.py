"""Herd: the modern LLM training recipe as one declarative, incremental pipeline."""

__version__ = "0.1.0"

from herd.runtime.env import configure_environment

configure_environment()
