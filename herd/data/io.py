"""Reading and writing document tables: external sources through Hugging Face `datasets`, stage
outputs as parquet (columns carried through unchanged, so any document can be traced)."""

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from herd.errors import HerdError

RECORD_FILES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


def read_records(path: Path, text_field: str = "text", batch: int = 1000) -> Iterator[dict]:
    """Records of a jsonl(.gz)/json(.gz)/parquet file, or of every such file in a folder. A record
    that cannot be read (not JSON, not UTF-8, not an object, a `text` that is not a string) becomes
    a record with no text and a `read_error` naming its line and cause: counted, never fatal."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [f for f in files if f.name.endswith(RECORD_FILES)]
    if not files:
        raise HerdError(f"no .jsonl, .jsonl.gz, .json or .parquet input at {path}")
    for file in files:
        if file.suffix == ".parquet":
            for record_batch in pq.ParquetFile(file).iter_batches(batch_size=batch):
                for i, row in enumerate(record_batch.to_pylist()):
                    yield _record(row, text_field, f"{file.name}:{i}", f"row {i}")
            continue
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                    if not isinstance(row, dict):
                        raise ValueError(f"a JSON {type(row).__name__}, not an object")
                except UnicodeDecodeError as exc:
                    yield _unreadable(f"{file.name}:{n}", f"line {n}: not UTF-8 ({exc.reason} at byte {exc.start})")
                    continue
                except ValueError as exc:
                    yield _unreadable(f"{file.name}:{n}", f"line {n}: not a JSON object ({exc})")
                    continue
                yield _record(row, text_field, f"{file.name}:{n}", f"line {n}")


def _unreadable(record_id: str, why: str) -> dict:
    return {"id": record_id, "text": None, "domain": "web", "read_error": why}


def _record(row: dict, text_field: str, fallback_id: str, where: str) -> dict:
    text = row.get(text_field)
    record = {k: _jsonable(v) for k, v in row.items() if k != text_field}
    record.setdefault("id", fallback_id)
    record["id"] = str(record["id"])
    record.setdefault("domain", "web")
    if text is not None and not isinstance(text, str):
        record.update(text=None, read_error=f"{where}: field '{text_field}' is a {type(text).__name__}, not text")
    else:
        record["text"] = text
    return record


def is_local(path: str, root: Path) -> bool:
    """A source path names a local file or folder (else a hub dataset): it starts with . or /, has
    a record file's suffix, or its first folder exists here."""
    first = Path(path).parts[0] if Path(path).parts else ""
    return path.startswith((".", "/")) or path.endswith(RECORD_FILES) or (root / first).is_dir()


def load_source(source, root: Path, revision: str | None = None) -> Iterator[dict]:
    """Records of one configured source, each with `text`, `domain` and `source`: a local
    file or folder read record by record (see `read_records`), or a hub dataset through
    `datasets.load_dataset` at `revision` (set `HF_HUB_OFFLINE=1` to forbid any lookup)."""
    if is_local(source.path, root):
        records = read_records(root / source.path, source.text_field)
    else:
        records = _hub_records(source, revision)
    for i, record in enumerate(records):
        if source.limit is not None and i >= source.limit:
            break
        yield {**record, "domain": source.domain, "source": source.path}


def hub_revision(source) -> str | None:
    """The commit a hub source resolves to, for the lineage (`revision` pins it in params). In
    offline mode (HF_HUB_OFFLINE=1) nothing is looked up: the pinned revision, or None for
    whatever the local cache holds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return source.revision
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(source.path, revision=source.revision).sha
    except Exception as exc:  # offline, unknown name, no access: the user needs the source and the cause
        raise HerdError(f"cannot resolve hub source '{source.path}': {type(exc).__name__}: {exc}") from None


def _hub_records(source, revision: str | None) -> Iterator[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(source.path, source.name, split=source.split, revision=revision)
    except Exception as exc:  # datasets raises many types; the user needs the source and the cause
        raise HerdError(f"cannot load source '{source.path}': {type(exc).__name__}: {exc}") from None
    if source.text_field not in ds.column_names:
        raise HerdError(
            f"source '{source.path}' has no field '{source.text_field}' (fields: {', '.join(ds.column_names)})"
        )
    for i, row in enumerate(ds):
        yield _record(row, source.text_field, f"{source.path}/{i}", f"record {i}")


def _jsonable(value):
    return value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value, default=str)


def write_table(rows: Iterable[dict], path: Path) -> int:
    """Write rows as parquet, with the union of their columns (missing values are null)."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    table = pa.table({c: [r.get(c) for r in rows] for c in columns}) if rows else pa.table({})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return len(rows)


def read_table(path: Path) -> list[dict]:
    """Rows of a parquet file, or of every parquet shard in a folder (columns may differ by shard)."""
    if not path.exists():
        raise HerdError(f"missing input {path}: run the upstream stage first (dvc repro)")
    if path.is_file():
        return pq.read_table(path).to_pylist()
    return [row for shard in sorted(path.glob("*.parquet")) for row in pq.read_table(shard).to_pylist()]


def write_jsonl(rows: Iterable[dict], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with (gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz" else open(path, "w")) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise HerdError(f"missing input {path}: run the upstream stage first (dvc repro)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def in_holdout(key, frac: float) -> bool:
    """A stable split by key: adding records never moves old ones between splits."""
    return int(hashlib.sha1(str(key).encode()).hexdigest()[:8], 16) < frac * 2**32
