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


def write_card(out_dir: Path, cfg: dict[str, Any], per_split: dict[str, list[dict[str, Any]]]) -> Path:
    lines = ["# speechsum synthetic speech-summarization data", "",
             "Made by `speechsum synth` (speechsum.data.synth). Documents are procedural, built from sampled "
             "facts that are stored with every item; targets are rendered from those facts "
             "(`target_author = facts-template`) and fact-checked against the document. Speech is real TTS "
             "(espeak-ng, piper), one clip per sentence joined with pauses, 16 kHz mono FLAC.", "",
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
