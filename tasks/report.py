"""report: what every stage did and whether it helped. Reads the filter, every training stage and
every evaluation; writes report.md and a self-contained report.html (per model stage the headline
numbers against the previous model and any control, a verdict, the plots), verdicts.json, the plots
as PNG files and metrics.json (`<model stage>.<measure>`); logs them to MLflow."""

from herd.evals.report import ReportConfig, gather, write_report
from herd.stage import StageRun, StageSpec, main

SPEC = StageSpec(__doc__, inputs=None, params={"report": ReportConfig})


def run(st: StageRun) -> None:
    results = gather(st.inputs)
    for stage, evaluation in results.evaluations.items():
        for key, value in evaluation.metrics.items():
            st.metrics[f"{stage}.{key}"] = value
    files = write_report(results, st.cfg.report, st.out)
    import mlflow

    for path in files:
        mlflow.log_artifact(str(path))


if __name__ == "__main__":
    main(SPEC, run)
