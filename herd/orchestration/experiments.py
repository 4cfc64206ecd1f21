"""`herd exp run`: one param variant in a workspace of its own, so several run at once.

The workspace is a git worktree of HEAD under .dvc/tmp/herd/<name> (where DVC keeps its own
temporary workspaces, outside its view of the project) with this checkout's uncommitted changes and
untracked files (the code as it stands, as `dvc exp run` takes it), its params.yaml, dvc.lock,
metrics/ and plots/, the changed params, and this checkout's DVC cache: every stage the change leaves alone
is up to date there, checked out from the cache, and only the changed stages run (on the pools
with `--pools`). The result is saved as a DVC experiment (`dvc exp save`: `dvc exp show` lists it
beside the workspace; `dvc exp apply NAME` brings it here) and the workspace removed.
"""

import hashlib
import shutil
import subprocess
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from herd.errors import HerdError
from herd.recipe import check_params


def parse_sets(sets: list[str]) -> dict:
    """`-S dpo.beta=0.2` (YAML values), as `dvc exp run -S` takes them."""
    changes = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise HerdError(f"-S {item!r}: expected KEY=VALUE, e.g. -S dpo.beta=0.2")
        changes[key] = yaml.safe_load(value)
    return changes


def name_for(changes: dict) -> str:
    return "exp-" + hashlib.sha256(repr(sorted(changes.items())).encode()).hexdigest()[:7]


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HerdError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")


def prepare(root: Path, changes: dict, name: str) -> Path:
    """The experiment's workspace: this checkout's params with the changes, every output of
    dvc.lock in place; raises before creating anything when a change is not a valid param."""
    params = OmegaConf.load(root / "params.yaml")
    for key, value in changes.items():
        if OmegaConf.select(params, key, default=KeyError) is KeyError:
            raise HerdError(f"-S {key}: params.yaml has no such key")
        OmegaConf.update(params, key, value, merge=False)
    workspace = root / ".dvc" / "tmp" / "herd" / name
    if workspace.exists():
        raise HerdError(f"an experiment named {name} is running (its workspace {workspace} exists); "
                        f"pick another --name, or `git worktree remove --force {workspace}` if it was killed")
    _run(["git", "worktree", "add", "-q", "--detach", str(workspace), "HEAD"], root, "git worktree add")
    try:
        carry_changes(root, workspace)
        OmegaConf.save(params, workspace / "params.yaml")
        check_params(workspace)
        if (root / "dvc.lock").is_file():
            (workspace / "dvc.lock").write_text((root / "dvc.lock").read_text())
        for summary in ("metrics", "plots"):  # git-tracked outputs dvc.lock records; not in DVC's cache
            if (root / summary).is_dir():
                shutil.rmtree(workspace / summary, ignore_errors=True)
                shutil.copytree(root / summary, workspace / summary)
        if (root / ".dvc" / "config.local").is_file():  # this checkout's own settings (e.g. its remote)
            shutil.copy(root / ".dvc" / "config.local", workspace / ".dvc" / "config.local")
        _run(["dvc", "config", "--local", "cache.dir", str((root / ".dvc" / "cache").resolve())], workspace,
             "sharing the DVC cache")
        # Links, not copies, of what the cache holds (stages never write into their inputs).
        _run(["dvc", "config", "--local", "cache.type", "reflink,hardlink,copy"], workspace, "setting the cache links")
        subprocess.run(["dvc", "checkout", "-q"], cwd=workspace, capture_output=True)  # what the cache has
    except BaseException:
        remove(root, workspace)
        raise
    return workspace


def carry_changes(root: Path, workspace: Path) -> None:
    """This checkout's uncommitted changes to tracked files, and the untracked files git does not
    ignore, into the workspace (a worktree of HEAD)."""
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=root, capture_output=True, check=True).stdout
    if diff:
        proc = subprocess.run(["git", "apply", "--binary", "-"], cwd=workspace, input=diff, capture_output=True)
        if proc.returncode != 0:
            raise HerdError(f"carrying this checkout's uncommitted changes into the experiment failed: "
                            f"{proc.stderr.decode().strip()[-800:]}")
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=root,
                               capture_output=True, check=True).stdout.decode()
    for rel in filter(None, untracked.split("\0")):
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, workspace / rel)


def keep_logs(root: Path, workspace: Path, name: str) -> Path:
    """The workspace's stage logs, kept in this checkout (.herd/logs/experiments/<name>) before the
    workspace goes."""
    kept = root / ".herd" / "logs" / "experiments" / name
    shutil.rmtree(kept, ignore_errors=True)
    if (workspace / ".herd" / "logs").is_dir():
        shutil.copytree(workspace / ".herd" / "logs", kept)
    return kept


def save(workspace: Path, name: str, stages: list[str]) -> None:
    """Record the workspace as experiment `name`; `stages` limits what DVC commits (an experiment
    run up to some stages leaves the later ones' outputs out)."""
    _run(["dvc", "exp", "save", "--force", "-n", name, *stages], workspace, "dvc exp save")


def remove(root: Path, workspace: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(workspace)], cwd=root, capture_output=True)
