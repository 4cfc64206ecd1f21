"""One `herd run` at a time per checkout, and a clean stop on SIGINT/SIGTERM.

The lock is an flock on .herd/run.lock holding the owner's pid and start time, so a second run
names the one it waits for; the kernel releases it if the owner dies, even by SIGKILL. A signal to
`herd run` is passed to the running stage's process group (dvc and the stage under it): the stage
saves a resumable checkpoint where it can, marks its MLflow run KILLED and exits; DVC writes no
lock entry for it; what is still alive after a grace period is killed.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from herd.errors import HerdError
from herd.runtime.env import state_dir

GRACE_S = 20.0


@contextmanager
def exclusive_run(root: Path, wait: bool):
    """Hold the checkout's run lock; without `wait`, fail at once naming the holder."""
    path = state_dir(root) / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise HerdError(f"another herd run is running in {root} (pid {holder.get('pid', '?')}, started "
                            f"{started}); wait for it, or pass --wait to queue behind it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "started": time.time()}))
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


class StageProcesses:
    """The running stage's process group, so a signal to `herd run` reaches it."""

    def __init__(self):
        self.group: int | None = None
        self.stopping: str | None = None

    def run(self, cmd: list[str], cwd: str, env: dict, log: Path) -> int:
        """Run `cmd` in its own process group, its output shown and copied to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as sink:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.group = proc.pid
            try:
                # Chunks, not lines: progress bars redraw with \r.
                for chunk in iter(lambda: os.read(proc.stdout.fileno(), 4096), b""):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    sink.write(chunk)
                return proc.wait()
            except BaseException:  # e.g. Prefect's SIGTERM bridge in a worker's flow run: stop the stage first
                self.stop(signal.SIGTERM)
                raise
            finally:
                self.group = None

    def stop(self, signum: int) -> None:
        """Pass the signal on; kill what outlives the grace period."""
        self.stopping = signal.Signals(signum).name
        group = self.group
        if group is None:
            return
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + GRACE_S
        while time.time() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


STAGES = StageProcesses()


@contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM stop the running stage, then end `herd run` through KeyboardInterrupt (so
    Prefect and MLflow close their runs and the temporary Prefect server is shut down)."""

    def handler(signum, frame):
        STAGES.stop(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
