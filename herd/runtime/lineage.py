"""The chain behind a model or an output, back to the corpus' raw sources.

Every stage writes a manifest (params, input hashes, code version, MLflow run, the run ids of its
ancestors) into its output and into its MLflow run. Starting from a registered model
(`models:/name@alias`, `models:/name/3`) or an output folder, each ancestor's manifest is read from
its MLflow run, so the chain is complete even where the artifacts/ folder is gone.
"""

import json
import re
from pathlib import Path

from herd.errors import HerdError
from herd.runtime.tracking import flatten

MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def start_manifest(target: str) -> dict:
    """The manifest of the stage that made `target` (a models:/ URI or a folder of artifacts/)."""
    m = MODEL_URI.match(target)
    if m:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient()
        try:
            if m["alias"]:
                version = client.get_model_version_by_alias(m["name"], m["alias"])
            else:
                version = client.get_model_version(m["name"], m["version"])
        except MlflowException as exc:
            raise HerdError(f"{target}: not in the model registry ({exc.message.splitlines()[0]})") from None
        return run_manifest(version.run_id)
    if target.startswith("models:/"):
        raise HerdError(f"{target}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    path = Path(target)
    for folder in (path, *path.parents):
        if (folder / "manifest.json").is_file():
            return json.loads((folder / "manifest.json").read_text())
    raise HerdError(f"{target}: no manifest.json in it or above it (is it a stage output under artifacts/?)")


def run_manifest(run_id: str) -> dict:
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/manifest.json")
    except Exception as exc:  # the store raises several kinds for a run or file it lacks
        raise HerdError(f"MLflow run {run_id} has no readable manifest.json ({exc})") from None


def chain(target: str) -> list[dict]:
    """The manifests of the target's stage and of every ancestor, the target first and the raw
    corpus last (each ancestor once, after everything that reads it)."""
    first = start_manifest(target)
    manifests = {first["stage"]: first}
    for stage, record in first.get("lineage", {}).items():
        manifests[stage] = run_manifest(record["run_id"])
    order: list[str] = []

    def visit(stage: str) -> None:  # depth-first post-order: a stage after all its inputs
        if stage in order or stage not in manifests:
            return
        for upstream in manifests[stage].get("inputs", {}):
            visit(upstream)
        order.append(stage)

    visit(first["stage"])
    return [manifests[s] for s in reversed(order)]


def describe(manifest: dict) -> str:
    """One ancestor in a few lines: stage, MLflow run, output hash, code, inputs, params."""
    code = manifest.get("code", {})
    lines = [f"{manifest['stage']}  (MLflow run {manifest['mlflow_run_id']})",
             f"  output   sha256 {manifest['output_sha256'][:16]}",
             f"  code     git {(code.get('git_commit') or 'none')[:10]}, sha256 {code.get('code_sha256', '?')[:16]}"]
    if manifest.get("inputs"):
        lines.append("  inputs   " + ", ".join(f"{s} {h[:12]}" for s, h in manifest["inputs"].items()))
    if manifest.get("sources"):
        lines.append("  sources  " + ", ".join(manifest["sources"]))
    params = flatten(manifest.get("params", {}))
    if params:
        lines.append("  params   " + " ".join(f"{k}={v}" for k, v in params.items()))
    return "\n".join(lines)

