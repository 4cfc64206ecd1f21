"""MLflow tracking: a local SQLite store inside the project by default, a server when configured.

One run per stage execution, nested under the pipeline's run when the flow drives it (the flow
passes its run id in HERD_PARENT_RUN_ID), under a run named for the experiment when `dvc exp run`
does, and under one `dvc repro` run per code version when `dvc repro` does. Step metrics are
buffered and sent with `log_batch`, which is ~50x faster than one call per value.
"""

import os
import socket
import time
from pathlib import Path

from herd.runtime.env import state_dir

PARENT_RUN_ENV = "HERD_PARENT_RUN_ID"


def tracking_uri(cfg_uri: str, root: Path) -> str:
    if cfg_uri:
        return cfg_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir(root) / 'mlflow.db'}"


def setup(tracking_cfg, root: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = tracking_uri(tracking_cfg.uri, root)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(tracking_cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    # With a database store MLflow would put artifacts under ./mlruns of whatever cwd; keep them in .herd.
    location = (state_dir(root) / "mlartifacts").as_uri() if uri.startswith("sqlite") else None
    return mlflow.create_experiment(tracking_cfg.experiment, artifact_location=location)


def launcher_parent(experiment_id: str, code_version: str) -> tuple[str | None, dict[str, str]]:
    """(parent run id, tags) for a stage run: the flow's run, or for a stage DVC started itself
    (DVC sets DVC_STAGE, and DVC_EXP_NAME in an experiment) a group run found or made by name."""
    from mlflow.tracking import MlflowClient

    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV], {"herd.launcher": "herd run"}
    if not os.environ.get("DVC_STAGE"):
        return None, {"herd.launcher": "python -m"}
    exp = os.environ.get("DVC_EXP_NAME")
    group = f"dvc exp run {exp}" if exp else f"dvc repro @ {code_version}"
    tags = {"herd.launcher": "dvc exp run" if exp else "dvc repro", **({"herd.dvc_exp": exp} if exp else {})}
    client = MlflowClient()
    found = client.search_runs([experiment_id], f"tags.`herd.group` = '{group}'", max_results=1)
    if found:
        return found[0].info.run_id, tags
    run = client.create_run(experiment_id, run_name=group, tags={"herd.group": group, "herd.stage": "pipeline", **tags})
    client.set_terminated(run.info.run_id)  # a label for its children; it does no work itself
    return run.info.run_id, tags


def workspace_tag(root: Path) -> str:
    """Where a run ran: the machine and the checkout (workers and experiments each have their own)."""
    return f"{socket.gethostname()}:{Path(root).resolve()}"


def close_abandoned_runs(experiment_id: str, stage: str, root: Path) -> None:
    """Runs of `stage` from this workspace still RUNNING belong to a process killed without a
    chance to close them (SIGKILL, power loss): mark them FAILED before a new one starts. Runs of
    other workspaces (workers, experiments running at the same time) are theirs to close."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    query = (f"tags.`herd.stage` = '{stage}' and tags.`herd.workspace` = '{workspace_tag(root)}' "
             "and attributes.status = 'RUNNING'")
    for run in client.search_runs([experiment_id], query):
        client.set_tag(run.info.run_id, "herd.error", "abandoned: its process ended without closing the run")
        client.set_terminated(run.info.run_id, "FAILED")


def flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class MetricLogger:
    """Buffers step metrics and flushes them in batches."""

    def __init__(self, run_id: str, flush_every: int = 200):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.flush_every = MlflowClient(), run_id, flush_every
        self.buffer = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 1000):  # MLflow's per-request limit
            self.client.log_batch(self.run_id, metrics=self.buffer[i : i + 1000])
        self.buffer = []
