"""Word error rate with the usual normalisation (lowercase, punctuation dropped, digits kept).

Used for the alignment gate (transcription by the aligned SpeechLM) and the ASR cascade.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:['.,][a-z0-9]+)*")


def normalize_words(text: str) -> list[str]:
    """Lowercase words; '$2,500' -> ['2,500'], "it's" stays one word, other punctuation dropped."""
    return _WORD.findall(text.lower().replace("’", "'"))


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER: total word edits / total reference words."""
    errors = words = 0
    for r, h in zip(refs, hyps, strict=True):
        rw = normalize_words(r)
        errors += edit_distance(rw, normalize_words(h))
        words += len(rw)
    return errors / max(words, 1)
