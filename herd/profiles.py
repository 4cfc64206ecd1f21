"""Profiles: named sets of params overrides, `profiles/<name>.yaml`, shaped like params.yaml.
`herd run --profile NAME` writes a profile into params.yaml (its comments kept) and runs: the
profile's values are then the params of record, which DVC tracks, git diffs and `dvc exp` compares,
as with `dvc exp run -S`. `git checkout params.yaml` goes back."""

from pathlib import Path

from ruamel.yaml import YAML

from herd.errors import HerdError


def apply_profile(root: Path, name: str, check) -> list[str]:
    """Merge profiles/<name>.yaml into params.yaml; returns the changes, `key: old -> new`.
    `check(root)` validates the result; if it fails, params.yaml is left as it was."""
    path = root / "profiles" / f"{name}.yaml"
    if not path.is_file():
        found = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise HerdError(f"no profile '{name}' (profiles/{name}.yaml); the profiles are: {', '.join(found) or 'none'}")
    yaml = YAML()
    yaml.preserve_quotes = True
    params_path = root / "params.yaml"
    original = params_path.read_text()
    params = yaml.load(original)
    overrides = yaml.load(path.read_text()) or {}
    changes = merge(params, overrides, "")
    with open(params_path, "w") as fh:
        yaml.dump(params, fh)
    try:
        check(root)
    except HerdError as exc:
        params_path.write_text(original)
        raise HerdError(f"profile {name}: {exc}") from None
    return changes


def merge(into, over, prefix: str) -> list[str]:
    """Overwrite `into` with `over` in place: mappings merge key by key, anything else is replaced."""
    changes = []
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            changes += merge(into[key], value, dotted + ".")
        elif into.get(key) != value:
            changes.append(f"{dotted}: {into.get(key)} -> {value}")
            into[key] = value
    return changes
