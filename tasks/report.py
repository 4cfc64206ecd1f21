"""report: every evaluation side by side: report.md (a table per kind of model), metrics.json
(`<model stage>.<measure>`), loss_by_domain.png; logged to MLflow."""

import json

from herd.evals.report import loss_table, render
from herd.plots import grouped_bars
from herd.stage import StageRun, StageSpec, main

SPEC = StageSpec(__doc__, inputs=None, params={})


def run(st: StageRun) -> None:
    results = {}
    for role in st.inputs:
        manifest = st.upstream_manifest(role)
        metrics = json.loads((st.input(role) / "metrics.json").read_text())
        metrics.pop("wall_time_s", None)
        results[manifest["evaluates"]] = {"metrics": metrics, "baseline": manifest.get("baseline")}
        for key, value in metrics.items():
            st.metrics[f"{manifest['evaluates']}.{key}"] = value
    (st.out / "report.md").write_text(render(results))
    losses, short = loss_table(results)
    grouped_bars(losses, f"held-out loss by domain (context {short})", "loss (nats/token)",
                 st.out / "loss_by_domain.png")
    import mlflow

    mlflow.log_artifact(str(st.out / "report.md"))
    mlflow.log_artifact(str(st.out / "loss_by_domain.png"))


if __name__ == "__main__":
    main(SPEC, run)
