"""Does a target state anything its document does not? (hallucination check for targets)

A target may only mention entities and numbers that the document states. "Entities" are the
words our pools can put into a document (names, places, organisations), so a summary that names
a person, place or company from outside the document is caught exactly; numbers are compared
digit for digit (commas ignored), weekdays and months word for word. The allowed material is
the transcript plus the facts' canonical values, because rendered targets use canonical forms
("$2,500") where the speech said "two and a half thousand dollars".

This is deliberately a check of claims, not of wording: it applies unchanged to targets written
by a teacher LLM.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from speechsum.data import pools
from speechsum.data.numbers import MONTHS, WEEKDAYS

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-zÀ-ÿ]+")


@functools.lru_cache(maxsize=1)
def _entity_words() -> frozenset[str]:
    return pools.entity_words() | frozenset(MONTHS) | frozenset(WEEKDAYS)


def _numbers(text: str) -> set[str]:
    return {m.group().replace(",", "").rstrip(".") for m in _NUMBER.finditer(text)}


def check_target(target: str, transcript: str, fact_values: Iterable[str] = ()) -> list[str]:
    """Problems (empty when the target is clean): each names a word or number not in the document."""
    allowed = transcript + " " + " ".join(fact_values)
    allowed_words = set(_WORD.findall(allowed))
    allowed_numbers = _numbers(allowed)
    # "2,500" and "2500" and "2.5k" are one number; allow whole-number forms of decimals we wrote
    allowed_numbers |= {n.split(".")[0] for n in allowed_numbers}
    problems = []
    entities = _entity_words()
    for word in dict.fromkeys(_WORD.findall(target)):
        if word in entities and word not in allowed_words:
            problems.append(f"{word!r} is not in the document")
    for n in sorted(_numbers(target) - allowed_numbers):
        problems.append(f"number {n} is not in the document")
    return problems
