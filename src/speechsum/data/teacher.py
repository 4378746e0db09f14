"""A teacher LLM in the data pipeline: it writes transcripts from topic seeds and summary targets.

Both jobs run in the main process (a local model is loaded once, never in the TTS workers),
through `text_lm.CachedChat`: answers are cached under `<synth cache>/teacher/`, keyed by the
backend identity and the full request, so a re-run or a resumed run asks nothing twice. Decoding
is greedy, so an answer does not depend on which other prompts shared its batch (up to float
rounding under padding); variety comes from the prompts (topic seed, genre, register, speaker
names from the large pools, length).

- `doc_request` + `document_messages` + `parse_document`: a transcript from a topic seed,
  parsed into speaker turns and sentences (each sentence is spoken separately, which gives the
  sentence timestamps). These documents have no structured facts.
- `target_messages`: the teacher reads the transcript (speaker labels, not names: the listener
  of the audio does not get names from labels either) and answers the item's instruction.
- `write_llm_documents`: both steps for a list of requests -> corpus records; `synth` and the
  committed-corpus command (`corpus.py`) share it, so a corpus written once with a strong
  teacher is exactly what `synth` would have made live with that teacher.

What happens to a teacher target that fails the fact check is decided by the caller (see
`synth.build_items` and the dataset card): with a facts-template target to fall back on it is
replaced and kept as `rejected_target`; an LLM-written document has none, so the target is kept
and its findings are in `target_problems`.
"""

from __future__ import annotations

import dataclasses
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from speechsum.data import dataset, pools, styles
from speechsum.data.documents import GENRE_NOUNS, Document, Sentence, document_record
from speechsum.data.factcheck import check_target

Conversation = list[dict[str, str]]

TARGET_MAX_TOKENS = 320  # the longest styles (email, Q&A) stay well under this
DOC_TOKENS_PER_SENTENCE = 40  # budget for a transcript of n sentences, with its speaker labels
MIN_SENTENCES = 3  # fewer than this is not a usable document

# (genre, register, topic): what an LLM-written document is about. The genre decides the form
# (speakers, length), so the same topic seeds give a meeting, a call and a voicemail.
TOPIC_SEEDS: tuple[tuple[str, str, str], ...] = (
    ("meeting", "neutral", "choosing a new supplier for office furniture"),
    ("meeting", "casual", "planning the launch of a customer loyalty app"),
    ("meeting", "formal", "cutting the travel budget for next quarter"),
    ("meeting", "neutral", "moving the company servers to a new hosting provider"),
    ("meeting", "neutral", "reorganising the night shift on a hospital ward"),
    ("meeting", "formal", "preparing a bid for a city bus contract"),
    ("status_call", "casual", "a warehouse software rollout that is two weeks late"),
    ("status_call", "neutral", "the weekly progress of a bridge repair"),
    ("status_call", "neutral", "a marketing campaign that is over budget"),
    ("status_call", "casual", "clearing the bug backlog before a release"),
    ("status_call", "neutral", "hiring summer staff for a chain of ice cream shops"),
    ("status_call", "neutral", "installing solar panels on school roofs"),
    ("interview", "neutral", "a chef opening a second restaurant"),
    ("interview", "formal", "a nurse on changes to hospital night shifts"),
    ("interview", "casual", "the founder of a bicycle repair startup"),
    ("interview", "formal", "a city planner on new bike lanes"),
    ("interview", "neutral", "a researcher who studies sleep and memory"),
    ("interview", "casual", "a teacher who runs a school robotics club"),
    ("podcast", "casual", "why people keep buying houseplants"),
    ("podcast", "casual", "the economics of food delivery apps"),
    ("podcast", "casual", "the history of public libraries"),
    ("podcast", "casual", "training for a first marathon"),
    ("podcast", "casual", "how small museums stay open"),
    ("podcast", "casual", "the rise of board game cafes"),
    ("news_brief", "formal", "a storm that closed roads across the region"),
    ("news_brief", "formal", "a new wing opening at the children's hospital"),
    ("news_brief", "formal", "a rise in public transport fares"),
    ("news_brief", "formal", "a local factory adding jobs"),
    ("news_brief", "formal", "a burst water main downtown"),
    ("news_brief", "formal", "the result of the city budget vote"),
    ("voicemail", "casual", "moving a dentist appointment"),
    ("voicemail", "neutral", "a builder confirming the date of a kitchen repair"),
    ("voicemail", "neutral", "a colleague who needs a report before a deadline"),
    ("voicemail", "neutral", "a landlord about renewing a lease"),
    ("voicemail", "casual", "a school about a missing field trip form"),
    ("voicemail", "formal", "a supplier chasing an unpaid invoice"),
    ("lecture", "neutral", "how vaccines train the immune system"),
    ("lecture", "neutral", "supply and demand in housing markets"),
    ("lecture", "formal", "the basics of plate tectonics"),
    ("lecture", "neutral", "why bridges need expansion joints"),
    ("lecture", "formal", "how a bill becomes law"),
    ("lecture", "neutral", "how compilers turn code into machine instructions"),
)
# (form described to the teacher, speakers (lo, hi), sentences at length_scale 1)
GENRE_FORMS = {
    "meeting": ("a work meeting", (3, 4), 18),
    "status_call": ("a short status call", (2, 3), 12),
    "interview": ("an interview; the first speaker is the interviewer", (2, 2), 16),
    "podcast": ("a podcast episode with two hosts", (2, 2), 16),
    "news_brief": ("a radio news brief read by one presenter", (1, 1), 8),
    "voicemail": ("a voicemail message: one caller, nobody answers", (1, 1), 5),
    "lecture": ("a lecture by one teacher", (1, 1), 14),
}
DOC_SYSTEM = ("You write realistic transcripts of spoken recordings for a speech dataset. Write only the words "
              "people say.")
