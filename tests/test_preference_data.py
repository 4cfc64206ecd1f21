"""Preference pairs in one shape from each supported layout: real samples of HH-RLHF and
LLaMA-Factory (skipped where the shared data is absent), tiny files of every layout, and the
messages for bad input."""

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from herd.config import ParamError
from herd.errors import HerdError
from herd.post.preference_data import PreferenceSource, load_preferences

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_TEST = SHARED_DATA / "hh_rlhf" / "helpful-base" / "test.jsonl.gz"
DPO_DEMO = SHARED_DATA / "instructions" / "llama_factory_demo" / "dpo_en_demo.json.gz"

SYSTEM = "You are terse."
HH_ROW = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 4",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 5"}
SHAREGPT_ROW = {"system": SYSTEM, "conversations": [{"from": "human", "value": "What is 2+2?"}],
                "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}
FLAT_ROW = {"system": SYSTEM, "prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
TRL_ROW = {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+2?"}],
           "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow files `datasets` writes for each loaded file out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write(path: Path, rows: list[dict]) -> Path:
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with gzip.open(path, "wt") as f:
            json.dump(rows, f)
    return path


def load(path: Path, **kw) -> tuple[list[dict], dict[str, int]]:
    return load_preferences(PreferenceSource(path.name, **kw), path.parent)


def check_shape(pairs: list[dict]) -> None:
    for pair in pairs:
        assert set(pair) == {"messages", "chosen", "rejected", "source"}
        assert pair["messages"][-1]["role"] == "user"
        assert all(set(m) == {"role", "content"} and m["content"] for m in pair["messages"])
        roles = [m["role"] for m in pair["messages"]]
        assert set(roles) <= {"system", "user", "assistant"} and "system" not in roles[1:]
        assert pair["chosen"] and pair["rejected"] and pair["chosen"] != pair["rejected"]


def test_hh_rlhf_sample():
    if not HH_TEST.exists():
        pytest.skip(f"{HH_TEST} is absent")
    pairs, dropped = load_preferences(PreferenceSource(str(HH_TEST), limit=300), REPO)
    assert len(pairs) + sum(dropped.values()) == 300 and len(pairs) > 250
    check_shape(pairs)
    for pair in pairs:
        roles = [m["role"] for m in pair["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert any(len(p["messages"]) >= 3 for p in pairs)  # multi-turn dialogues are kept whole
    assert pairs[0]["source"] == str(HH_TEST)


def test_llama_factory_sample():
    if not DPO_DEMO.exists():
        pytest.skip(f"{DPO_DEMO} is absent")
    pairs, dropped = load_preferences(PreferenceSource(str(DPO_DEMO), limit=40), REPO)
    assert len(pairs) + sum(dropped.values()) == 40 and len(pairs) > 30
    check_shape(pairs)
    assert any(p["messages"][0]["role"] == "system" for p in pairs)  # its system turns are kept


@pytest.mark.parametrize(("name", "row", "system"), [
    ("hh.jsonl", HH_ROW, False),
    ("sharegpt.json.gz", SHAREGPT_ROW, True),
    ("flat.jsonl", FLAT_ROW, True),
    ("trl.parquet", TRL_ROW, True),
])
def test_formats(tmp_path, name, row, system):
    pairs, dropped = load(write(tmp_path / name, [row]))
    expected = ([{"role": "system", "content": SYSTEM}] if system else []) + (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}] if name == "hh.jsonl" else [])
    assert pairs == [{"messages": expected + [{"role": "user", "content": "What is 2+2?"}],
                      "chosen": "4", "rejected": "5", "source": name}]
    assert dropped == {}


def test_hh_repeated_speaker_is_one_turn(tmp_path):
    row = {"chosen": "\n\nHuman: Hi\n\nHuman: Still there?\n\nAssistant: Yes", "rejected": "\n\nHuman: Hi\n\nHuman: "
           "Still there?\n\nAssistant: No"}
    pairs, _ = load(write(tmp_path / "hh.jsonl", [row]))
    assert pairs[0]["messages"] == [{"role": "user", "content": "Hi\n\nStill there?"}]


def test_useless_pairs_are_dropped_and_counted(tmp_path):
    rows = [FLAT_ROW, {**FLAT_ROW, "rejected": " 4 "}, {**FLAT_ROW, "chosen": ""},
            {**FLAT_ROW, "prompt": "What is 3+3?", "chosen": "6", "rejected": "7"}]
    pairs, dropped = load(write(tmp_path / "flat.jsonl", rows))
    assert [p["chosen"] for p in pairs] == ["4", "6"]
    assert dropped == {"identical": 1, "empty": 1}
    hh = {**HH_ROW, "rejected": HH_ROW["rejected"].replace("2+2", "3+3")}
    assert load(write(tmp_path / "hh.jsonl", [hh])) == ([], {"prompt": 1})


def test_limit_keeps_the_first_rows(tmp_path):
    rows = [{**FLAT_ROW, "prompt": f"Question {i}"} for i in range(5)]
    pairs, _ = load(write(tmp_path / "flat.jsonl", rows), limit=2)
    assert [p["messages"][-1]["content"] for p in pairs] == ["Question 0", "Question 1"]


def test_unknown_format_names_file_keys_and_formats(tmp_path):
    path = write(tmp_path / "odd.jsonl", [{"question": "What is 2+2?", "good": "4", "bad": "5"}])
    with pytest.raises(HerdError) as err:
        load(path)
    message = str(err.value)
    assert str(path) in message and "keys: bad, good, question" in message
    assert all(name in message for name in ("HH-RLHF", "LLaMA-Factory", "TRL conversational"))


def test_check(tmp_path):
    with pytest.raises(ParamError, match=re.escape(f"path: input file {tmp_path / 'missing.jsonl'} does not exist")):
        load(tmp_path / "missing.jsonl")
    with pytest.raises(ParamError, match="limit: must be at least 1, got 0"):
        PreferenceSource("Anthropic/hh-rlhf", limit=0).check(tmp_path)
    PreferenceSource("Anthropic/hh-rlhf").check(tmp_path)  # a hub name is not looked for on disk


def test_a_stage_reads_the_sources_its_params_name(tmp_path):
    """Stages hand load_preferences their params node (not the schema's object): it reads the same."""
    from herd.recipe import check_params
    from tests.conftest import make_project, set_param

    folder = make_project(tmp_path / "project")
    write(folder / "prefs.jsonl", [FLAT_ROW])
    for key in ("reward.datasets", "dpo.datasets", "evaluate.preference_files"):
        set_param(folder, key, [{"path": "prefs.jsonl", "limit": 5}])
    params = check_params(folder)
    for node in (params.reward.datasets[0], params.dpo.datasets[0], params.evaluate.preference_files[0]):
        assert load_preferences(node, folder) == load(folder / "prefs.jsonl")
