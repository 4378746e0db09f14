"""A small text corpus of LLM-written documents and their targets, written once by a slow teacher.

    python -m speechsum.data.corpus --teacher qwen2.5-1.5b-instruct \\
        --out data/corpus/llm_documents.jsonl --train 120 --dev 15 --test 30

writes one JSON record per document (the transcript as speaker-tagged sentences, its genre,
register and topic seed, `document_author`, and `items`: instruction, style, target,
`target_author`, fact-check findings). It is text only, so it can be committed; `synth` then
reads it with `llm_corpus: PATH` and makes the speech, instead of running the teacher live.
The records are exactly what `synth` makes live with the same teacher, seed, length_scale,
items_per_doc and test_held_out_fraction (both go through `teacher.write_llm_documents`), and
every answer goes through the same cache, so an interrupted run resumes for free.

Speed, measured here with `qwen2.5-0.5b-instruct` on one thread beside a training run: about
35 s per answer (a document and each of its targets is one answer), so ~1.5 min per document
with two targets; the 1.5B is about three times slower. Use an endpoint
(`--teacher openai:http://HOST:8000/v1#MODEL`, e.g. vLLM: `--batch` concurrent requests) for
anything large. The Qwen registry models are the Coder variants: small ones loop and invent
(the fact check flags what it can: see `target_problems` in the records).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from speechsum.data import dataset, teacher

SPLIT_ORDER = dataset.SPLITS
RECORD_KEYS = ("id", "split", "index", "genre", "register", "speakers", "sentences", "items", "document_author")


class CorpusError(ValueError):
    """The corpus file is missing, malformed or too small for the config; one line."""


def write_corpus(chat, out: str | Path, counts: dict[str, int], *, seed: int = 0, length_scale: float = 1.0,
                 items_per_doc: int = 2, test_held_out_fraction: float = 0.5, batch: int = 8,
                 progress: bool = True) -> list[dict[str, Any]]:
    requests = [teacher.doc_request(seed, split, i, length_scale) for split in SPLIT_ORDER
                for i in range(counts.get(split, 0))]
    records = teacher.write_llm_documents(
        chat, requests, items_per_doc={s: items_per_doc for s in SPLIT_ORDER},
        held_out_fraction={"train": 0.0, "dev": 0.0, "test": test_held_out_fraction}, seed=seed, batch=batch,
        progress=progress)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    dataset.atomic_write(Path(out), text.encode())
    return records


def read_corpus(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Records per split in index order; train/dev records must hold no held-out instruction."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such corpus file (write it with `python -m speechsum.data.corpus`)")
    per_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLIT_ORDER}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}: line {n} is not JSON ({e})") from None
        missing = [k for k in RECORD_KEYS if k not in rec] if isinstance(rec, dict) else ["a JSON object"]
        if missing:
            raise CorpusError(f"{path}: line {n} is not a corpus record (no {missing[0]!r})")
        split, items = rec["split"], rec["items"]
        if split not in per_split:
            raise CorpusError(f"{path}: line {n} has split {split!r}")
        if split != "test" and any(it["held_out"] for it in items):
            raise CorpusError(f"{path}: line {n} is a {split} record with a held-out instruction")
        per_split[split].append(rec)
    for recs in per_split.values():
        recs.sort(key=lambda r: r["index"])
    return per_split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m speechsum.data.corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="registry name, model folder, or openai:BASE_URL#MODEL")
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--train", type=int, default=0)
    ap.add_argument("--dev", type=int, default=0)
    ap.add_argument("--test", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--length-scale", type=float, default=1.0)
    ap.add_argument("--items-per-doc", type=int, default=2)
    ap.add_argument("--test-held-out-fraction", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8, help="local batch size / concurrent endpoint requests")
    ap.add_argument("--cache-dir", default="", help="answer cache root (default: the synth cache)")
    args = ap.parse_args(argv)
    from speechsum.data.synth import default_cache

    counts = {"train": args.train, "dev": args.dev, "test": args.test}
    if sum(counts.values()) <= 0:
        print("corpus: nothing to write (give --train/--dev/--test counts)", file=sys.stderr)
        return 2
    try:
        chat = teacher.open_teacher(args.teacher, args.cache_dir or default_cache())
    except ValueError as e:
        print(f"corpus: --teacher: {e}", file=sys.stderr)
        return 2
    records = write_corpus(chat, args.out, counts, seed=args.seed, length_scale=args.length_scale,
                           items_per_doc=args.items_per_doc, test_held_out_fraction=args.test_held_out_fraction,
                           batch=args.batch)
    flagged = sum(bool(it["target_problems"]) for r in records for it in r["items"])
    print(f"corpus: {len(records)} documents, {sum(len(r['items']) for r in records)} targets "
          f"({flagged} with fact-check findings) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