TARGET_SYSTEM = ("You write reference summaries of recordings from their transcripts. State only what the "
                 "transcript states: never add names, numbers, dates, places or details that are not in it. "
                 "Follow the request exactly, including its format and any length limit. Reply with the summary "
                 "only, without a preamble.")


class TeacherError(RuntimeError):
    """The teacher's answers cannot be used (e.g. no transcript in its output)."""


# ---------------------------------------------------------------------------------------------
# documents


@dataclasses.dataclass(frozen=True)
class DocRequest:
    doc_id: str
    split: str
    index: int
    genre: str
    register: str
    topic: str
    speakers: tuple[str, ...]  # "Maria Lopez (product manager)"
    sentences: int


def doc_request(seed: int, split: str, index: int, length_scale: float = 1.0) -> DocRequest:
    """Everything about LLM document `index` of `split` follows from (seed, split, index)."""
    doc_id = f"{split}-llm-{index:06d}"
    rng = random.Random(f"{seed}:{doc_id}:llm")
    genre, register, topic = rng.choice(TOPIC_SEEDS)
    _, (lo, hi), base = GENRE_FORMS[genre]
    names: list[str] = []
    while len(names) < rng.randint(lo, hi):
        name = pools.person_name(rng)
        if name.split()[0] not in {n.split()[0] for n in names}:
            names.append(name)
    roles = rng.sample(pools.ROLES, len(names))
    n = max(MIN_SENTENCES + 1, round(base * length_scale * rng.uniform(0.7, 1.3)))
    return DocRequest(doc_id, split, index, genre, register, topic,
                      tuple(f"{a} ({r})" for a, r in zip(names, roles)), n)


def document_messages(req: DocRequest, retry: bool = False) -> Conversation:
    form = GENRE_FORMS[req.genre][0]
    casual = " with the fillers of casual speech (um, you know, I mean)" if req.register == "casual" else ""
    lines = [
        f"Write the transcript of {form}, about {req.topic}.",
        f"Speakers: {'; '.join(req.speakers)}.",
        f"Length: about {req.sentences} sentences in total. Register: {req.register}{casual}.",
        "Include concrete details a listener could be asked about: names, amounts, dates or times, decisions "
        "and next steps.",
        "Format: one line per turn, `Name: words spoken`. No title, no narration, no stage directions, "
        "no markdown.",
    ]
    if retry:
        lines.append(f"Write at least {req.sentences} lines, each starting with a speaker's name and a colon.")
    return [{"role": "system", "content": DOC_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


_LABEL = re.compile(r"^([A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,3})\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NOT_SPEAKERS = {"title", "transcript", "date", "time", "location", "subject", "note", "notes", "summary",
                 "topic", "setting", "length", "register", "format", "speakers"}
_ASIDES = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")  # stage directions, "(laughs)"
_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "vs.", "e.g.", "i.e.", "etc.", "approx.", "No.")


def split_sentences(text: str) -> list[str]:
    """Sentence split for TTS: after . ! ? before an upper-case letter or digit, not after 'Dr.'."""
    out: list[str] = []
    for piece in re.split(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z0-9])", text.strip()):
        if out and out[-1].endswith(_ABBREVIATIONS):
            out[-1] += " " + piece
        elif piece:
            out.append(piece)
    return out


