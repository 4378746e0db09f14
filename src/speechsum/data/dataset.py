"""The on-disk dataset format: one folder per split, a Parquet manifest, 16 kHz mono FLAC.

```
DIR/README.md                 dataset card (config, versions, counts, hours, voices, schema)
DIR/synth_config.yaml         the resolved config (a re-run must match it to resume)
DIR/<split>/manifest.parquet  one row per item (several items can share one audio file)
DIR/<split>/audio/<doc>.flac  16 kHz mono 16-bit FLAC
```

The manifest is plain Parquet with the explicit schema below, readable by pandas, pyarrow or
`datasets` without speechsum; `audio` is relative to the split folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

SPLITS = ("train", "dev", "test")

# (name, arrow type, description) - the single source of the schema and of its documentation
FIELDS: list[tuple[str, str, str]] = [
    ("id", "string", "unique item id: `<doc_id>-<k>`"),
    ("doc_id", "string", "document id; items of one document share its audio; splits never share documents"),
    ("split", "string", "train, dev or test"),
    ("audio", "string", "FLAC path relative to the split folder (16 kHz mono)"),
    ("duration", "float64", "audio length in seconds"),
    ("language", "string", "language of the speech (en, es, fr, de)"),
    ("voice", "string", "voice of the first speaker, e.g. `espeak:en-gb+f3`, `piper:en_US-joe-medium`"),
    ("voices", "list<string>", "voice of each speaker, in speaker order"),
    ("speed", "float64", "speaking-rate factor (1.0 = engine default)"),
    ("genre", "string", "meeting, status_call, interview, podcast, news_brief, voicemail, lecture; "
     "`research_talk` for ACLSum papers, `user` for user data"),
    ("register", "string", "formal, neutral or casual (casual text has fillers and repetitions)"),
    ("transcript", "string", "what is said, written as an ASR transcript would show it"),
    ("sentences", "list<struct<text: string, start: float64, end: float64, speaker: int32>>",
     "each transcript sentence with its start/end seconds in the audio and speaker index"),
    ("instruction", "string", "the summarization request"),
    ("style", "string", "summary style or ACLSum aspect (see speechsum.data.styles); empty when there is no target"),
    ("paraphrase_id", "int32", "which paraphrase of the style's instruction (-1 when none)"),
    ("held_out", "bool", "true if the style or the paraphrase is never used in train/dev"),
    ("held_out_kind", "string", "`style`, `paraphrase` or empty"),
    ("target", "string", "the reference summary"),
    ("target_author", "string", "who wrote the target: `facts-template`, `aclsum-human`, `user`, or the teacher "
     "backend (`local:<model>:<dtype>`, `openai:<url>:<model>`)"),
    ("target_problems", "list<string>", "fact-check findings for the target (empty for clean targets)"),
    ("rejected_target", "string", "a teacher target that failed the fact check and was replaced by the "
     "facts-template target (a ready-made negative for preference data); empty otherwise"),
    ("rejected_problems", "list<string>", "the fact-check findings of `rejected_target`"),
    ("facts", "string", "JSON list of the document's facts: {id, kind, value, mention, attrs}; `[]` when the "
     "document has no structured facts (LLM-written, ACLSum, user)"),
    ("source", "string", "`procedural`, `procedural-multilingual`, `llm` (teacher-written transcript), "
     "`aclsum` or `user`"),
    ("source_id", "string", "where the document came from: the ACLSum paper id, the topic seed of an LLM-written "
     "document, the user's file id; empty for procedural documents"),
]


_SENTENCES = next(t for name, t, _ in FIELDS if name == "sentences")


def item_record(doc_id: str, k: int, style, paraphrase_id: int, instruction: str, target: str, author: str,
                problems: list[str], facts_json: str = "[]", rejected_target: str = "",
                rejected_problems: list[str] = ()) -> dict[str, Any]:
    """The item-level fields of a manifest row (the document-level ones are added by the writer)."""
    from speechsum.data.styles import held_out_kind

    kind = held_out_kind(style, paraphrase_id)
    return {"id": f"{doc_id}-{k}", "instruction": instruction, "style": style.name, "paraphrase_id": paraphrase_id,
            "held_out": kind != "", "held_out_kind": kind, "target": target, "target_author": author,
            "target_problems": list(problems), "rejected_target": rejected_target,
            "rejected_problems": list(rejected_problems), "facts": facts_json}


def arrow_schema():
    import pyarrow as pa

    sentence = pa.struct([("text", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                          ("speaker", pa.int32())])
    types = {"string": pa.string(), "float64": pa.float64(), "int32": pa.int32(), "bool": pa.bool_(),
             "list<string>": pa.list_(pa.string()), _SENTENCES: pa.list_(sentence)}
    return pa.schema([(name, types[t]) for name, t, _ in FIELDS])


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(split_dir: Path, records: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=arrow_schema())
    path = split_dir / "manifest.parquet"
    fd, tmp = tempfile.mkstemp(dir=split_dir, prefix=".manifest.")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


REQUIRED = ("id", "doc_id", "audio", "transcript", "instruction", "target")  # what every reader of a split needs


def read_manifest(split_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a split's manifest; a file that is not Parquet, or lacks a column every stage
    reads, is a ValueError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(split_dir) / "manifest.parquet"
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable Parquet manifest ({(str(e).splitlines() or [''])[0][:120]})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (a speechsum manifest has {', '.join(REQUIRED)}, ...; "
                         "see `speechsum synth`)")
    return table.to_pylist()


def schema_markdown() -> str:
    rows = [f"| `{name}` | `{t}` | {doc} |" for name, t, doc in FIELDS]
    return "\n".join(["| field | type | meaning |", "|---|---|---|", *rows])
