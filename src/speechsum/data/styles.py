"""Summary styles: paraphrased instructions, held-out flags and targets rendered from facts.

Eleven styles, each with seven paraphrased instructions. Two whole styles (`email`,
`questions_answered`) and the last two paraphrases of every other style never appear in `train`
or `dev`; `test` items say which kind of held-out they are, for the prompt/task-generalization
benchmark. Where a length limit is natural the instruction carries one (`{n}`), and the rendered
target always obeys it.

Targets here are written from a document's facts alone ("facts-template" author), so they can
only state what the document states; `factcheck.check_target` verifies that anyway, and is the
same check a teacher-written target goes through.

A second family, `ASPECT_STYLES` (challenge / approach / outcome, one sentence each), asks for
the three human summaries that ACLSum papers come with (aclsum.py). It is kept out of `STYLES`,
so the held-out style split above and the style sampling of the other sources are unchanged;
its last two paraphrases are held out of train/dev in the same way.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Literal

from speechsum.data.documents import GENRE_NOUNS, Document, Fact

Limit = Literal["", "words", "bullets", "sentences"]


@dataclasses.dataclass(frozen=True)
class Style:
    name: str
    paraphrases: tuple[str, ...]
    limit: Limit = ""  # what `{n}` in a paraphrase counts
    held_out: bool = False  # the whole style is kept out of train/dev
    held_out_paraphrases: int = 2  # the last k paraphrases are kept out of train/dev


STYLES: dict[str, Style] = {s.name: s for s in (
    Style("one_line", (
        "Summarize this {genre} in one sentence of at most {n} words.",
        "Give me a one-line summary of the recording, under {n} words.",
        "In a single sentence (no more than {n} words), what happened in this {genre}?",
        "Sum up the audio in one line.",
        "Write a one-sentence recap of what you just heard.",
        "Boil this {genre} down to a single sentence, {n} words max.",
        "One sentence: what is this recording about and what came out of it?",
    ), limit="words"),
    Style("paragraph", (
        "Summarize the {genre} in a short paragraph.",
        "Write a brief paragraph summarizing this recording, in at most {n} sentences.",
        "Give a concise prose summary of the audio.",
        "Please write a summary paragraph of what was said, no longer than {n} sentences.",
        "Summarize what you heard in a few sentences.",
        "Recap this {genre} as one short paragraph for someone who missed it.",
        "In {n} sentences or fewer, summarize the recording.",
    ), limit="sentences"),
    Style("bullets", (
        "Summarize the {genre} in {n} bullet points.",
        "List the main points of this recording as {n} bullets.",
        "Give me {n} bullet points covering the key content.",
        "What are the {n} most important points? Use bullets.",
        "Write a bulleted summary with exactly {n} items.",
        "Break the audio down into {n} short bullet points.",
        "Key takeaways, as a list of {n} bullets please.",
    ), limit="bullets"),
    Style("key_decisions", (
        "What decisions were made in this {genre}?",
        "List the key decisions from the recording.",
        "Which decisions were agreed? One per line.",
        "Summarize only the decisions that were made.",
        "Give me the decisions, nothing else.",
        "What got decided? List each decision.",
        "Extract every decision announced in the audio.",
    )),
    Style("action_items", (
        "List the action items with their owners and deadlines.",
        "Who has to do what, and by when?",
        "Extract the action items from this {genre}, with the person responsible.",
        "What are the next steps and who owns each one?",
        "Give me a to-do list from the recording, including owners and due dates.",
        "List every task that was assigned, with owner and deadline.",
        "Write down the follow-ups from this {genre}: owner, task, deadline.",
    )),
    Style("email", (
        "Write a short email to a colleague who missed this {genre}, summarizing it.",
        "Draft an email recapping the recording for the team.",
        "Turn this {genre} into a brief follow-up email.",
        "Write an email update based on what was said, with a subject line.",
        "Compose a quick email to a coworker summarizing the audio.",
        "Summarize the recording as an email with a subject line.",
        "Send-ready email: recap this {genre} for people who were not there.",
    ), held_out=True),
    Style("title", (
        "Give this {genre} a title of at most {n} words.",
        "Suggest a short title for the recording (under {n} words).",
        "What would be a good title for this audio?",
        "Write a headline for this {genre}.",
        "Title this recording in no more than {n} words.",
        "Propose a concise title for what you heard.",
        "Name this {genre} in a few words.",
    ), limit="words"),
    Style("tldr", (
        "TL;DR of this {genre}, under {n} words.",
        "Give me the TL;DR.",
        "Too long, didn't listen: summarize it in under {n} words.",
        "Write a TL;DR line for the recording.",
        "Quick TL;DR of the audio please, at most {n} words.",
        "TL;DR?",
        "Start with 'TL;DR:' and summarize the {genre} in {n} words or fewer.",
    ), limit="words"),
    Style("questions_answered", (
        "What questions does this {genre} answer? Give each question with its answer.",
        "Write a few question-and-answer pairs covering the recording.",
        "Summarize the audio as Q&A: questions a listener might ask, with the answers.",
        "List the key questions and answers from this {genre}.",
        "Turn the content of the recording into {n} question-answer pairs.",
        "Give me {n} Q&A pairs that summarize what was said.",
        "Which questions were settled, and how? Format as Q: and A: lines.",
    ), limit="bullets", held_out=True),
    Style("numbers_dates", (
        "List all the numbers, amounts, dates and times mentioned, and what each refers to.",
        "What figures and dates came up in this {genre}?",
        "Extract every number and date from the recording, with context.",
        "Give me the key numbers and deadlines from the audio.",
        "Summarize the {genre} by its numbers: amounts, counts, dates, times.",
        "Which dates, times and amounts were mentioned? One per line.",
        "Pull out the figures and dates, each with what it is about.",
    )),
    Style("people_roles", (
        "Who took part or was mentioned in this {genre}, and what are their roles?",
        "List the people in the recording with their roles where given.",
        "Who is involved? Give names and roles.",
        "Name everyone mentioned in the audio, with roles if stated.",
        "Give me the list of people and what they do.",
        "Which people appear in this {genre}? Include roles.",
        "List participants and anyone referred to, with their roles.",
    )),
)}
# Only for user data with a given summary (style unknown): generic instructions, no limit.
GIVEN_SUMMARY = Style("summary", (
    "Summarize this recording.",
    "Give a summary of the audio.",
    "Please summarize what was said.",
    "What is this recording about? Summarize it.",
    "Write a summary of the {genre}.",
))

# ACLSum's three aspects, each one sentence written by a person (see aclsum.py)
ASPECT_STYLES: dict[str, Style] = {s.name: s for s in (
    Style("challenge", (
        "What problem does this {genre} address? Answer in one sentence.",
        "In one sentence, what is the challenge the speaker is tackling?",
        "State the research problem described in the recording, in a single sentence.",
        "What gap or difficulty motivates this work? One sentence.",
        "Summarize the challenge this {genre} is about in one sentence.",
        "Which problem is the speaker trying to solve? Keep it to one sentence.",
        "One sentence: what issue with existing work is raised here?",
    )),
    Style("approach", (
        "What approach does the speaker propose? Answer in one sentence.",
        "In one sentence, describe the method presented in this {genre}.",
        "Summarize the proposed solution in a single sentence.",
        "How do they tackle the problem? One sentence.",
        "Describe the approach from the recording in one sentence.",
        "What is the core idea of the method? One sentence please.",
        "Explain in one sentence what the authors built or did.",
    )),
    Style("outcome", (
        "What were the results? Answer in one sentence.",
        "In one sentence, what did the work achieve?",
        "Summarize the outcome reported in this {genre} in a single sentence.",
        "What did the experiments show? One sentence.",
        "State the main finding of the recording in one sentence.",
        "How well did it work, in one sentence?",
        "One sentence: what is the key result?",
    )),
)}

HELD_OUT_STYLES = tuple(s.name for s in STYLES.values() if s.held_out)
TRAIN_STYLES = tuple(s.name for s in STYLES.values() if not s.held_out)


def get_style(name: str) -> Style:
    """Any style by its manifest name (summary styles, ACLSum aspects, the user-summary style)."""
    for family in (STYLES, ASPECT_STYLES, {GIVEN_SUMMARY.name: GIVEN_SUMMARY}):
        if name in family:
            return family[name]
    raise KeyError(f"unknown style {name!r}")


def held_out_kind(style: Style, paraphrase_id: int) -> str:
    """'style', 'paraphrase' or '' (seen in training)."""
    if style.held_out:
        return "style"
    if paraphrase_id >= len(style.paraphrases) - style.held_out_paraphrases:
        return "paraphrase"
    return ""


def choose_paraphrase(style: Style, rng: random.Random, allow_held_out: bool) -> int:
    n = len(style.paraphrases)
    if allow_held_out or style is GIVEN_SUMMARY:
        return rng.randrange(n)
    if style.held_out:
        raise ValueError(f"style {style.name} is held out of training")
    return rng.randrange(n - style.held_out_paraphrases)


def pick_paraphrase(style: Style, rng: random.Random, held: bool) -> int:
    """A held-out paraphrase when `held` (and the style is seen), else one the style allows."""
    if held and not style.held_out:
        k = len(style.paraphrases)
        return rng.randrange(k - style.held_out_paraphrases, k)
    return choose_paraphrase(style, rng, allow_held_out=style.held_out)


def pick_styles(rng: random.Random, n_items: int, held_out_fraction: float) -> list[tuple[Style, int]]:
    """(style, paraphrase) for each item of a document, distinct styles.

    With `held_out_fraction` 0 (train/dev) no held-out style or paraphrase can come out; in test,
    each item is held out with that probability, half of them as a whole held-out style.
    """
    seen = [STYLES[n] for n in TRAIN_STYLES]
    out = []
    names_used: set[str] = set()
    for _ in range(n_items):
        held = rng.random() < held_out_fraction
        if held and rng.random() < 0.5:
            pool = [STYLES[n] for n in HELD_OUT_STYLES if n not in names_used]
        else:
            pool = [s for s in seen if s.name not in names_used]
        style = rng.choice(pool or seen)
        names_used.add(style.name)
        out.append((style, pick_paraphrase(style, rng, held)))
    return out


# ---------------------------------------------------------------------------------------------
# rendering targets from facts


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _one(doc: Document, kind: str) -> Fact | None:
    found = doc.of_kind(kind)
    return found[0] if found else None


def _decision_text(f: Fact) -> str:
    return f"agreed to {f.value}" if f.attrs.get("form") == "vp" else f.value


def _action_text(f: Fact) -> str:
    owner, _, rest = f.value.partition(": ")
    return f"{_cap(owner)} will {rest}"


def _lead(doc: Document) -> str:
    """One clause saying what the document is and what it covers."""
    noun = GENRE_NOUNS[doc.genre]
    topics = [f.value for f in doc.of_kind("topic")]
    people = doc.of_kind("person")
    org, project = _one(doc, "org"), _one(doc, "project")
    if doc.genre == "lecture" and topics:
        field = doc.of_kind("topic")[0].attrs.get("field")
        return f"A {field + ' ' if field else ''}lecture on {topics[0]}"
    if doc.genre == "voicemail" and people:
        return f"A voicemail from {people[0].value}{' at ' + org.value if org else ''}"
    if doc.genre == "interview" and len(people) >= 1:
        guest = people[-1]
        role = f", {guest.attrs['role']}" if guest.attrs.get("role") else ""
        return f"An interview with {guest.value}{role}{' at ' + org.value if org else ''}, covering {_join(topics[:3])}"
    about = f" on {project.value}" if project else ""
    at = f" at {org.value}" if org and doc.genre in ("meeting", "status_call") else ""
    article = "An" if noun[0] in "aeiou" else "A"
    return f"{article} {noun}{at}{about} covering {_join(topics[:3]) or 'several topics'}"


def _sentences(doc: Document) -> list[str]:
    out = [_lead(doc) + "."]
    for f in doc.of_kind("decision"):
        out.append(_cap(_decision_text(f)) + ".")
    for f in doc.of_kind("disagreement"):
        out.append(_cap(f.value) + ".")
    for f in doc.of_kind("action"):
        out.append(_action_text(f) + ".")
    nxt = [f for f in doc.of_kind("date", "time") if f.attrs.get("about") in ("next meeting", "next episode")]
    if nxt:
        out.append(f"The {nxt[0].attrs['about']} is on {' at '.join(f.value for f in nxt)}.")
    return out


def _number_lines(doc: Document) -> list[str]:
    kinds = ("money", "count", "percent", "date", "time", "year", "phone")
    return [f"{f.value} ({f.attrs['about']})" if f.attrs.get("about") else f.value for f in doc.of_kind(*kinds)]


def _qa_pairs(doc: Document) -> list[str]:
    pairs = []
    for f in doc.of_kind("decision"):
        answer = f"They agreed to {f.value}" if f.attrs.get("form") == "vp" else _cap(f.value)
        pairs.append(f"Q: What was decided about {f.attrs.get('about', 'it')}?\nA: {answer}.")
    for f in doc.of_kind("action"):
        owner, _, rest = f.value.partition(": ")
        pairs.append(f"Q: Who will {rest.rsplit(' by ', 1)[0]}?\nA: {_cap(owner)}, by {f.attrs.get('deadline', '?')}.")
    for f in doc.of_kind("money", "count", "percent"):
        if f.attrs.get("about"):
            pairs.append(f"Q: What figure was given for {f.attrs['about']}?\nA: {f.value}.")
    return pairs


def _words(text: str) -> int:
    return len(text.split())


def render_target(style: Style, doc: Document, rng: random.Random) -> tuple[str, int | None]:
    """Target text and the `{n}` that the instruction should carry (None when it has no limit)."""
    noun = GENRE_NOUNS[doc.genre]
    sents = _sentences(doc)
    decisions = doc.of_kind("decision")
    actions = doc.of_kind("action")
    name = style.name
    if name == "one_line":
        extra = _decision_text(decisions[0]) if decisions else (_action_text(actions[0]) if actions else "")
        text = _lead(doc) + (f"; {extra[0].lower() + extra[1:]}" if extra else "") + "."
        return text, _round_up(_words(text))
    if name == "paragraph":
        k = rng.randint(min(3, len(sents)), len(sents))
        picked = sents[:1] + sorted(rng.sample(sents[1:], k - 1), key=sents.index) if k > 1 else sents[:1]
        return " ".join(picked), len(picked)
    if name == "bullets":
        items = [_lead(doc)] + [s.rstrip(".") for s in sents[1:]] + _number_lines(doc)
        n = rng.randint(min(3, len(items)), min(6, len(items)))
        return "\n".join(f"- {x}" for x in items[:n]), n
    if name == "key_decisions":
        if not decisions:
            return "No decisions were made.", None
        return "\n".join(f"- {_cap(_decision_text(f))}" for f in decisions), None
    if name == "action_items":
        if not actions:
            return "No action items were assigned.", None
        return "\n".join(f"- {f.value}" for f in actions), None
    if name == "email":
        subject = _title(doc)
        body = " ".join(sents[:4])
        greeting = rng.choice(("Hi,", "Hi all,", "Hello,"))
        sign = rng.choice(("Best,", "Thanks,", "Cheers,"))
        return f"Subject: {subject}\n\n{greeting}\n\nHere is a quick recap of the {noun}. {body}\n\n{sign}", None
    if name == "title":
        text = _title(doc)
        return text, _round_up(_words(text), step=2)
    if name == "tldr":
        extra = _decision_text(decisions[0]) if decisions else ""
        text = "TL;DR: " + _lead(doc) + (f"; {extra}" if extra else "") + "."
        return text, _round_up(_words(text))
    if name == "questions_answered":
        pairs = _qa_pairs(doc) or [f"Q: What is the recording about?\nA: {_lead(doc)}."]
        n = rng.randint(1, min(4, len(pairs)))
        return "\n".join(pairs[:n]), n
    if name == "numbers_dates":
        lines = _number_lines(doc)
        return ("\n".join(f"- {x}" for x in lines) if lines else "No numbers or dates were mentioned."), None
    if name == "people_roles":
        people = doc.of_kind("person")
        if not people:
            return "No people are named.", None
        return "\n".join(f"- {f.value}" + (f", {f.attrs['role']}" if f.attrs.get("role") else "") for f in people), None
    raise ValueError(f"no renderer for style {name!r}")


def _title(doc: Document) -> str:
    topics = [f.value for f in doc.of_kind("topic")]
    noun = _cap(GENRE_NOUNS[doc.genre])
    project = _one(doc, "project")
    subject = project.value if project and doc.genre in ("meeting", "status_call") else (topics[0] if topics else "")
    subject = subject.removeprefix("the ")
    return f"{noun}: {subject}" if subject else noun


def _round_up(words: int, step: int = 5) -> int:
    """A limit a bit above the target's length, on a round number people would write."""
    return int(math.ceil((words + 1) / step) * step)


