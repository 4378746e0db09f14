"""The dataset card (`README.md` in the dataset folder): how it was made and what is in it."""

from __future__ import annotations

import platform
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from speechsum.data import dataset, pools, styles


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _espeak_version() -> str:
    from speechsum.data import tts

    try:
        return tts.espeak_inventory()[2]
    except tts.VoiceError:
        return "not installed"


def _counter_line(c: Counter) -> str:
    return ", ".join(f"{k or '-'} {v}" for k, v in sorted(c.items()))


_SOURCES = {
    "procedural": "procedural English documents built from sampled facts, stored with every item (`facts`)",
    "procedural-multilingual": "procedural es/fr/de documents (test only), English targets",
    "llm": "transcripts a teacher LLM wrote from a topic seed (no structured facts; teacher-written targets)",
    "aclsum": "ACLSum papers (title, abstract, introduction) read aloud by one speaker; targets are the "
              "papers' human challenge / approach / outcome summaries",
    "user": "the user's own recordings",
}
_AUTHORS = {
    "facts-template": "rendered from the document's facts; always passes the fact check",
    "aclsum-human": "written by people (ACLSum); kept whatever the fact check finds (a figure from the "
                    "unread conclusion, typically)",
    "user": "given with the user's recording",
}
_TEACHER_AUTHOR = "the teacher LLM, reading the transcript (neutral speaker labels) and the instruction"


def _sources_section(cfg: dict[str, Any], per_split: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where documents and targets came from, and what the fact check found per author."""
    lines = ["## Sources and target authors", "", "| split | documents by source | items by target author | "
             "items with fact-check findings | teacher targets rejected |", "|---|---|---|---|---|"]
    sources: Counter = Counter()
    authors: Counter = Counter()
    for split, recs in per_split.items():
        docs = Counter(r["source"] for r in {r["doc_id"]: r for r in recs}.values())
        by_author = Counter(r["target_author"] for r in recs if r["target"])
        flagged = Counter(r["target_author"] for r in recs if r.get("target_problems"))
        rejected = sum(bool(r.get("rejected_target")) for r in recs)
        lines.append(f"| {split} | {_counter_line(docs) or '-'} | {_counter_line(by_author) or '-'} | "
                     f"{_counter_line(flagged) or '0'} | {rejected} |")
        sources.update(docs)
        authors.update(by_author)
    lines += [""] + [f"- `{s}`: {_SOURCES.get(s, s)}" for s in sorted(sources)]
    lines += [f"- target author `{a}`: {_AUTHORS.get(a, _TEACHER_AUTHOR)}" for a in sorted(authors)]
    teacher = cfg.get("teacher") or ""
    if teacher or cfg.get("llm_corpus"):
        lines += ["", f"Teacher: `{teacher or '-'}` (teacher_fraction {cfg.get('teacher_fraction', 0)} of the "
                  "procedural items)" + (f"; LLM documents read from `{cfg['llm_corpus']}`" if cfg.get("llm_corpus")
                                         else "") + ". Greedy decoding, answers cached by the full request.",
                  "A teacher target that fails the fact check on a procedural document is replaced by the "
                  "facts-template target and kept in `rejected_target` / `rejected_problems` (usable as a "
                  "preference-data negative). LLM-written documents have no template to fall back on: their "
                  "teacher targets are kept and the findings are in `target_problems`; filter on "
                  "`target_problems == []` to train on clean targets only. The check covers names, places, "
                  "organisations, numbers, weekdays and months; it cannot see a wrong claim made of "
                  "ordinary words."]
    return lines


def write_card(out_dir: Path, cfg: dict[str, Any], per_split: dict[str, list[dict[str, Any]]]) -> Path:
    lines = ["# speechsum synthetic speech-summarization data", "",
             "Made by `speechsum synth` (speechsum.data.synth). Speech is real TTS (espeak-ng, piper), one clip "
             "per sentence joined with pauses, 16 kHz mono FLAC. Every target is fact-checked against its "
             "document (`target_problems`).", "",
             "## Counts", "",
             "| split | documents | items | hours | languages | held-out items (style / paraphrase) |",
             "|---|---|---|---|---|---|"]
    for split, recs in per_split.items():
        docs = {r["doc_id"]: r for r in recs}
        hours = sum(r["duration"] for r in docs.values()) / 3600
        langs = Counter(r["language"] for r in docs.values())
        held = Counter(r["held_out_kind"] for r in recs)
        lines.append(f"| {split} | {len(docs)} | {len(recs)} | {hours:.2f} | {_counter_line(langs)} | "
                     f"{held.get('style', 0)} / {held.get('paraphrase', 0)} |")
    lines += ["", *_sources_section(cfg, per_split)]
    lines += ["", "## Voices", "", "Test voices are disjoint from train voices; dev uses the train voices.", ""]
    for split, recs in per_split.items():
        voices = Counter(v for r in {r["doc_id"]: r for r in recs}.values() for v in r["voices"])
        lines.append(f"- **{split}** ({len(voices)}): {_counter_line(voices) or 'none'}")
    lines += ["", "## Genres and styles", ""]
    for split, recs in per_split.items():
        genres = Counter(r["genre"] for r in {r["doc_id"]: r for r in recs}.values())
        lines.append(f"- **{split}** genres: {_counter_line(genres) or 'none'}")
        lines.append(f"- **{split}** styles: {_counter_line(Counter(r['style'] for r in recs)) or 'none'}")
    lines += ["", f"Held-out styles (never in train/dev): {', '.join(styles.HELD_OUT_STYLES)}. "
              "The last two paraphrases of every other style are also held out "
              "(`held_out_kind = paraphrase`).", "",
              "Entity pools: " + ", ".join(f"{k} {v:,}" for k, v in pools.pool_sizes().items()) + ".", "",
              "## Schema", "",
              "`<split>/manifest.parquet`, one row per item; several items (different instructions) share "
              "one document's audio. Load without speechsum:", "",
              "```python", "import pandas as pd",
              "df = pd.read_parquet('DIR/train/manifest.parquet')  # audio paths are relative to DIR/train",
              "```", "", dataset.schema_markdown(), "",
              "## Versions", "",
              f"- speechsum {_version('speechsum')}, python {platform.python_version()}",
              f"- espeak-ng {_espeak_version()}, piper-tts {_version('piper-tts')}, "
              f"numpy {_version('numpy')}, soundfile {_version('soundfile')}, soxr {_version('soxr')}, "
              f"pyarrow {_version('pyarrow')}",
              "", "## Config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    path = out_dir / "README.md"
    dataset.atomic_write(path, "\n".join(lines).encode())
    return path
