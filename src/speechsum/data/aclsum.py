"""ACLSum papers read aloud: real text with human summaries.

ACLSum (Takeshita et al., 2024; `aclsum==0.1.2` on PyPI, MIT) holds ACL Anthology papers split
100 / 50 / 100 (train / val / test), each with its abstract, introduction and conclusion as
sentence lists and three one-sentence summaries written by people: the paper's challenge, its
approach and its outcome. Here a paper becomes a lecture-like document read by one speaker (the
title, the abstract, then introduction sentences up to `MAX_WORDS`) and three items whose
targets are those human summaries (`target_author = aclsum-human`), asked for with the aspect
instructions of `styles.ASPECT_STYLES`. Our train/dev/test take ACLSum's train/val/test.

The wheel is read as a zip and never installed, through the same pinned-SHA-256 download as the
registry weights: the package itself needs Python >= 3.11 and `sienna` only to parse three JSONL
files, and pinning the hash pins the data, not just the version string.

Human summaries are kept whatever the fact check finds (they are the reference); its findings
are recorded in `target_problems`, typically a figure the summary takes from the conclusion,
which is not read aloud.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import re
import zipfile
from pathlib import Path
from typing import Any

from speechsum.data import dataset, styles
from speechsum.data.documents import Document, Sentence
from speechsum.data.factcheck import check_target

AUTHOR = "aclsum-human"
GENRE = "research_talk"
ASPECTS = ("challenge", "approach", "outcome")
# our split -> (ACLSum's file, its number of papers)
SPLITS = {"train": ("train", 100), "dev": ("val", 50), "test": ("test", 100)}
MAX_WORDS = 700  # about 4-5 minutes of speech; the abstract is always read whole


def wheel():
    from speechsum.models.registry import Wheel

    return Wheel("aclsum", "0.1.2", "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213",
                 "aclsum/dataset/train.jsonl")


def wheel_path() -> Path:
    """The verified wheel (downloaded once with `pip download`); raises registry.ModelError."""
    from speechsum.models.registry import download_wheel

    return download_wheel(wheel())


@dataclasses.dataclass(frozen=True)
class Paper:
    id: str
    title: str
    summaries: dict[str, str]
    sections: dict[str, list[str]]


@functools.lru_cache(maxsize=None)
def _read(path: str, member: str) -> tuple[Paper, ...]:
    with zipfile.ZipFile(path) as z:
        lines = z.read(member).decode("utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return tuple(Paper(r["id"], r["title"], dict(r["summary"]), dict(r["sentences"])) for r in rows)


def load_papers(split: str, path: str | Path | None = None) -> list[Paper]:
    """ACLSum's papers for our split (train, dev, test), in the file's order."""
    name, _ = SPLITS[split]
    return list(_read(str(path or wheel_path()), f"aclsum/dataset/{name}.jsonl"))


def pick_papers(split: str, n: int, seed: int, path: str | Path | None = None) -> list[Paper]:
    """n papers of the split in a seeded order (every paper once before any repeats: n <= size)."""
    papers = sorted(load_papers(split, path), key=lambda p: p.id)
    random.Random(f"{seed}:aclsum:{split}").shuffle(papers)
    if n > len(papers):
        raise ValueError(f"ACLSum has {len(papers)} papers for {split}, asked for {n}")
    return papers[:n]


# ---------------------------------------------------------------------------------------------
# text as read aloud

_CITATION = re.compile(r"\s*\((?:[^()]*?\b(?:19|20)\d\d[a-z]?\b[^()]*?)\)")  # "(Lu et al., 2016; ...)"
_NUMERIC_CITATION = re.compile(r"\s*\[\d+(?:\s*[,–-]\s*\d+)*\]")  # "[3, 4]"
_SPOKEN = ((r"\be\.g\.,?", "for example,"), (r"\bi\.e\.,?", "that is,"), (r"\bet al\.", "and colleagues"),
           (r"\bvs\.", "versus"), (r"&", "and"))


def detokenize(text: str) -> str:
    """Undo the PTB-style tokenization of the ACLSum sentences ("( QA ) ." -> "(QA).")."""
    s = text.replace("`` ", '"').replace(" ''", '"').replace("-LRB-", "(").replace("-RRB-", ")")
    s = re.sub(r"\s+([,.;:?!%)\]])", r"\1", s)
    s = re.sub(r"([(\[])\s+", r"\1", s)
    s = re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r'"\s+([^"]*?)\s+"', r'"\1"', s)
    return re.sub(r"\s+", " ", s).strip()


def _merge_unbalanced(sents: list[str]) -> list[str]:
    """ACLSum sometimes splits inside a citation ("( Li et al . , 2019 ;" | "Cadene ... )"): rejoin."""
    out: list[str] = []
    for s in sents:
        if out and out[-1].count("(") > out[-1].count(")"):
            out[-1] += " " + s
        else:
            out.append(s)
    return out


def clean_sentence(raw: str) -> str:
    s = _NUMERIC_CITATION.sub("", _CITATION.sub("", detokenize(raw)))
    return re.sub(r"\s+([,.;:])", r"\1", s).strip()


def spoken_form(text: str) -> str:
    for pattern, repl in _SPOKEN:
        text = re.sub(pattern, repl, text)
    return text


def to_document(paper: Paper, doc_id: str) -> Document:
    """Title, abstract, then whole introduction sentences while the total stays under MAX_WORDS."""
    sentences = [Sentence(f"{paper.title.strip().rstrip('.')}.", f"{spoken_form(paper.title.strip().rstrip('.'))}.", 0)]
    words = 0
    for section in ("abstract", "introduction"):
        for raw in _merge_unbalanced(paper.sections.get(section, [])):
            text = clean_sentence(raw)
            if len(text.split()) < 3 or not re.search(r"[A-Za-z]{3}", text):
                continue  # headings, stray numbers, equation fragments
            n = len(text.split())
            if section != "abstract" and words + n > MAX_WORDS:
                break
            words += n
            sentences.append(Sentence(text, spoken_form(text), 0))
    return Document(doc_id, GENRE, "en", "formal", ["reader"], sentences, [])


def items(paper: Paper, doc: Document, seed: int, held_out_fraction: float) -> list[dict[str, Any]]:
    """One item per aspect: the human summary as target, an aspect instruction."""
    rng = random.Random(f"{seed}:{doc.doc_id}:items")
    out = []
    for k, aspect in enumerate(ASPECTS):
        style = styles.ASPECT_STYLES[aspect]
        pid = styles.pick_paraphrase(style, rng, held=rng.random() < held_out_fraction)
        target = " ".join(paper.summaries[aspect].split())
        out.append(dataset.item_record(doc.doc_id, k, style, pid, styles.instruction_text(style, pid, GENRE, None),
                                       target, AUTHOR, check_target(target, doc.transcript)))
    return out
