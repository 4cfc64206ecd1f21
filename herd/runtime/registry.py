"""The MLflow model registry: the models that matter (reward model, final policy) registered
with an alias and tags that chain back, stage by stage, to the corpus' raw sources."""

from pathlib import Path

import mlflow

SERVING_CODE = Path(__file__).with_name("serving.py")


def register(st, checkpoint: Path, kind: str, name: str) -> str | None:
    """Log `checkpoint` as a pyfunc model in the stage's run, register it as `name`, point the
    alias at the new version and tag it with its lineage. Returns the version."""
    tcfg = st.cfg.runtime.tracking
    info = mlflow.pyfunc.log_model(
        name=kind, python_model=str(SERVING_CODE), artifacts={"checkpoint": str(checkpoint)},
        model_config={"kind": kind}, pip_requirements=["herd"],
    )
    if not tcfg.register:
        return None
    version = mlflow.register_model(info.model_uri, name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, tcfg.alias, version.version)
    tags = {"herd.stage": st.name, "herd.run_id": st.run_id}
    for stage, record in st.lineage().items():
        tags[f"lineage.{stage}.run_id"] = record["run_id"]
        tags[f"lineage.{stage}.output_sha256"] = record["output_sha256"]
        if "sources" in record:
            tags[f"lineage.{stage}.sources"] = ",".join(record["sources"])
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    return version.version
