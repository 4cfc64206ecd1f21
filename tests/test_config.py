"""params.yaml is validated before any work, each section by its own schema, and errors name the key."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from omegaconf.errors import ConfigAttributeError

from herd.config import load_sections
from herd.errors import HerdError
from herd.profiles import apply_profile
from herd.recipe import check_params
from herd.runtime.config import RuntimeConfig
from herd.stage import stage_run
from tasks import dpo
from tests.conftest import REPO


def write(tmp_path, text: str):
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path


def test_repository_params_are_valid():
    params = check_params(REPO)
    assert params.dpo.beta > 0 and params.post.rounds >= 1 and params.runtime.filter.workers >= 1


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"filter\.min_wrds"):
        check_params(write(tmp_path, "filter:\n  min_wrds: 3\n"))


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"params.yaml: sft_round: "):
        check_params(write(tmp_path, "sft_round:\n  steps: 3\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"pretrain\.steps"):
        check_params(write(tmp_path, "pretrain:\n  steps: many\n"))


def test_missing_input_file_is_named(tmp_path):
    text = "corpus:\n  sources:\n    - {path: data/missing.jsonl, domain: web}\n"
    with pytest.raises(HerdError, match=r"corpus\.sources\[0\]\.path: input file .*missing\.jsonl does not exist"):
        check_params(write(tmp_path, text))


def test_unknown_domain_weight_is_named(tmp_path):
    with pytest.raises(HerdError, match=r"filter\.weights\.poetry: 'poetry' is not one of web, prose"):
        check_params(write(tmp_path, "filter:\n  weights: {poetry: 1.0}\n"))


@pytest.mark.parametrize("key", ["filter.workers", "filter.shard_size", "train.checkpoint_every"])
def test_out_of_range_runtime_value_names_its_key(tmp_path, key):
    group, name = key.split(".")
    with pytest.raises(HerdError, match=rf"runtime\.{group}\.{name}: must be at least 1"):
        check_params(write(tmp_path, f"runtime:\n  {group}:\n    {name}: 0\n"))


def test_runtime_knobs_are_not_recipe_knobs(tmp_path):
    """A knob moved to `runtime` is refused where it used to be, naming it."""
    with pytest.raises(HerdError, match=r"filter\.workers"):
        check_params(write(tmp_path, "filter:\n  workers: 4\n"))


def test_invalid_yaml_is_reported(tmp_path):
    with pytest.raises(HerdError, match="not valid YAML"):
        check_params(write(tmp_path, "filter: [unclosed\n"))


def test_a_stage_reads_only_its_own_sections_and_ignores_the_rest(tmp_path):
    """A stage validates its sections and runtime; a broken section it does not read cannot stop it."""
    write(tmp_path, (REPO / "params.yaml").read_text() + "\nanneal_typo: {steps: x}\n")
    cfg = load_sections(tmp_path / "params.yaml", {**dpo.SPEC.params, "runtime": RuntimeConfig})
    assert cfg.dpo.beta > 0 and cfg.train.precision and cfg.runtime.tracking.experiment
    with pytest.raises(ConfigAttributeError, match="anneal"):
        cfg.anneal  # noqa: B018  (dpo does not declare it, so it cannot read it)


def test_stage_refuses_inputs_that_do_not_match_its_roles(tmp_path):
    write(tmp_path, (REPO / "params.yaml").read_text())
    with pytest.raises(HerdError,
                       match=r"stage 'dpo' reads the roles policy, samples, \[previous\]; it was given policy"):
        with stage_run(dpo.SPEC, "dpo", {"policy": "sft"}, root=tmp_path):
            pass


def test_stage_cli_reports_bad_params_without_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text("filter:\n  min_words: lots\n")
    proc = subprocess.run([sys.executable, "-m", "tasks.filter", "--name", "filter", "--input", "corpus=corpus"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "error: params.yaml: filter.min_words" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("task", ["corpus", "filter", "tokenizer", "pretrain", "extend", "anneal", "reward",
                                  "rejection_sample", "sft", "dpo", "dpo_control", "evaluate_base", "evaluate_policy",
                                  "evaluate_reward", "report"])
def test_every_stage_cli_answers_help_without_running(tmp_path, task):
    proc = subprocess.run([sys.executable, "-m", f"tasks.{task}", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m tasks.") and "params sections:" in proc.stdout
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / ".herd").exists()


def profile_project(tmp_path, profile: str):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text(profile)
    return tmp_path


def test_the_demo_profile_is_valid_params():
    folder = REPO / "profiles"
    assert (folder / "demo.yaml").is_file()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(REPO / "params.yaml", tmp)
        shutil.copytree(folder, f"{tmp}/profiles")
        changes = apply_profile(Path(tmp), "demo", check_params)
        assert any(c.startswith("model.dim: 192 -> ") for c in changes)
        assert check_params(Path(tmp)).model.dim > 192


def test_a_profile_is_written_into_params_keeping_comments_and_other_values(tmp_path):
    folder = profile_project(tmp_path, "dpo: {beta: 0.3}\nextend: {task_frac: 0.5}\n")
    changes = apply_profile(folder, "p", check_params)
    assert changes == ["dpo.beta: 0.1 -> 0.3", "extend.task_frac: 0.25 -> 0.5"]
    text = (folder / "params.yaml").read_text()
    assert "# Knobs that never change a result" in text  # comments survive
    params = check_params(folder)
    assert params.dpo.beta == 0.3 and params.extend.task_frac == 0.5 and params.dpo.lr == 1e-05


def test_a_bad_profile_leaves_params_as_they_were(tmp_path):
    folder = profile_project(tmp_path, "dpo: {beta: -1.0}\n")
    before = (folder / "params.yaml").read_text()
    with pytest.raises(HerdError, match=r"profile p: params.yaml: dpo.beta"):
        apply_profile(folder, "p", check_params)
    assert (folder / "params.yaml").read_text() == before
    with pytest.raises(HerdError, match=r"no profile 'demo2'.*the profiles are: p"):
        apply_profile(folder, "demo2", check_params)


def prefect_settings_in(project, home, **env):
    """PREFECT_HOME and the API URL that Prefect sees once herd is imported in `project`."""
    import subprocess
    import sys

    from tests.conftest import project_env

    environ = {k: v for k, v in project_env(project).items() if not k.startswith("PREFECT_")}
    environ.update(HOME=str(home), **env)
    code = ("import os, herd; from prefect.settings import PREFECT_API_URL; "
            "print(os.environ.get('PREFECT_HOME')); print(PREFECT_API_URL.value())")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=environ, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return out[0], out[1]


def test_a_users_prefect_profile_is_used_and_only_a_user_without_one_gets_the_offline_default(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text("seed: 1\n")
    bare, with_profile = tmp_path / "bare", tmp_path / "user"
    bare.mkdir()
    (with_profile / ".prefect").mkdir(parents=True)
    (with_profile / ".prefect" / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://127.0.0.1:4999/api"\n')

    assert prefect_settings_in(project, bare) == (str(project / ".herd" / "prefect"), "None")
    assert prefect_settings_in(project, with_profile) == ("None", "http://127.0.0.1:4999/api")
    assert prefect_settings_in(project, bare, PREFECT_API_URL="http://127.0.0.1:4998/api") == \
        ("None", "http://127.0.0.1:4998/api")
