"""The user's own recordings in the same dataset format as the synthetic data.

Input is a folder or a manifest of audio + transcript (+ optional summary):

- a CSV, JSONL or Parquet file with columns `audio`, `transcript`, and optionally `summary`,
  `facts`, `id`, `language` (audio paths relative to the manifest's folder), or
- a folder holding such a `manifest.{csv,jsonl,parquet}`, or else audio files (any of
  `AUDIO_SUFFIXES`) each with a `<stem>.txt` transcript and optional `<stem>.summary.txt` and
  `<stem>.facts.json`.

`facts` (a JSON list, in a CSV cell as JSON text) are the recording's key facts, which `eval`
scores every summary against (fact recall, invented claims): objects `{"kind": ..., "value":
...}` with a kind of `speechsum.evaluation.facts.SALIENT_KINDS` (person, place, org, money, date,
time, decision, action, ...), e.g. `{"kind": "person", "value": "Diane"}`,
`{"kind": "money", "value": "$12,500"}`. Without them a recording gets ROUGE, similarity and
style scores only.

Only one target style is possible without a teacher: the given summary, paired with a generic
"summarize this" instruction (style `summary`, author `user`). Items without a summary keep an
empty target, ready for a teacher LLM to write one later. There are no sentence timestamps, so
`sentences` holds one span covering the whole recording.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import re
from pathlib import Path
from typing import Any

from speechsum.audio import SAMPLE_RATE, load_audio
from speechsum.data import dataset, styles

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".webm", ".mkv", ".mov", ".wma")
"""What a folder's audio files may be (speechsum.audio reads each; the last seven through FFmpeg)."""


class UserDataError(ValueError):
    """The user's manifest or folder is unusable; one line naming the file and the problem."""


@dataclasses.dataclass
class UserItem:
    id: str
    audio: Path
    transcript: str
    summary: str | None = None
    language: str = "en"
    facts: list[dict] = dataclasses.field(default_factory=list)


def check_facts(facts: Any, where: str) -> list[dict]:
    """A user's facts as the manifest stores them ({id, kind, value}); UserDataError naming `where`
    when they are not a list of {kind, value} objects of a kind the fact scorer knows."""
    from speechsum.evaluation.facts import SALIENT_KINDS

    if isinstance(facts, str):
        try:
            facts = json.loads(facts) if facts.strip() else []
        except json.JSONDecodeError as e:
            raise UserDataError(f"{where}: facts are not JSON ({e.msg} at character {e.pos})") from None
    if facts is None:
        return []
    if not isinstance(facts, list):
        raise UserDataError(f"{where}: facts must be a JSON list of {{\"kind\", \"value\"}} objects")
    out = []
    for i, f in enumerate(facts):
        if not isinstance(f, dict) or not isinstance(f.get("value"), str) or not f["value"].strip():
            raise UserDataError(f"{where}: fact {i + 1} is not a {{\"kind\", \"value\"}} object with a text value")
        if f.get("kind") not in SALIENT_KINDS:
            raise UserDataError(f"{where}: fact {i + 1} has kind {f.get('kind')!r}; "
                                f"expected one of {', '.join(SALIENT_KINDS)}")
        out.append({"id": f"f{i}", "kind": f["kind"], "value": f["value"].strip()})
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserDataError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
    raise UserDataError(f"{path}: unsupported manifest type (use .csv, .jsonl or .parquet)")


