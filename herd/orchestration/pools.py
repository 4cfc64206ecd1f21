"""Stages on Prefect work pools: which pool a stage runs on, `herd deploy` (the pools and one
deployment of the `herd-stage` flow per pool, on the Prefect server of the user's profile),
`herd worker` (a worker in a clone of the project) and the dispatch of one stage by
`herd run --pools`.

By default the stages that train run on the `gpu` pool and the rest (data, tokenizer, sampling,
evaluation, report) on the `cpu` pool; `runtime.pools.stages` moves any stage.
"""

import asyncio
import os
import subprocess
from datetime import timedelta
from pathlib import Path

from herd.errors import HerdError
from herd.orchestration.worker import FLOW, WORKSPACE_ENV, run_stage_on_worker
from herd.recipe import Stage
from herd.runtime.config import PoolsConfig

ZOMBIES = "herd: crash unresponsive stage runs"
HEARTBEAT_S = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of workers (Prefect's minimum)
SILENT_S = 2 * HEARTBEAT_S  # two heartbeats missed: the worker is gone
ENTRYPOINT = "herd.orchestration.worker.run_stage_on_worker"  # a module path: workers import it from herd
KEYS = ("cpu", "gpu")


class WorkerLost(HerdError):
    """The flow run crashed (its worker was killed or vanished): another worker may take it."""


def pool_of(stage: Stage, cfg: PoolsConfig) -> str:
    return cfg.stages.get(stage.name) or ("gpu" if stage.spec.trains else "cpu")


def deployment(key: str) -> str:
    return f"{FLOW}/{key}"


def deploy(cfg: PoolsConfig) -> list[str]:
    """Create the missing work pools, set their concurrency limits and create (or update) the
    deployments; returns one line per pool saying what it did."""
    return asyncio.run(_deploy(cfg))


async def _deploy(cfg: PoolsConfig) -> list[str]:
    from omegaconf import OmegaConf
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(run_stage_on_worker).model_dump_for_openapi()
    lines = []
    async with get_client() as client:
        await _reachable(client)
        flow_id = await client.create_flow_from_name(FLOW)
        for key in KEYS:
            pool = getattr(cfg, key)
            try:
                await client.read_work_pool(pool.name)
                made = "exists"
            except ObjectNotFound:
                _create_pool(pool.name, pool.type)
                made = f"created ({pool.type})"
            await client.update_work_pool(pool.name, WorkPoolUpdate(concurrency_limit=pool.concurrency))
            variables = OmegaConf.to_container(pool.job_variables, resolve=True) \
                if OmegaConf.is_config(pool.job_variables) else dict(pool.job_variables)
            await client.create_deployment(flow_id=flow_id, name=key, entrypoint=ENTRYPOINT, work_pool_name=pool.name,
                                           job_variables=variables, pull_steps=[], parameter_openapi_schema=schema,
                                           description=f"one Herd stage on the {key} pool")
            lines.append(f"work pool {pool.name!r} {made}, concurrency {pool.concurrency}; "
                         f"deployment {deployment(key)!r} with job variables {variables}")
        lines.append(await _crash_unresponsive_runs(client))
    return lines


async def _crash_unresponsive_runs(client) -> str:
    """Prefect's zombie-flow automation: a flow run whose heartbeats stop (its machine died
    without a word: SIGKILL, power loss, eviction) is marked Crashed, so the orchestrator's
    retry dispatches the stage again and the pool's concurrency slot is freed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if await client.read_automations_by_name(ZOMBIES):
        return f"automation {ZOMBIES!r} exists"
    await Automation(
        name=ZOMBIES,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": FLOW}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=SILENT_S)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {SILENT_S} s: its worker is gone")],
    ).acreate()
    return f"automation {ZOMBIES!r} created (stage runs silent for {SILENT_S} s are marked Crashed)"


def _create_pool(name: str, kind: str) -> None:
    # Prefect's CLI fills in the pool type's default job template (docker, kubernetes, ...).
    proc = subprocess.run(["prefect", "work-pool", "create", name, "--type", kind], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HerdError(f"could not create the work pool {name!r} of type {kind!r}: "
                        f"{(proc.stderr or proc.stdout).strip()[-500:]}")


async def _reachable(client) -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise HerdError("work pools need a Prefect server: start one (`prefect server start`) and point your profile "
                        "at it (`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`)")
    try:
        await client.api_healthcheck()
        await client.read_work_pools(limit=1)
    except Exception as exc:
        raise HerdError(f"the Prefect server at {PREFECT_API_URL.value()} does not answer ({exc}); "
                        "is `prefect server start` running?") from None


def start_worker(root: Path, key: str, cfg: PoolsConfig, name: str | None) -> None:
    """Run a Prefect worker on pool `key` with this clone as its workspace, one stage at a time."""
    if key not in KEYS:
        raise HerdError(f"no pool {key!r}: the pools are {', '.join(KEYS)} (runtime.pools)")
    os.environ[WORKSPACE_ENV] = str(root)
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))  # see _crash_unresponsive_runs
    pool = getattr(cfg, key)
    cmd = ["prefect", "worker", "start", "--pool", pool.name, "--limit", "1",
           *(["--name", name] if name else [])]
    os.execvp(cmd[0], cmd)


def missing_workers(cfg: PoolsConfig) -> list[str]:
    """The pools with no worker online (their stages would wait for one)."""
    return asyncio.run(_missing_workers(cfg))


async def _missing_workers(cfg: PoolsConfig) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    missing = []
    async with get_client() as client:
        await _reachable(client)
        for key in KEYS:
            name = getattr(cfg, key).name
            try:
                workers = await client.read_workers_for_work_pool(name)
            except ObjectNotFound:
                raise HerdError(f"the Prefect server has no work pool {name!r}: run `herd deploy` first") from None
            if not any(str(w.status).upper().endswith("ONLINE") for w in workers):
                missing.append(key)
    return missing


def pipeline_tag(pipeline_run_id: str | None) -> str:
    """Marks the flow runs one pipeline run dispatched (its MLflow run id), so it can cancel them."""
    return f"pipeline:{pipeline_run_id}"


def cancel(pipeline_run_id: str) -> int:
    """Cancel the pipeline's flow runs still waiting or running (Prefect's cancellation: the
    worker stops the process, the stage saves a checkpoint); returns how many."""
    return asyncio.run(_cancel(pipeline_tag(pipeline_run_id)))


async def _cancel(tag: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStateType, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelling

    live = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]), state=FlowRunFilterStateType(
        any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]))
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=live)
        for run in runs:
            await client.set_flow_run_state(run.id, Cancelling(message="herd run --pools was stopped"), force=True)
    return len(runs)


def dispatch(stage: str, key: str, parameters: dict, timeout_s: float) -> str:
    """Run `stage` as a flow run of its pool's deployment and wait; returns how it ended there
    (Ran or Restored)."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment(key), parameters=parameters, flow_run_name=stage, timeout=timeout_s,
                         poll_interval=2, tags=["herd", f"stage:{stage}", pipeline_tag(parameters["parent_run_id"])])
    state = run.state
    if state is None or not state.is_final():
        raise HerdError(f"stage {stage} did not finish on the {key} pool within runtime.pools.timeout_s "
                        f"({timeout_s:.0f} s; flow run {run.name}: {state.name if state else 'no state'}); "
                        f"are workers running? `herd worker {key}`")
    if state.is_crashed():
        raise WorkerLost(f"stage {stage}: its worker on the {key} pool was lost (flow run {run.name}: "
                         f"{state.message})")
    if not state.is_completed():
        raise HerdError(f"stage {stage} failed on the {key} pool (flow run {run.name}: {state.name}: "
                        f"{state.message}); its log is in the Prefect UI and the worker's clone")
    return state.name


def worker_lost(task, task_run, state) -> bool:
    """Retry a stage whose worker was lost; a stage that failed by itself would fail again."""
    return isinstance(state.result(raise_on_failure=False), WorkerLost)
