"""Loading params.yaml: each section is validated against the schema its component declares.

A schema is a dataclass that lives with the code that reads its section (`FilterConfig` in
herd/data/filter.py, `DPOConfig` in herd/post/dpo.py, `RuntimeConfig` in herd/runtime/config.py), so
editing one reruns only the stages that read that section. A schema may define
`check(self, root)` for what types cannot say; it raises `ParamError` with the key inside its
section. An unknown key, a wrong type or a failed check stops before any work, naming the key.
"""

import math
from dataclasses import field, is_dataclass, make_dataclass
from pathlib import Path

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from herd.errors import HerdError

# The scalar sections' defaults (a dataclass section's defaults are its fields').
SCALAR_DEFAULTS = {"seed": 1234}


class ParamError(HerdError):
    """A value its schema's `check` refuses; `key` is relative to the section."""

    def __init__(self, key: str, why: str):
        super().__init__(f"{key}: {why}")
        self.key, self.why = key, why


def read_params(path: Path) -> dict:
    """params.yaml as plain data, or a HerdError naming what is wrong with the file."""
    if not path.is_file():
        raise HerdError(f"params file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HerdError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise HerdError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_sections(path: Path, schemas: dict[str, type], overrides: list[str] = (),
                  strict: bool = False) -> DictConfig:
    """The sections named in `schemas`, validated, as a read-only config. A section's schema is a
    dataclass, or a plain type for a scalar section such as `seed`. With `strict`, a section of
    params.yaml that no schema names is an error (the whole-file check); otherwise it is ignored
    (a stage reads only its own sections)."""
    raw = read_params(path)
    if not strict:
        raw = {k: v for k, v in raw.items() if k in schemas}
    fields = [(name, schema, field(default_factory=schema) if is_dataclass(schema)
               else field(default=SCALAR_DEFAULTS.get(name, MISSING))) for name, schema in schemas.items()]
    Params = make_dataclass("Params", fields)  # noqa: N806
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Params), OmegaConf.create(raw))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        sections = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise HerdError(f"params.yaml: {key}: {str(exc).splitlines()[0]}") from None
    for name in schemas:
        value = getattr(sections, name)
        if hasattr(value, "check"):
            try:
                value.check(path.parent)
            except ParamError as exc:
                raise HerdError(f"params.yaml: {name}.{exc.key}: {exc.why}") from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def check_part(part, root, within: str) -> None:
    """Run a nested schema's check, naming a refused key from its section (`within` + the key)."""
    try:
        part.check(root)
    except ParamError as err:
        raise ParamError(f"{within}{err.key}", err.why) from None


def positive(section, *keys: str, within: str = "") -> None:
    """Each key a finite number above zero (counts, lengths, learning rates). `within` prefixes
    the key of a nested section in messages (e.g. "distill.")."""
    for key in keys:
        value = getattr(section, key)
        if not (math.isfinite(value) and value > 0):
            raise ParamError(within + key, f"must be a positive number, got {value}")


def non_negative(section, *keys: str, within: str = "") -> None:
    for key in keys:
        value = getattr(section, key)
        if not (math.isfinite(value) and value >= 0):
            raise ParamError(within + key, f"must be zero or more, got {value}")


def fraction(section, *keys: str, within: str = "") -> None:
    """Each key a share, between 0 and 1."""
    for key in keys:
        value = getattr(section, key)
        if not 0 <= value <= 1:
            raise ParamError(within + key, f"must be between 0 and 1, got {value}")