def instruction_text(style: Style, paraphrase_id: int, doc_genre: str, n: int | None) -> str:
    template = style.paraphrases[paraphrase_id]
    return template.format(genre=GENRE_NOUNS.get(doc_genre, "recording"), n=n if n is not None else "")


# `{n}` for documents without facts (teacher-written targets): a limit people would ask for
FREE_LIMITS = {"one_line": (20, 25, 30), "tldr": (15, 20, 25), "title": (6, 8, 10), "paragraph": (2, 3, 4),
               "bullets": (3, 4, 5), "questions_answered": (2, 3, 4)}


def free_instruction(style: Style, paraphrase_id: int, doc_genre: str, rng: random.Random) -> str:
    """The instruction when no target exists yet to size the limit (the teacher must obey it)."""
    n = None
    if "{n}" in style.paraphrases[paraphrase_id]:
        n = rng.choice(FREE_LIMITS.get(style.name, (USER_LIMITS.get(style.limit, 3),)))
    return instruction_text(style, paraphrase_id, doc_genre, n)



# ------------------------------------------------------------------------------------ user-facing

USER_LIMITS = {"words": 30, "sentences": 3, "bullets": 5}  # defaults for `{n}` when a user picks a style


def style_names() -> list[str]:
    """Style names accepted by `speechsum summarize --style` (hyphens or underscores)."""
    return [name.replace("_", "-") for name in STYLES]


def instruction_for(style: str) -> str:
    """The canonical (first) instruction of a style, as `summarize` asks it."""
    s = STYLES.get(style.replace("-", "_"))
    if s is None:
        raise KeyError(f"unknown style {style!r} (choose from {', '.join(style_names())})")
    n = 10 if s.name == "title" else USER_LIMITS.get(s.limit, 3)  # a 30-word "title" is not a title
    return s.paraphrases[0].format(genre="recording", n=n)
