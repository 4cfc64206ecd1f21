"""DVC's side of the recipe: dvc.yaml generated from herd/recipe.py, and what DVC says about it
(the stage graph of `Repo.index`, which stages are stale and why).

Each stage's code deps are the project files its module imports, followed transitively (package
`__init__` files included, since importing runs them): editing a file reruns exactly the stages
that import it, and their descendants.
"""

import ast
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import yaml

from herd.errors import HerdError
from herd.recipe import Stage
from herd.runtime.env import state_dir

HEADER = """\
# Generated from herd/recipe.py by `herd dag --write`: do not edit (a test fails when it differs).
# Per stage: the command (module, name, inputs by role), the code it imports, the outputs of the
# stages it reads and the params sections it reads. No output persists, so DVC's run-cache keeps
# every run: a stage whose code, inputs and params match a run made before (here, on a worker, or
# in another clone sharing the remote) is restored instead of run. metrics/ and plots/ hold each
# stage's headline numbers and plotted tables, tracked by git for `dvc exp show` and
# `dvc plots diff`; the full results are in artifacts/.
"""
PACKAGES = ("herd", "tasks")


def _module_file(root: Path, module: str) -> str | None:
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def code_deps(root: Path, module: str) -> list[str]:
    """Every project file that importing `module` runs, itself included."""
    seen: set[str] = set()

    def visit(name: str) -> None:
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            return
        for i in range(1, len(parts) + 1):  # the packages on the way are imported too
            file = _module_file(root, ".".join(parts[:i]))
            if file and file not in seen:
                seen.add(file)
                if file.endswith(".py"):
                    walk(file)

    def walk(file: str) -> None:
        for node in ast.walk(ast.parse((root / file).read_text(), file)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    visit(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                visit(node.module)
                for alias in node.names:  # `from herd.data import corpus` imports a module
                    if _module_file(root, f"{node.module}.{alias.name}"):
                        visit(f"{node.module}.{alias.name}")

    visit(module)
    return sorted(seen)


def stage_entry(root: Path, s: Stage) -> dict:
    entry = {"cmd": s.cmd, "deps": code_deps(root, s.module) + [f"artifacts/{up}" for up in s.upstream] + list(s.data)}
    if s.sections:
        entry["params"] = s.sections
    entry["outs"] = [f"artifacts/{s.name}"]
    # The git-tracked summaries: small, so main and every experiment carry their own. Declared as
    # metrics and plots (not plain uncached outs, which would turn DVC's run-cache off).
    if s.spec.headline:
        entry["metrics"] = [{f"metrics/{s.name}.json": {"cache": False}}]
    if s.spec.plots:
        entry["plots"] = [{f"plots/{s.name}": {"cache": False}}]
    return entry


def plot_entries(steps: list[Stage]) -> list[dict]:
    """dvc.yaml's top-level plots: every plot each stage declares, one id per stage and title."""
    return [{f"{s.name}: {p.title}": {"template": p.template, "x": p.x, "y": {f"plots/{s.name}/{p.table}.csv": p.y}}}
            for s in steps for p in s.spec.plots]


def render(root: Path, steps: list[Stage]) -> str:
    names = [s.name for s in steps]
    for s in steps:
        missing = [up for up in s.upstream if up not in names[: names.index(s.name)]]
        if missing:
            raise HerdError(f"recipe: stage {s.name} reads {', '.join(missing)}, which no earlier stage makes")
        s.spec.check_roles(s.name, dict(s.inputs))
    body = {"stages": {s.name: stage_entry(root, s) for s in steps}, "plots": plot_entries(steps)}
    return HEADER + yaml.safe_dump(body, sort_keys=False, width=1000)


def is_current(root: Path, steps: list[Stage]) -> bool:
    path = root / "dvc.yaml"
    return path.is_file() and path.read_text() == render(root, steps)


def write(root: Path, steps: list[Stage]) -> bool:
    """Write dvc.yaml from the recipe; True when it changed."""
    text = render(root, steps)
    path = root / "dvc.yaml"
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def graph(root: Path) -> dict[str, list[str]]:
    """{stage: [upstream stages]} from DVC's own index, in dvc.yaml's order."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        order = [s.name for s in repo.index.stages]
        dag = {name: [] for name in order}
        for stage, upstream in repo.index.graph.edges:  # DVC's edges point from a stage to what it reads
            dag[stage.name].append(upstream.name)
    return {name: sorted(ups, key=order.index) for name, ups in dag.items()}


def stale(root: Path) -> dict[str, str]:
    """{stage: why} for every stage DVC finds changed itself (its downstream is not listed)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status()
    # Keys are "[path/dvc.yaml:]name" relative to the cwd.
    return {address.rpartition(":")[2]: _reason(root, address.rpartition(":")[2], entries)
            for address, entries in status.items()}


def would_run(root: Path, dag: dict[str, list[str]] | None = None, changed: dict[str, str] | None = None) -> list[str]:
    """The stages `dvc repro` would run, in order: the stale ones and everything downstream."""
    changed = stale(root) if changed is None else changed
    pending: list[str] = []
    for stage, upstream in (dag or graph(root)).items():
        if stage in changed or any(up in pending for up in upstream):
            pending.append(stage)
    return pending


def why_stale(root: Path, stage: str) -> str | None:
    """None when DVC considers the stage up to date, else a short reason."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status(targets=[f"{root / 'dvc.yaml'}:{stage}"])  # a bare name resolves against the cwd
    return _reason(root, stage, next(iter(status.values()))) if status else None


def _reason(root: Path, stage: str, entries: list) -> str:
    """DVC's status entries of a stale stage, in one line."""
    lock = root / "dvc.lock"
    if not lock.is_file() or stage not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}):
        return "never run here"
    if not (root / "artifacts" / stage).exists():  # e.g. a fresh clone: main's dvc.lock, no outputs
        return "no output here yet; dvc.lock records a run made elsewhere"
    reasons = []
    for entry in entries:
        if isinstance(entry, str):
            reasons.append(entry)
            continue
        for kind, changes in entry.items():
            names = ", ".join(f"{k} {v}" for k, v in changes.items()) if isinstance(changes, dict) else str(changes)
            reasons.append(f"{kind}: {names}")
    return "; ".join(reasons)