def load_user_manifest(path: str | Path) -> list[UserItem]:
    """Read a user manifest or folder into items (audio is checked later, when converted)."""
    path = Path(path)
    if not path.exists():
        raise UserDataError(f"{path}: no such file or folder")
    if path.is_dir():
        found = [p for p in (path / f"manifest.{s}" for s in ("csv", "jsonl", "parquet")) if p.is_file()]
        if found:
            return load_user_manifest(found[0])
        items = []
        for audio in sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            txt = audio.with_suffix(".txt")
            if not txt.is_file():
                raise UserDataError(f"{audio}: no transcript {txt.name} beside it")
            summ = audio.with_suffix(".summary.txt")
            facts = audio.with_suffix(".facts.json")
            items.append(UserItem(audio.stem, audio, txt.read_text(encoding="utf-8").strip(),
                                  summ.read_text(encoding="utf-8").strip() if summ.is_file() else None,
                                  facts=check_facts(facts.read_text(encoding="utf-8"), str(facts))
                                  if facts.is_file() else []))
        if not items:
            raise UserDataError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) and no manifest")
        return _unique(items, path)
    items = []
    for i, row in enumerate(_rows(path)):
        missing = [c for c in ("audio", "transcript") if not row.get(c)]
        if missing:
            raise UserDataError(f"{path}: row {i + 1} has no {missing[0]!r}")
        audio = Path(str(row["audio"]))
        audio = audio if audio.is_absolute() else path.parent / audio
        summary = row.get("summary") or None
        items.append(UserItem(str(row.get("id") or audio.stem), audio, str(row["transcript"]).strip(),
                              str(summary).strip() if summary else None, str(row.get("language") or "en"),
                              check_facts(row.get("facts"), f"{path}: row {i + 1}")))
    if not items:
        raise UserDataError(f"{path}: the manifest has no rows")
    return _unique(items, path)


def _unique(items: list[UserItem], where: Path) -> list[UserItem]:
    seen: set[str] = set()
    for it in items:
        it.id = re.sub(r"[^A-Za-z0-9_.-]+", "_", it.id)
        if it.id in seen:
            raise UserDataError(f"{where}: duplicate id {it.id!r}")
        seen.add(it.id)
    return items


def convert_user_data(path: str | Path, out_dir: str | Path, split: str = "test", seed: int = 0) -> dict[str, int]:
    """Write the user's data as `<out_dir>/<split>/` in the synthetic format; returns counts."""
    import soundfile as sf

    if split not in dataset.SPLITS:
        raise UserDataError(f"{split}: not a split ({', '.join(dataset.SPLITS)})")
    items = load_user_manifest(path)
    split_dir = Path(out_dir) / split
    records = []
    for it in items:
        samples = load_audio(it.audio)  # AudioError names the file and the problem
        rel = f"audio/{it.id}.flac"
        buf = io.BytesIO()
        sf.write(buf, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        dataset.atomic_write(split_dir / rel, buf.getvalue())
        duration = len(samples) / SAMPLE_RATE
        rng = random.Random(f"{seed}:{it.id}")
        pid = rng.randrange(len(styles.GIVEN_SUMMARY.paraphrases)) if it.summary else -1
        records.append({
            "id": f"{it.id}-0", "doc_id": it.id, "split": split, "audio": rel, "duration": duration,
            "language": it.language, "voice": "", "voices": [], "speed": 1.0, "genre": "user", "register": "",
            "transcript": it.transcript,
            "sentences": [{"text": it.transcript, "start": 0.0, "end": duration, "speaker": 0}],
            "instruction": styles.instruction_text(styles.GIVEN_SUMMARY, pid, "user", None) if it.summary else "",
            "style": styles.GIVEN_SUMMARY.name if it.summary else "", "paraphrase_id": pid,
            "held_out": False, "held_out_kind": "", "target": it.summary or "",
            "target_author": "user" if it.summary else "", "target_problems": [], "rejected_target": "",
            "rejected_problems": [], "facts": json.dumps(it.facts), "source": "user", "source_id": it.id,
        })
    dataset.write_manifest(split_dir, records)
    from speechsum.data.card import write_card

    write_card(Path(out_dir), {"user_data": str(path), "split": split, "seed": seed}, {split: records})
    return {"items": len(records), "with_summary": sum(bool(r["target"]) for r in records),
            "with_facts": sum(bool(it.facts) for it in items)}
