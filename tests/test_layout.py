"""The layout shows the design: no import cycles, stage modules are only stage bodies, and every
file the code or the docs cite exists."""

import ast
import re
from pathlib import Path

import networkx as nx
from omegaconf import OmegaConf

from herd.stage import StageRun
from tests.conftest import REPO


def project_modules() -> dict[str, Path]:
    files = sorted((REPO / "herd").rglob("*.py")) + sorted((REPO / "tasks").glob("*.py"))
    return {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f for f in files}


def test_no_import_cycles():
    modules = project_modules()
    graph = nx.DiGraph()
    for name, file in modules.items():
        graph.add_node(name)
        for node in ast.walk(ast.parse(file.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)


def test_stage_modules_hold_only_their_stage():
    """tasks/ holds the stage bodies: a SPEC, run(st) and their schemas; no library code that
    another module imports."""
    for file in (REPO / "tasks").glob("*.py"):
        if file.name == "__init__.py":
            continue
        tree = ast.parse(file.read_text())
        names = {n.targets[0].id for n in tree.body if isinstance(n, ast.Assign)} | \
            {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"SPEC", "run"} <= names, file
    for file in list((REPO / "herd").rglob("*.py")) + list((REPO / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
                raise AssertionError(f"{file} imports {node.module}: library code belongs in herd/")


def test_every_cited_file_exists():
    cited = re.compile(r"\b((?:herd|tasks|docs|benchmarks|tests)/[\w/.]+?\.(?:py|md|yaml))\b")
    sources = list((REPO / "herd").rglob("*.py")) + list((REPO / "tasks").glob("*.py")) + \
        [REPO / "README.md", REPO / "params.yaml", REPO / "dvc.yaml", *(REPO / "docs").glob("*.md")]
    for source in sources:
        for path in cited.findall(source.read_text()):
            assert (REPO / path).exists(), f"{source.relative_to(REPO)} cites {path}, which does not exist"


def test_resume_key_ignores_runtime_knobs():
    def key(dpo_beta: float, workers: int) -> str:
        cfg = OmegaConf.create({"dpo": {"beta": dpo_beta}, "runtime": {"filter": {"workers": workers}}})
        return StageRun("dpo", cfg, REPO, REPO, {}, {"sft": "abc"}, "").run_key()

    assert key(0.1, 1) == key(0.1, 8)
    assert key(0.1, 1) != key(0.2, 1)