def executed(stage: str, log: Path) -> bool:
    """Whether `dvc repro`, whose output is in `log`, ran the stage's command (rather than
    restoring its outputs from the remote or the run-cache)."""
    return f"Running stage '{stage}'" in log.read_bytes().decode(errors="replace")


def default_remote(root: Path) -> str | None:
    """The DVC remote a stage's outputs are shared through (`dvc remote add -d`), if any."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.config["core"].get("remote")


def push(root: Path, stage: str, remote: str | None = None) -> None:
    """Send a stage's outputs and DVC's run-cache to the remote, so another clone restores the
    stage instead of running it. `dvc push --run-cache` leaves out the uncached outputs (metrics/,
    plots/) that a run-cache entry also needs; they are sent by hash."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.push(targets=[f"{root / 'dvc.yaml'}:{stage}"], run_cache=True, remote=remote)
        (entry,) = repo.stage.collect(f"{root / 'dvc.yaml'}:{stage}")
        uncached = [out.hash_info for out in entry.outs if not out.use_cache and out.hash_info]
        if uncached:
            repo.cloud.push(uncached, remote=remote)


@contextmanager
def last_good_output(root: Path, stage: str):
    """DVC deletes a stage's outputs before it runs (none persist, so the run-cache works): if the
    run fails, put back the last good ones, which dvc.lock still records: the folder from DVC's
    cache (`dvc checkout`), the small git-tracked summaries from a copy kept here."""
    lock = root / "dvc.lock"
    recorded = lock.is_file() and stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    summaries = [p for p in (root / "metrics" / f"{stage}.json", root / "plots" / stage) if p.exists()]
    keep = state_dir(root) / "last_good" / stage
    shutil.rmtree(keep, ignore_errors=True)
    for path in summaries:
        target = keep / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
    try:
        yield
    except BaseException:
        if recorded:
            subprocess.run(["dvc", "checkout", "-q", f"{lock.parent / 'dvc.yaml'}:{stage}"], cwd=root,
                           capture_output=True)
        for path in summaries:
            if not path.exists():
                (shutil.copytree if (keep / path.relative_to(root)).is_dir() else shutil.copy2)(
                    keep / path.relative_to(root), path)
        raise
    finally:
        shutil.rmtree(keep, ignore_errors=True)
