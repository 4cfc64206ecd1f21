"""Where a stage's resumable checkpoints live (`runtime.train.checkpoints`).

A retried stage resumes only if it finds its checkpoint, so on a cluster they go where every
worker can reach them. Empty: `.herd/checkpoints/<stage>` in the project. A folder (shared storage,
absolute or relative to the project): `<folder>/<stage>`, used in place. An fsspec URL (s3://,
gs://, file://, ...): checkpoints are written locally as always, uploaded when written and
downloaded when the stage starts, so training never waits on remote reads.
"""

import shutil
from pathlib import Path

from herd.runtime.env import state_dir


def for_stage(location: str, root: Path, stage: str) -> "Checkpoints":
    """The checkpoints of `stage` at `location` (runtime.train.checkpoints) in project `root`."""
    if "://" in location:
        return Checkpoints(state_dir(root) / "checkpoints" / stage, f"{location.rstrip('/')}/{stage}")
    return Checkpoints((root / location).resolve() / stage if location else state_dir(root) / "checkpoints" / stage)


class Checkpoints:
    def __init__(self, folder: Path, url: str | None = None):
        self.folder, self.url = folder, url
        self._downloaded = False

    def _fs(self):
        import fsspec

        return fsspec.core.url_to_fs(self.url)[0]

    def local(self) -> Path:
        """The folder a stage writes its checkpoints into, holding the last uploaded ones at start."""
        if self.url and not self._downloaded:
            fs = self._fs()
            shutil.rmtree(self.folder, ignore_errors=True)
            for entry in fs.ls(self.url, detail=False) if fs.exists(self.url) else []:
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if not name.endswith(".tmp"):  # an upload cut short
                    fs.get(entry, str(self.folder / name), recursive=True)
            self._downloaded = True
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def written(self, path: Path) -> None:
        """Upload `path` (a checkpoint folder under local()) whole: into a temporary name first,
        so a kill mid-upload leaves the previous checkpoint, never a mix of two."""
        if not self.url:
            return
        fs = self._fs()
        target = f"{self.url}/{path.relative_to(self.folder).as_posix()}"
        fs.put(str(path), f"{target}.tmp", recursive=True)
        if fs.exists(target):
            fs.rm(target, recursive=True)
        fs.mv(f"{target}.tmp", target, recursive=True)

    def clear(self) -> None:
        """Drop the checkpoints once the stage's output is complete."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.url:
            fs = self._fs()
            if fs.exists(self.url):
                fs.rm(self.url, recursive=True)