def parse_document(req: DocRequest, text: str) -> Document | None:
    """The teacher's transcript as a Document (speaker per `Name:` label), or None if unusable."""
    firsts = [s.split()[0].lower() for s in req.speakers]
    labels: list[str] = []  # speaker index -> label, in order of appearance
    turns: list[tuple[int, str]] = []
    for raw in text.splitlines():
        line = re.sub(r"^[\s>#\-]+", "", raw).replace("**", "").replace("__", "").replace("`", "").strip()
        if not line:
            continue
        m = _LABEL.match(line)
        if m and m.group(1).lower() in _NOT_SPEAKERS:
            continue  # "Title: ...", "Date: ...": not speech
        if m:
            label, body = m.group(1), m.group(2)
            first = label.split()[0].lower()
            key = req.speakers[firsts.index(first)] if first in firsts else label
            if key not in labels:
                labels.append(key)
            who = labels.index(key)
        elif line.endswith(":") and len(line.split()) <= 4:
            continue  # a heading such as "Transcript:"
        else:
            who, body = (turns[-1][0] if turns else 0), line
            if not labels:
                labels.append(req.speakers[0])
        body = re.sub(r"\s+", " ", _ASIDES.sub("", body)).strip().strip('"').strip()
        if re.search(r"[A-Za-z]", body):
            turns.append((who, body))
    sentences: list[Sentence] = []
    seen: set[str] = set()
    for who, body in turns:
        for text in split_sentences(body):
            if not re.search(r"[A-Za-z]", text) or (len(text.split()) >= 4 and text.lower() in seen):
                continue  # small models loop; a long sentence said twice is a loop, not speech
            seen.add(text.lower())
            sentences.append(Sentence(text, text.replace("&", " and "), who))
    if len(sentences) > MIN_SENTENCES and not re.search(r"[.!?\"')]$", sentences[-1].text):
        sentences.pop()  # cut off by the token budget
    if len(sentences) < MIN_SENTENCES:
        return None
    speakers = [label.split(" (")[0] for label in labels]
    return Document(req.doc_id, req.genre, "en", req.register, speakers, sentences, [])


# ---------------------------------------------------------------------------------------------
# targets


def labelled_transcript(doc: Document) -> str:
    """One line per turn with a neutral label (Speaker A, B, ...); one-speaker documents unlabelled."""
    n_speakers = max(s.speaker for s in doc.sentences) + 1
    lines: list[list[str]] = []
    prev = None
    for s in doc.sentences:
        if s.speaker != prev:
            lines.append([f"Speaker {chr(65 + s.speaker % 26)}:"] if n_speakers > 1 else [])
            prev = s.speaker
        lines[-1].append(s.text)
    return "\n".join(" ".join(words) for words in lines)


def target_messages(doc: Document, instruction: str) -> Conversation:
    noun = GENRE_NOUNS.get(doc.genre, "recording")
    user = f"Transcript of a {noun}:\n\n{labelled_transcript(doc)}\n\nRequest: {instruction}"
    return [{"role": "system", "content": TARGET_SYSTEM}, {"role": "user", "content": user}]


_PREAMBLE = re.compile(r"^(?:sure|certainly|okay|here(?:'s| is| are))\b[^\n]*:\s*\n", re.I)


def clean_answer(text: str) -> str:
    """Strip code fences and a 'Sure, here is the summary:' line; the rest is the target."""
    text = text.strip()
    text = re.sub(r"^```\w*\n?|\n?```$", "", text).strip()
    return _PREAMBLE.sub("", text, count=1).strip()


def target_problems(target: str, doc: Document) -> list[str]:
    """The fact check of a teacher target, plus the two ways small teachers fail outright: an
    empty answer and a loop (the same line three times or more)."""
    if not target.strip():
        return ["empty target"]
    problems = check_target(target, doc.transcript, [f.value for f in doc.facts])
    lines = [line.strip().lower() for line in target.splitlines() if len(line.split()) >= 2]
    if lines and max(lines.count(line) for line in lines) >= 3:
        problems.append("the target repeats itself")
    return problems


# ---------------------------------------------------------------------------------------------
# calling the teacher


def open_teacher(spec: str, cache_dir: str | Path):
    """`text_lm.chat_backend` behind the cache, checked: raises ValueError with one line if the
    model cannot be loaded or the endpoint does not answer (before any work starts)."""
    from speechsum.models.registry import ModelError
    from speechsum.models.text_lm import OpenAIChat, RemoteError, chat_backend

    try:
        chat = chat_backend(spec, Path(cache_dir) / "teacher")
    except ModelError as e:
        raise ValueError(str(e)) from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load {spec}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(chat.backend, OpenAIChat):
        b = chat.backend
        probe = OpenAIChat(b.base_url, b.model, b.api_key, timeout=b.timeout, retries=1, backoff=0.5)
        try:
            probe.chat([[{"role": "user", "content": "Say OK."}]], max_new_tokens=1)
        except RemoteError as e:
            raise ValueError(str(e)) from None
    return chat


