"""Where the project sets its environment: offline switches and project-local state folders.

Runtime state (MLflow store, resumable checkpoints) lives under `.herd/` in the project root, so a
fresh clone works offline with no server and no global state. Prefect's home goes there too, but
only for a user with no Prefect setup of their own: a profile (`~/.prefect/profiles.toml`, or
PREFECT_HOME / PREFECT_PROFILES_PATH / PREFECT_API_URL in the environment) is theirs and is used.
"""

import os
from pathlib import Path

OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Silences git-python's warning when DVC runs outside a git checkout (e.g. test projects).
    "GIT_PYTHON_REFRESH": "quiet",
}


PREFECT_USER_SETTINGS = ("PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE", "PREFECT_API_URL")

VERBOSE_ENV = "HERD_VERBOSE"  # set by `herd run --verbose`: stages print full tracebacks
RESTORE_ONLY_ENV = "HERD_RESTORE_ONLY"  # names a stage being restored from the DVC remote: it must not run


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def state_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / ".herd"


def has_prefect_profile() -> bool:
    """Whether the user set Prefect up themselves (a profile, a home or a server to talk to)."""
    return any(os.environ.get(key) for key in PREFECT_USER_SETTINGS) or \
        (Path.home() / ".prefect" / "profiles.toml").is_file()


def configure_environment(root: Path | None = None) -> None:
    """Set offline switches, and a project-local Prefect home for a user who has no Prefect setup."""
    root = root or project_root()
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    if (root / "params.yaml").is_file() and not has_prefect_profile():
        home = state_dir(root) / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)
