"""Where the project sets its environment: offline switches and project-local state folders.

Everything runtime (MLflow store, Prefect home, resumable checkpoints) lives under `.herd/` in the
project root, so a fresh clone works offline with no server and no global state.
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


VERBOSE_ENV = "HERD_VERBOSE"  # set by `herd run --verbose`: stages print full tracebacks


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def state_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / ".herd"


def configure_environment(root: Path | None = None) -> None:
    """Set offline switches and project-local homes, without overriding what the user set."""
    root = root or project_root()
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    if (root / "params.yaml").is_file():  # inside a Herd project: keep all state in it
        state = state_dir(root)
        (state / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