def ask(chat, conversations: list[Conversation], max_new_tokens: int, batch: int = 8, desc: str = "teacher",
        progress: bool = True, clean: bool = True) -> list[str]:
    """Answers in order. A local model gets length-sorted batches; an endpoint gets `batch`
    concurrent requests. Each answer is cached as soon as its batch is done, so a killed run keeps
    what it paid for. `clean`: strip code fences and a preamble line (`clean_answer`)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from speechsum.models.text_lm import OpenAIChat

    out: list[str] = [""] * len(conversations)
    bar = tqdm(total=len(conversations), desc=desc, unit="answer", disable=not progress or not conversations,
               dynamic_ncols=True, file=sys.stderr)
    try:
        if isinstance(getattr(chat, "backend", chat), OpenAIChat):
            with ThreadPoolExecutor(max(1, batch)) as pool:
                for i, text in enumerate(pool.map(lambda c: chat.chat([c], max_new_tokens)[0], conversations)):
                    out[i] = text
                    bar.update(1)
        else:
            order = sorted(range(len(conversations)), key=lambda i: sum(len(m["content"]) for m in conversations[i]))
            for s in range(0, len(order), batch):
                idx = order[s: s + batch]
                for i, text in zip(idx, chat.chat([conversations[i] for i in idx], max_new_tokens, batch_size=batch)):
                    out[i] = text
                bar.update(len(idx))
    finally:
        bar.close()
    return [clean_answer(t) for t in out] if clean else out


def write_llm_documents(chat, requests: list[DocRequest], *, items_per_doc: dict[str, int],
                        held_out_fraction: dict[str, float], seed: int, batch: int = 8,
                        progress: bool = True) -> list[dict[str, Any]]:
    """Transcripts, then targets for `items_per_doc[split]` instructions each: one record per request
    (`documents.document_record` + split, index, source_id = topic, document_author, items)."""
    start = time.perf_counter()
    texts = _transcripts(chat, requests, False, batch, progress)
    docs = [parse_document(r, t) for r, t in zip(requests, texts)]
    again = [i for i, d in enumerate(docs) if d is None]
    if again:  # one more try with a firmer format reminder (a different prompt: greedy would repeat)
        retry = _transcripts(chat, [requests[i] for i in again], True, batch, progress)
        for i, text in zip(again, retry):
            docs[i] = parse_document(requests[i], text)
            if docs[i] is None:
                raise TeacherError(f"{requests[i].doc_id}: the teacher wrote no usable transcript "
                                   f"(fewer than {MIN_SENTENCES} sentences): {text[:100]!r}")
    plans = []
    for r, d in zip(requests, docs):
        rng = random.Random(f"{seed}:{r.doc_id}:items")
        for k, (style, pid) in enumerate(styles.pick_styles(rng, items_per_doc[r.split], held_out_fraction[r.split])):
            instruction = styles.free_instruction(style, pid, d.genre, random.Random(f"{seed}:{r.doc_id}:{k}"))
            plans.append((r, d, k, style, pid, instruction))
    targets = ask(chat, [target_messages(d, ins) for _, d, _, _, _, ins in plans], TARGET_MAX_TOKENS, batch,
                  "teacher: targets", progress)
    records = {r.doc_id: {**document_record(d), "split": r.split, "index": r.index, "source_id": r.topic,
                          "document_author": chat.identity, "items": []} for r, d in zip(requests, docs)}
    for (r, d, k, style, pid, instruction), target in zip(plans, targets):
        records[r.doc_id]["items"].append(dataset.item_record(
            r.doc_id, k, style, pid, instruction, target, chat.identity, target_problems(target, d)))
    if progress and requests:
        elapsed = time.perf_counter() - start
        print(f"teacher: {len(requests)} documents and {len(plans)} targets in {elapsed:.1f} s "
              f"({elapsed / len(requests):.1f} s per document, cached answers included)", file=sys.stderr)
    return [records[r.doc_id] for r in requests]


def doc_budget(req: DocRequest) -> int:
    """max_new_tokens of a transcript request: rounded up to 8 sentences, so there are few budgets."""
    return -(-req.sentences // 8) * 8 * DOC_TOKENS_PER_SENTENCE


def _transcripts(chat, requests: list[DocRequest], retry: bool, batch: int, progress: bool) -> list[str]:
    """Grouped by token budget: the budget is part of each cached request, so it must depend on
    the request alone, never on which other requests share the call."""
    out = [""] * len(requests)
    for budget in sorted({doc_budget(r) for r in requests}):
        idx = [i for i, r in enumerate(requests) if doc_budget(r) == budget]
        answers = ask(chat, [document_messages(requests[i], retry) for i in idx], budget, batch,
                      f"teacher: documents{' (retry)' if retry else ''}", progress)
        for i, text in zip(idx, answers):
            out[i] = text
    return out


