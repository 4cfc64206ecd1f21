"""MLflow models: every training stage logs its checkpoint as a pyfunc model (with a signature,
an input example and the generation params in a params schema); the models that matter (reward
model, final policy) are registered with an alias and tags that chain back, stage by stage, to the
corpus' raw sources.

A logged model carries Herd's own code (`code_paths`), so its requirements are published
packages only, pinned to the versions that trained it: a fresh environment can install them.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature

from herd.model.published import EXAMPLE_ANSWER, EXAMPLE_QUESTION, GENERATION_PARAMS

SERVING_CODE = Path(__file__).with_name("serving.py")
HERD_PACKAGE = Path(__file__).resolve().parents[1]
# What loading and running a checkpoint imports (herd/runtime/serving.py and what it imports).
REQUIREMENTS = ("torch", "tokenizers", "safetensors", "numpy", "pandas", "omegaconf", "mlflow")


def requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")  # "+cpu": a local build tag no index knows
        except PackageNotFoundError:
            pins.append(name)
    return pins


def signature(kind: str):
    """What the model takes and returns: a `prompt` column (and `response` for a reward model)."""
    if kind == "reward":
        example = pd.DataFrame({"prompt": [EXAMPLE_QUESTION], "response": [EXAMPLE_ANSWER]})
        return example, infer_signature(example, [0.0])
    example = pd.DataFrame({"prompt": [EXAMPLE_QUESTION]})
    return example, infer_signature(example, [EXAMPLE_ANSWER], params=GENERATION_PARAMS)


def log_model(st, checkpoint: Path, kind: str):
    """Log `checkpoint` as the stage run's pyfunc model of `kind` (base, policy or reward)."""
    example, sig = signature(kind)
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(SERVING_CODE), artifacts={"checkpoint": str(checkpoint)},
        model_config={"kind": kind}, code_paths=[str(HERD_PACKAGE)], pip_requirements=requirements(),
        signature=sig, input_example=example, tags={"herd.stage": st.name},
    )


def register(st, info, name: str, alias: bool = True) -> str | None:
    """Register the logged model `info` as `name`, tag it with its lineage and, unless its alias
    is gated by an evaluation (`crown`), point the alias at the new version. Returns the version."""
    tcfg = st.cfg.runtime.tracking
    if not tcfg.register:
        return None
    version_ = mlflow.register_model(info.model_uri, name)
    client = mlflow.MlflowClient()
    if alias:
        client.set_registered_model_alias(name, tcfg.alias, version_.version)
    tags = {"herd.stage": st.name, "herd.run_id": st.run_id}
    for stage, record in st.lineage().items():
        tags[f"lineage.{stage}.run_id"] = record["run_id"]
        tags[f"lineage.{stage}.output_sha256"] = record["output_sha256"]
        if "sources" in record:
            tags[f"lineage.{stage}.sources"] = ",".join(record["sources"])
    for key, value in tags.items():
        client.set_model_version_tag(name, version_.version, key, value)
    return version_.version


def version_of_run(name: str, run_id: str):
    """The registered version of `name` that the MLflow run `run_id` logged, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)


def holder(name: str, alias: str):
    """The version that holds `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def checkpoint_of(name: str, version: str) -> Path:
    """The Herd checkpoint folder inside a registered version (downloaded when the store is remote)."""
    import yaml

    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    flavor = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
    return root / flavor["artifacts"]["checkpoint"]["path"]


def crown(name: str, version: str, alias: str, promote: bool, tags: dict[str, str]) -> None:
    """Record a gated alias decision on `version`; move the alias to it when `promote`."""
    client = mlflow.MlflowClient()
    if promote:
        client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
