"""Reading and writing document tables: external sources through Hugging Face `datasets`, stage
outputs as parquet (columns carried through unchanged, so any document can be traced)."""

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from herd.errors import HerdError

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _local_format(path: str) -> str | None:
    suffixes = [s for s in Path(path).suffixes if s != ".gz"]
    return LOCAL_FORMATS.get(suffixes[-1]) if suffixes else None


def load_source(source) -> Iterator[dict]:
    """Records of one configured source: a local json/jsonl(.gz)/parquet file or a hub dataset
    name, read with `datasets.load_dataset`. Each record gets `text`, `domain` and `source`."""
    import datasets

    fmt = _local_format(source.path)
    try:
        if fmt:
            ds = datasets.load_dataset(fmt, data_files=str(source.path), split="train")
        else:
            ds = datasets.load_dataset(source.path, source.name, split=source.split)
    except Exception as exc:  # datasets raises many types; the user needs the source and the cause
        raise HerdError(f"cannot load source '{source.path}': {type(exc).__name__}: {exc}") from None
    if source.text_field not in ds.column_names:
        raise HerdError(
            f"source '{source.path}' has no field '{source.text_field}' (fields: {', '.join(ds.column_names)})"
        )
    for i, record in enumerate(ds):
        if source.limit is not None and i >= source.limit:
            break
        record = dict(record)
        text = record.pop(source.text_field)
        yield {"id": str(record.pop("id", f"{source.path}/{i}")), "text": text, "domain": source.domain,
               "source": source.path, **{k: _jsonable(v) for k, v in record.items()}}


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
