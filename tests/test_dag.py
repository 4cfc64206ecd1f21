"""dvc.yaml is the one declaration of the DAG: the Prefect flow is built from it."""

import networkx as nx
from dvc.repo import Repo

from herd.config import Params, stage_sections
from herd.orchestration.flow import load_dag, topological
from tests.conftest import REPO

CHAIN = ["corpus", "filter", "tokenizer", "pretrain", "extend", "anneal", "reward", "rejection_sample", "sft",
         "dpo", "evaluate"]


def test_flow_dag_equals_dvc_graph():
    dag = load_dag(REPO)
    with Repo(str(REPO)) as repo:
        graph = repo.index.graph
        # DVC's edges point from a stage to the stages it depends on
        dvc_edges = {(u.addressing, v.addressing) for u, v in graph.edges}
    flow_edges = {(stage, up) for stage, ups in dag.items() for up in ups}
    assert flow_edges == dvc_edges
    assert nx.is_directed_acyclic_graph(nx.DiGraph(list(flow_edges)))


def test_recipe_order_and_shape():
    dag = load_dag(REPO)
    assert topological(dag) == CHAIN
    assert "anneal" in dag["reward"] and "anneal" in dag["rejection_sample"]  # both start from the base
    assert "sft" in dag["dpo"]  # dpo's reference is the sft policy


def test_every_declared_params_section_exists():
    sections = set(Params.__dataclass_fields__)
    for stage in CHAIN:
        assert set(stage_sections(stage, REPO)) <= sections


def local_imports(path, seen=None) -> set[str]:
    """Every herd/ or tasks/ source file `path` imports, transitively."""
    import ast

    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            file = name.replace(".", "/") + ".py"
            if name.split(".")[0] in ("herd", "tasks") and (REPO / file).is_file() and file not in seen:
                seen.add(file)
                local_imports(file, seen)
    return seen


def test_every_stage_declares_the_code_it_runs():
    """A change to any module a stage imports must rerun it: dvc.yaml lists them all."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, spec in stages.items():
        code = {f"tasks/{name}.py"} | local_imports(f"tasks/{name}.py")
        code -= {"herd/__init__.py", "tasks/__init__.py"}
        missing = code - set(spec["deps"])
        assert not missing, f"dvc.yaml stage {name} does not list {sorted(missing)}"
