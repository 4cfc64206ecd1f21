"""params.yaml is validated before any work, and errors name the key."""

import os
import subprocess
import sys

import pytest
from omegaconf.errors import ConfigAttributeError

from herd.config import load_params, stage_config
from herd.errors import HerdError
from tests.conftest import REPO


def write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repository_params_are_valid():
    assert load_params(REPO / "params.yaml").dpo.beta > 0


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"filter\.min_wrds"):
        load_params(write(tmp_path, "filter:\n  min_wrds: 3\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"pretrain\.steps"):
        load_params(write(tmp_path, "pretrain:\n  steps: many\n"))


def test_missing_input_file_is_named(tmp_path):
    text = "corpus:\n  sources:\n    - {path: data/missing.jsonl, domain: web}\n"
    with pytest.raises(HerdError, match=r"corpus\.sources\[0\]\.path: input file .*missing\.jsonl does not exist"):
        load_params(write(tmp_path, text))


def test_unknown_domain_weight_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"filter\.weights\.poetry: unknown domain"):
        load_params(write(tmp_path, "filter:\n  weights: {poetry: 1.0}\n"))


@pytest.mark.parametrize("key", ["workers", "shard_size"])
def test_out_of_range_value_names_its_key(tmp_path, key):
    with pytest.raises(HerdError, match=rf"filter\.{key}: must be at least 1"):
        load_params(write(tmp_path, f"filter:\n  {key}: 0\n"))


def test_invalid_yaml_is_reported(tmp_path):
    with pytest.raises(HerdError, match="not valid YAML"):
        load_params(write(tmp_path, "filter: [unclosed\n"))


def test_stage_sees_only_its_declared_sections():
    cfg = stage_config("dpo", REPO)
    assert cfg.dpo.beta > 0 and cfg.train.precision
    with pytest.raises(ConfigAttributeError, match="anneal"):
        cfg.anneal  # noqa: B018  (not declared for dpo in dvc.yaml, so not readable)


def test_stage_cli_reports_bad_params_without_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text("filter:\n  min_words: lots\n")
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "tasks.filter"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "error: params.yaml: filter.min_words" in proc.stderr
    assert "Traceback" not in proc.stderr
