"""The pretrain stage under torchrun: 2-process DDP on CPU (gloo) gives the single-process result."""

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_project, project_env, set_param

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_single_process(tmp_path):
    project = make_project(tmp_path, {"train": {"precision": "fp32"}, "pretrain": {
        "steps": 8, "warmup_steps": 2, "seq_len_ramp": [], "batch_ramp": []}})
    env = project_env(project)
    subprocess.run(["dvc", "repro", "tokenizer"], cwd=project, env=env, check=True, capture_output=True)
    weights = project / "artifacts" / "pretrain" / "model" / "model.safetensors"

    subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=project, env=env, check=True, capture_output=True)
    single = load_file(str(weights))
    shutil.rmtree(project / "artifacts" / "pretrain")

    set_param(project, "runtime.train.nproc_per_node", 2)
    proc = subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=project, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = load_file(str(weights))
    assert single.keys() == ddp.keys()
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=2e-4), name
    assert not any((project / "artifacts").glob(".pretrain.rank*"))  # rank 1 left nothing behind
