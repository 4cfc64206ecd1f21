"""Preference pairs from any Hugging Face `datasets` source, in one shape.

Public preference data comes in several layouts: Anthropic's HH-RLHF (two full transcripts that
differ in the last reply), LLaMA-Factory's pairwise sharegpt, flat prompt/chosen/rejected strings
and TRL's conversational messages. The reward model and DPO read one shape, whatever the source:

    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...],  # ends with a user turn
     "chosen": str, "rejected": str, "source": str}

The layout is detected from the first record. A pair that cannot teach a preference is dropped
and counted by reason: `empty` (a reply is empty), `identical` (both replies are the same),
`prompt` (no prompt ending with a user turn, a role other than system/user/assistant, or HH-RLHF
transcripts whose prompts differ).
"""

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from herd.config import ParamError, check_part
from herd.data.io import is_local
from herd.errors import HerdError

Pair = tuple[list[dict], str, str]  # the prompt's messages, the chosen reply, the rejected reply

SPEAKERS = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_LAST_REPLY = "\n\nAssistant:"
FORMATS = ("HH-RLHF {chosen, rejected} transcripts; LLaMA-Factory {conversations, chosen, rejected} "
           "(optional system); {prompt, chosen, rejected} strings (optional system); "
           "TRL conversational {prompt, chosen, rejected} message lists")


@dataclass
class PreferenceSource:
    """A preference data set read through `datasets.load_dataset`."""

    path: str  # a hub name ("Anthropic/hh-rlhf") or a local json/jsonl(.gz) or parquet file
    split: str = "train"
    name: str | None = None  # the hub dataset's config name
    limit: int | None = None  # read at most this many records

    def check(self, root: Path) -> None:
        if self.limit is not None and self.limit < 1:
            raise ParamError("limit", f"must be at least 1, got {self.limit}")
        if is_local(self.path, root) and not (root / self.path).is_file():
            raise ParamError("path", f"input file {root / self.path} does not exist")


def check_sources(sources: list[PreferenceSource], root: Path, key: str) -> None:
    """Check every source of the params list `key`, naming the failing one by its index."""
    for i, source in enumerate(sources):
        check_part(source, root, f"{key}[{i}].")


def load_preferences(source: PreferenceSource, root: Path) -> tuple[list[dict], dict[str, int]]:
    """The pairs of the first `limit` records of `source` (a local path is relative to `root`),
    and how many records were dropped, by reason (see the module docstring)."""
    if isinstance(source, DictConfig):  # a stage's params node: the schema's own object has the check
        source = OmegaConf.to_object(source)
    source.check(root)
    where = str(root / source.path) if is_local(source.path, root) else source.path
    rows = _read(source, root, where)
    if not rows:
        return [], {}
    parse = _detect(rows[0], where)
    pairs, dropped = [], Counter()
    for row in rows:
        messages, chosen, rejected = parse(row)
        chosen, rejected = (chosen or "").strip(), (rejected or "").strip()
        reason = _problem(messages, chosen, rejected)
        if reason:
            dropped[reason] += 1
        else:
            pairs.append({"messages": messages, "chosen": chosen, "rejected": rejected, "source": source.path})
    return pairs, dict(dropped)


def _read(source: PreferenceSource, root: Path, where: str) -> list[dict]:
    import datasets  # seconds to import: only loading needs it

    try:
        if is_local(source.path, root):
            builder = "parquet" if source.path.endswith(".parquet") else "json"
            ds = datasets.load_dataset(builder, data_files={source.split: where}, split=source.split)
        else:
            ds = datasets.load_dataset(source.path, source.name, split=source.split)
    except Exception as exc:  # datasets raises many types; the user needs the source and the cause
        raise HerdError(f"cannot load preference source '{where}': {type(exc).__name__}: {exc}") from None
    return (ds if source.limit is None else ds.select(range(min(source.limit, len(ds))))).to_list()


def _detect(row: dict, where: str) -> Callable[[dict], Pair]:
    chosen = row.get("chosen")
    if "rejected" in row:
        if isinstance(row.get("conversations"), list) and isinstance(chosen, dict):
            return _sharegpt
        if isinstance(row.get("prompt"), str):
            return _flat
        if isinstance(row.get("prompt"), list) and isinstance(chosen, list):
            return _conversational
        if "prompt" not in row and isinstance(chosen, str):
            return _hh
    raise HerdError(f"{where}: unknown preference format (keys: {', '.join(sorted(row))}); "
                    f"accepted: {FORMATS}")


def _hh(row: dict) -> Pair:
    prompt, _, chosen = row["chosen"].rpartition(HH_LAST_REPLY)
    rejected_prompt, _, rejected = row["rejected"].rpartition(HH_LAST_REPLY)
    return (_hh_messages(prompt) if prompt == rejected_prompt else []), chosen, rejected


def _hh_messages(transcript: str) -> list[dict]:
    head, *turns = HH_TURN.split(transcript)
    if head.strip():
        return []
    messages: list[dict] = []
    for speaker, text in zip(turns[::2], turns[1::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        # A few transcripts repeat a speaker; chat templates expect turns to alternate.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + text.strip()
        else:
            messages.append({"role": role, "content": text.strip()})
    return messages


def _sharegpt(row: dict) -> Pair:
    turns = [{"role": SPEAKERS.get(t["from"], t["from"]), "content": t["value"]} for t in row["conversations"]]
    return _with_system(row, turns), row["chosen"]["value"], row["rejected"]["value"]


def _flat(row: dict) -> Pair:
    return _with_system(row, [{"role": "user", "content": row["prompt"]}]), row["chosen"], row["rejected"]


def _conversational(row: dict) -> Pair:
    prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
    return prompt, _last_reply(row["chosen"]), _last_reply(row["rejected"])


def _last_reply(messages: list[dict]) -> str | None:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), None)


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + messages


def _problem(messages: list[dict], chosen: str, rejected: str) -> str | None:
    if not chosen or not rejected:
        return "empty"
    if chosen == rejected:
        return "identical"
    if (not messages or messages[-1]["role"] != "user"
            or any(m["role"] not in ("system", "user", "assistant") or not isinstance(m["content"], str)
                   for m in messages)):
        return "prompt"
    return None
