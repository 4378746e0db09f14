"""Procedural spoken documents with known facts.

A document is a list of sentences (written transcript form, spoken TTS form, speaker) and the
facts it states. Facts are sampled first (people with roles, amounts, dates, decisions, action
items, disagreements) and then voiced through template sentences, so every fact's written
surface form is guaranteed to be in the transcript and targets can be rendered from facts alone.

Genres share the fact sampler and differ in who speaks, which templates they use, register and
length: `make_document(genre, rng, ...)` is the only entry point; `multilingual.py` holds the
es/fr/de generator.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from typing import Any

from speechsum.data import numbers as num
from speechsum.data import pools
from speechsum.data.numbers import Surface

GENRES = ("meeting", "status_call", "interview", "podcast", "news_brief", "voicemail", "lecture")
GENRE_NOUNS = {"meeting": "meeting", "status_call": "status call", "interview": "interview",
               "podcast": "podcast episode", "news_brief": "news brief", "voicemail": "voicemail",
               "lecture": "lecture",
               "research_talk": "talk"}  # ACLSum papers read aloud (aclsum.py); not a procedural genre
# Register by genre: formal text has no fillers; casual text has many (ASR keeps them verbatim).
REGISTERS = {"meeting": ("neutral", "casual", "formal"), "status_call": ("neutral", "casual"),
             "interview": ("neutral", "formal"), "podcast": ("casual",), "news_brief": ("formal",),
             "voicemail": ("casual", "neutral"), "lecture": ("neutral", "formal")}
DISFLUENCY = {"formal": 0.0, "neutral": 0.04, "casual": 0.1}  # chance of a filler per word gap
_FILLERS = ("um", "uh", "you know", "I mean", "like", "sort of")


@dataclasses.dataclass
class Fact:
    id: str
    kind: str  # person org place room project topic money count percent date time year phone decision action disagreement
    value: str  # canonical form, used verbatim by rendered targets
    mention: str  # written surface form as it appears in the transcript
    attrs: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sentence:
    text: str  # written, as an ASR transcript shows it
    spoken: str  # plain words for the TTS engine
    speaker: int  # index into Document.speakers


@dataclasses.dataclass
class Document:
    doc_id: str
    genre: str
    language: str
    register: str
    speakers: list[str]  # display names; the TTS gives each one a voice
    sentences: list[Sentence]
    facts: list[Fact]

    @property
    def transcript(self) -> str:
        return " ".join(s.text for s in self.sentences)

    def of_kind(self, *kinds: str) -> list[Fact]:
        return [f for f in self.facts if f.kind in kinds]

    def fact(self, fact_id: str) -> Fact:
        return next(f for f in self.facts if f.id == fact_id)

    def to_json(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(f) for f in self.facts]


class Script:
    """Collects sentences and facts while a genre writes its document."""

    def __init__(self, rng: random.Random, register: str):
        self.rng = rng
        self.register = register
        self.sentences: list[Sentence] = []
        self.facts: list[Fact] = []

    def fact(self, kind: str, value: str, mention: str, **attrs: str) -> Fact:
        for f in self.facts:
            if f.kind == kind and f.value == value:
                return f
        f = Fact(f"{kind}:{sum(g.kind == kind for g in self.facts)}", kind, value, mention, dict(attrs))
        self.facts.append(f)
        return f

    def say(self, speaker: int, template: str | tuple[str, ...], **slots: str | Surface) -> None:
        """Append one sentence; `template` alternatives are picked at random, slots stay verbatim."""
        if isinstance(template, tuple):
            template = self.rng.choice(template)
        template = self._disfluent(template)
        written = template.format(**{k: v.written if isinstance(v, Surface) else v for k, v in slots.items()})
        spoken = template.format(**{k: v.spoken if isinstance(v, Surface) else v for k, v in slots.items()})
        self.sentences.append(Sentence(_cap(written), _cap(spoken), speaker))

    def _disfluent(self, template: str) -> str:
        # fillers go only between template words, never inside a slot, so fact mentions stay intact
        rate = DISFLUENCY[self.register]
        if rate == 0:
            return template
        out = []
        for i, word in enumerate(template.split(" ")):
            r = self.rng.random()
            if i == 0 or "{" in out[-1]:
                pass  # keep "<slot> for <slot>"-style phrases that facts quote intact
            elif r < rate:
                out.append(self.rng.choice(_FILLERS) + ",")
            elif r < rate * 1.3 and word.isalpha() and word.islower():
                out.append(f"{word},")  # repetition: "we, we agreed"
            out.append(word)
        return " ".join(out)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _name_parts(name: str) -> tuple[str, str]:
    first, _, last = name.partition(" ")
    return first, last


# ---------------------------------------------------------------------------------------------
# fact sampling shared by the genres


@dataclasses.dataclass
class Cast:
    """The people and setting of one document, already registered as facts."""

    people: list[Fact]
    org: Fact
    city: Fact
    room: Fact
    project: Fact
    base_day: dt.date


def _cast(s: Script, n_people: int) -> Cast:
    rng = s.rng
    names: list[str] = []
    while len(names) < n_people:
        name = pools.person_name(rng)
        # distinct first names too: targets address people by full name but speech uses first names
        if _name_parts(name)[0] not in {_name_parts(n)[0] for n in names}:
            names.append(name)
    roles = rng.sample(pools.ROLES, n_people)
    people = [s.fact("person", n, n, role=r) for n, r in zip(names, roles)]
    org = rng.choice(pools.ORGS)
    city = rng.choice(pools.CITIES)
    room = rng.choice(pools.ROOMS)
    project = f"Project {rng.choice(pools.PROJECT_WORDS)}"
    base = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(900))
    return Cast(people, s.fact("org", org, org), s.fact("place", city, city), s.fact("room", room, room),
                s.fact("project", project, project), base)


def _amount(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.45:
        return rng.randrange(2, 40) * 500
    if kind < 0.8:
        return rng.randrange(1, 100) * 1000 + rng.choice((0, 0, 250, 500))
    return rng.randrange(1, 60) * 100_000


def _money(s: Script, amount: int, about: str) -> Surface:
    surf = num.money(amount, s.rng)
    s.fact("money", num.money_canonical(amount), surf.written, about=about)
    return surf


def _day(s: Script, base: dt.date, about: str, lo: int = 2, hi: int = 45) -> tuple[dt.date, Surface]:
    day = base + dt.timedelta(days=s.rng.randrange(lo, hi))
    surf = num.date(day, s.rng)
    s.fact("date", num.date_canonical(day), surf.written, about=about)
    return day, surf


def _time(s: Script, about: str) -> Surface:
    hour = s.rng.randrange(8, 21)
    minute = s.rng.choice((0, 15, 30, 45, 0, 30, 10, 20, 40, 50, 5, 55))
    surf = num.clock(hour, minute, s.rng)
    s.fact("time", num.clock_canonical(hour, minute), surf.written, about=about)
    return surf


def _count(s: Script, n: int, unit: str, about: str) -> Surface:
    surf = num.count(n, unit, s.rng)
    s.fact("count", f"{n:,} {unit}", surf.written, about=about)
    return surf


def _percent(s: Script, p: int, about: str) -> Surface:
    surf = num.percent(p, s.rng)
    s.fact("percent", f"{p}%", surf.written, about=about)
    return surf


def _topic(s: Script) -> tuple[Fact, str, str]:
    used = {f.value for f in s.facts if f.kind == "topic"}
    phrase, metric, unit = s.rng.choice([t for t in pools.TOPICS if t[0] not in used])
    return s.fact("topic", phrase, phrase), metric, unit


# A decision: (written/spoken phrase with slots, canonical phrase). Slots: money, date, count, org, city.
_DECISIONS = (
    "raise the budget for {topic} to {money}",
    "cap spending on {topic} at {money}",
    "move the deadline for {topic} to {date}",
    "hire {count} for {topic}",
    "switch to {org2} as the supplier for {topic}",
    "run a pilot of {topic} in {city2}",
    "pause {topic} until {date}",
    "approve {money} for {topic}",
)
_TASKS = (
    "send the revised numbers for {topic} to {other}",
    "draft a plan for {topic}",
    "call {org2} about the contract",
    "book {room} for the follow-up",
    "share the slides on {topic} with the team",
    "check the invoices for {topic}",
    "set up a call with the {city2} office",
    "write up the risks for {topic}",
)


def _phrase(s: Script, cast: Cast, template: str, topic: Fact, others: list[Fact], about: str) -> tuple[Surface, str]:
    """Fill a decision/task template: returns (surface phrase, canonical phrase), registering atoms."""
    rng = s.rng
    slots: dict[str, Surface] = {"topic": Surface(topic.mention, topic.mention)}
    canon: dict[str, str] = {"topic": topic.value}
    if "{money}" in template:
        amount = _amount(rng)
        slots["money"], canon["money"] = _money(s, amount, about), num.money_canonical(amount)
    if "{date}" in template:
        day, slots["date"] = _day(s, cast.base_day, about)
        canon["date"] = num.date_canonical(day)
    if "{count}" in template:
        n = rng.randrange(2, 25)
        unit = rng.choice(("engineers", "contractors", "analysts", "drivers", "nurses", "technicians"))
        slots["count"], canon["count"] = _count(s, n, unit, about), f"{n} {unit}"
    if "{org2}" in template:
        org = rng.choice(pools.ORGS)
        s.fact("org", org, org)
        slots["org2"], canon["org2"] = Surface(org, org), org
    if "{city2}" in template:
        city = rng.choice(pools.CITIES)
        s.fact("place", city, city)
        slots["city2"], canon["city2"] = Surface(city, city), city
    if "{room}" in template:
        slots["room"], canon["room"] = Surface(cast.room.mention, cast.room.mention), cast.room.value
    if "{other}" in template:
        other = rng.choice(others)
        first = _name_parts(other.value)[0]
        slots["other"], canon["other"] = Surface(first, first), other.value
    written = template.format(**{k: v.written for k, v in slots.items()})
    spoken = template.format(**{k: v.spoken for k, v in slots.items()})
    return Surface(written, spoken), template.format(**canon)


def _agenda_item(s: Script, cast: Cast, chair: int, talkers: list[int], idx: int) -> None:
    """One topic of a meeting or status call: numbers, maybe a disagreement, a decision, actions."""
    rng = s.rng
    topic, metric, unit = _topic(s)
    about = topic.value
    say = s.say
    ppl = cast.people
    first = [_name_parts(p.value)[0] for p in ppl]
    lead = rng.choice(talkers)
    say(chair, ("Next up is {topic}.", "Let's move on to {topic}.", "Okay, {topic}.",
                "The next item is {topic}.") if idx else
        ("First item is {topic}.", "Let's start with {topic}.", "So the main thing today is {topic}."),
        topic=topic.mention)
    n = rng.randrange(12, 9000)
    say(lead, ("We're at {n} {metric} this week.", "Right now we have {n} {metric}.",
               "The latest figure is {n} {metric}."), n=num.Surface(f"{n:,}", num.words(n)), metric=metric)
    s.fact("count", f"{n:,} {metric}", f"{n:,}", about=about)
    if rng.random() < 0.6:
        p = rng.randrange(3, 95)
        say(lead, ("That's {p} up on last month.", "We're about {p} of the way there.",
                   "Roughly {p} of that is new."), p=_percent(s, p, about))
    if rng.random() < 0.4 and len(talkers) >= 2:
        a, b = rng.sample(talkers, 2)
        amt_a, amt_b = sorted(rng.sample(range(4, 60), 2))
        ma, mb = _money(s, amt_a * 1000, about), _money(s, amt_b * 1000, about)
        say(a, ("I think we can do it for {m}.", "Honestly {m} should be enough.", "I'd keep it at {m}."), m=ma)
        say(b, ("I disagree, {name}, we'll need at least {m}.", "I don't think so, {name}. More like {m}.",
                "{name}, I'd push back on that, it's {m} minimum."), name=first[a], m=mb)
        s.fact("disagreement", f"{ppl[a].value} wanted {num.money_canonical(amt_a * 1000)} for {about}; "
               f"{ppl[b].value} argued for at least {num.money_canonical(amt_b * 1000)}",
               f"{mb.written}", about=about, between=f"{ppl[a].id},{ppl[b].id}")
    phrase, canon = _phrase(s, cast, rng.choice(_DECISIONS), topic, ppl, about)
    say(chair, ("So we've decided to {d}.", "Okay, decision: we {d}.", "Let's agree to {d}.",
                "Then it's settled, we {d}."), d=phrase)
    s.fact("decision", canon, phrase.written, form="vp", about=about)
    for _ in range(rng.choice((0, 1, 1, 2))):
        owner = rng.choice([t for t in talkers if t != chair] or talkers)
        others = [p for i, p in enumerate(ppl) if i != owner]
        task, task_canon = _phrase(s, cast, rng.choice(_TASKS), topic, others, about)
        day, when = _day(s, cast.base_day, f"deadline to {task_canon}", 1, 20)
        say(chair, ("{name}, can you {task} by {when}?", "{name} will {task} by {when}.",
                    "Action for {name}: {task} by {when}."), name=first[owner], task=task, when=when)
        say(owner, ("Sure, will do.", "Yep, I'll take that.", "Okay, no problem.", "Got it."))
        s.fact("action", f"{ppl[owner].value}: {task_canon} by {num.date_canonical(day)}", task.written,
               owner=ppl[owner].id, deadline=num.date_canonical(day), about=about)


# ---------------------------------------------------------------------------------------------
# genres


def _meeting(s: Script, items: int, status: bool = False) -> list[str]:
    rng = s.rng
    cast = _cast(s, rng.randrange(2, 4) if status else rng.randrange(3, 6))
    first = [_name_parts(p.value)[0] for p in cast.people]
    talkers = list(range(len(cast.people)))
    chair = 0
    if status:
        s.say(chair, ("Hi all, quick status call on {project}.", "Okay, let's do the {project} status update.",
                      "Morning everyone, this is the weekly {project} check-in."), project=cast.project.mention)
    else:
        s.say(chair, ("Good morning everyone, thanks for coming to {room}.", "Okay, let's get started, we're in {room} today.",
                      "Hi all, welcome, this is the {org} planning meeting in {room}."),
              room=cast.room.mention, org=cast.org.mention)
        s.say(chair, ("We're here to talk about {project} at {org}.", "This is about {project} for {org}.",
                      "Today is all about {project}, the {org} side of it."),
              project=cast.project.mention, org=cast.org.mention)
    intro = cast.people if rng.random() < 0.7 else cast.people[:1]
    for i, p in enumerate(intro):
        s.say(i, ("I'm {name}, {role}.", "{name} here, I'm the {role}.", "Hi, {name}, {role}, based in {city}."),
              name=p.mention, role=p.attrs["role"], city=cast.city.mention)
    for k in range(items):
        _agenda_item(s, cast, chair, [t for t in talkers if t != chair] or talkers, k)
    if rng.random() < 0.7:
        day, when = _day(s, cast.base_day, "next meeting", 5, 30)
        at = _time(s, "next meeting")
        s.say(chair, ("Next meeting is {when} at {at}.", "We'll meet again on {when}, {at}.",
                      "Let's regroup {when} at {at}."), when=when, at=at)
    s.say(chair, ("Thanks everyone.", "That's it, thanks all.", "Great, thanks, {name}, and everyone."),
          name=first[-1])
    return [p.value for p in cast.people]


def _interview(s: Script, items: int) -> list[str]:
    rng = s.rng
    cast = _cast(s, 2)
    host, guest = cast.people
    g_first = _name_parts(guest.value)[0]
    s.say(0, ("Welcome back. My guest today is {guest}, {role} at {org}.",
              "Joining me today is {guest}, the {role} at {org}."),
          guest=guest.mention, role=guest.attrs["role"], org=cast.org.mention)
    s.say(1, ("Thanks for having me.", "Great to be here.", "Thank you, happy to be here."))
    year = rng.randrange(1985, 2022)
    y = num.year(year)
    s.fact("year", str(year), y.written, about=f"{cast.org.value} founded")
    s.say(0, ("{name}, tell us how {org} started.", "So {name}, where did {org} begin?"),
          name=g_first, org=cast.org.mention)
    s.say(1, ("We started in {city} back in {year}.", "It began in {year}, in a small office in {city}."),
          city=cast.city.mention, year=y)
    n = rng.randrange(8, 4000)
    s.say(1, ("Today we have {n}.", "We've grown to {n} since then."),
          n=_count(s, n, "employees", cast.org.value))
    for k in range(items):
        topic, metric, unit = _topic(s)
        s.say(0, ("What's the story with {topic}?", "Let's talk about {topic}.", "And {topic}, how is that going?"),
              topic=topic.mention)
        m = rng.randrange(50, 20000)
        s.say(1, ("We measure it by {metric}, and we're at {n} right now.",
                  "The key number for us is {metric}. It's {n} at the moment."),
              metric=metric, n=Surface(f"{m:,}", num.words(m)))
        s.fact("count", f"{m:,} {metric}", f"{m:,}", about=topic.value)
        phrase, canon = _phrase(s, cast, rng.choice(_DECISIONS), topic, [host], topic.value)
        s.say(1, ("And we've decided to {d}.", "The plan is to {d}.", "So the board agreed to {d}."), d=phrase)
        s.fact("decision", canon, phrase.written, form="vp", about=topic.value)
    day, when = _day(s, cast.base_day, "results published", 10, 90)
    pub = rng.choice(("publish the results", "share the full results"))
    s.say(1, ("We'll {pub} on {when}.", "We plan to {pub} {when}."), pub=pub, when=when)
    s.fact("action", f"{guest.value}: {pub} by {num.date_canonical(day)}", pub, owner=guest.id,
           deadline=num.date_canonical(day), about="results")
    s.say(0, ("{name}, thanks so much.", "Thank you, {name}, this was great."), name=g_first)
    return [host.value, guest.value]


def _podcast(s: Script, items: int) -> list[str]:
    rng = s.rng
    cast = _cast(s, 2)
    a, b = cast.people
    fa, fb = _name_parts(a.value)[0], _name_parts(b.value)[0]
    s.say(0, ("Hey everybody, welcome back to the show, I'm {a}.", "Hi and welcome, this is {a}."), a=a.mention)
    s.say(1, ("And I'm {b}. Today we're in {city}.", "And I'm {b}, coming to you from {city}."),
          b=b.mention, city=cast.city.mention)
    for k in range(items):
        topic, metric, unit = _topic(s)
        who = k % 2
        s.say(who, ("So {name}, you've been looking into {topic}.", "Okay, {topic}. {name}, go."),
              name=(fb, fa)[who], topic=topic.mention)
        p = rng.randrange(5, 90)
        s.say(1 - who, ("Yeah so apparently {p} of people got it wrong.", "Right, the survey said {p}, which surprised me."),
              p=_percent(s, p, topic.value))
        amount = _amount(rng)
        s.say(1 - who, ("And it cost {org} something like {m}.", "Apparently {org} spent {m} on it."),
              org=cast.org.mention, m=_money(s, amount, topic.value))
        if rng.random() < 0.5:
            phrase, canon = _phrase(s, cast, rng.choice(_DECISIONS[:4]), topic, [a, b], topic.value)
            s.say(who, ("And then they decided to {d}.", "Their answer was to {d}."), d=phrase)
            s.fact("decision", canon, phrase.written, form="vp", about=topic.value, by=cast.org.value)
    day, when = _day(s, cast.base_day, "next episode", 3, 15)
    at = _time(s, "next episode")
    s.say(0, ("Next episode drops {when} at {at}.", "We're back {when}, {at}, see you then."), when=when, at=at)
    return [a.value, b.value]


def _news_brief(s: Script, items: int) -> list[str]:
    rng = s.rng
    cast = _cast(s, 2)
    reader, official = cast.people
    for k in range(items):
        topic, metric, unit = _topic(s)
        city = cast.city if k == 0 else s.fact("place", c := rng.choice(pools.CITIES), c)
        amount = _amount(rng)
        day, when = _day(s, cast.base_day, topic.value)
        m = _money(s, amount, topic.value)
        s.say(0, ("In {city}, officials approved {m} for {topic}.", "{city} has set aside {m} for {topic}."),
              city=city.mention, m=m, topic=topic.mention)
        s.fact("decision", f"{city.value} approved {num.money_canonical(amount)} for {topic.value}",
               f"{m.written} for {topic.mention}", about=topic.value)
        if k == 0:
            s.say(0, ("{name}, {role} at {org}, said the work starts on {when}.",
                      "According to {name}, {role} at {org}, work begins {when}."),
                  name=official.mention, role=official.attrs["role"], org=cast.org.mention, when=when)
        else:
            s.say(0, ("The work is due to start on {when}.", "Work begins {when}."), when=when)
        n = rng.randrange(20, 5000)
        s.say(0, ("The plan covers {n}.", "Officials say it affects {n}."), n=_count(s, n, unit, topic.value))
    s.say(0, ("That's the news for now.", "More at the top of the hour."))
    return [reader.value, official.value]


def _voicemail(s: Script, items: int) -> list[str]:
    rng = s.rng
    cast = _cast(s, 2)
    caller, callee = cast.people
    s.say(0, ("Hi {to}, it's {me} from {org}.", "Hey {to}, {me} here, from {org}."),
          to=_name_parts(callee.value)[0], me=caller.mention, org=cast.org.mention)
    day, when = _day(s, cast.base_day, "rescheduled meeting", 1, 14)
    at = _time(s, "rescheduled meeting")
    moved = rng.choice(("moved the meeting to", "pushed the meeting to"))
    s.say(0, ("I'm calling because we've {moved} {when} at {at}.", "Just a heads up, we {moved} {when}, {at}."),
          moved=moved, when=when, at=at)
    s.fact("decision", f"the meeting moved to {num.date_canonical(day)}", moved, about="meeting")
    s.say(0, ("It'll be in {room}.", "We'll use {room} this time."), room=cast.room.mention)
    topic, metric, unit = _topic(s)
    task, canon = _phrase(s, cast, rng.choice([t for t in _TASKS if "{topic}" in t and "{other}" not in t]),
                          topic, [caller], topic.value)
    dday, dwhen = _day(s, cast.base_day, f"deadline to {canon}", 1, 10)
    s.say(0, ("Could you {task} before {when}?", "If you can, please {task} by {when}."), task=task, when=dwhen)
    s.fact("action", f"{callee.value}: {canon} by {num.date_canonical(dday)}", task.written,
           owner=callee.id, deadline=num.date_canonical(dday), about=topic.value)
    digits = "".join(str(rng.randrange(10)) for _ in range(10))
    ph = num.phone(digits)
    s.fact("phone", ph.written, ph.written, about=caller.value)
    s.say(0, ("Call me back on {ph}.", "My number is {ph}."), ph=ph)
    s.say(0, ("Thanks, bye.", "Okay, talk soon, bye."))
    return [caller.value, callee.value]


def _lecture(s: Script, items: int) -> list[str]:
    rng = s.rng
    cast = _cast(s, 2)
    lecturer, scientist = cast.people
    field, concept, unit = rng.choice(pools.LECTURE_TOPICS)
    s.fact("topic", concept, concept, field=field)
    s.say(0, ("Good afternoon. Today in {field} we look at {concept}.", "Okay, welcome back. This week's {field} topic is {concept}."),
          field=field, concept=concept)
    year = rng.randrange(1850, 2020)
    y = num.year(year)
    s.fact("year", str(year), y.written, about=concept)
    s.say(0, ("The key study came in {year}, from {name} in {city}.", "In {year}, {name}, working in {city}, changed how we think about this."),
          year=y, name=scientist.mention, city=cast.city.mention)
    for k in range(items):
        n = rng.randrange(12, 9000)
        s.say(0, ("They looked at {n}.", "The sample was {n}.", "Their data covered {n}."), n=_count(s, n, unit, concept))
        p = rng.randrange(2, 98)
        s.say(0, ("About {p} showed the effect.", "In {p} of cases the effect was clear.",
                  "The effect showed up in {p} of them."), p=_percent(s, p, concept))
        s.say(0, ("That's the part people tend to forget.", "Keep that number in mind.",
                  "We'll come back to why that matters.", "This is the core idea of today."))
    day, when = _day(s, cast.base_day, "assignment due", 3, 21)
    at = _time(s, "assignment due")
    chapter = rng.randrange(2, 19)
    s.say(0, ("For next time, read chapter {ch} and hand in {ps} by {when} at {at}.",
              "Your assignment: chapter {ch}, and {ps} is due {when}, {at}."),
          ch=Surface(str(chapter), num.words(chapter)), ps="the problem set", when=when, at=at)
    s.fact("count", f"chapter {chapter}", str(chapter), about="reading")
    s.fact("action", f"students: read chapter {chapter} and hand in the problem set by {num.date_canonical(day)}",
           "the problem set", owner="students", deadline=num.date_canonical(day), about="assignment")
    if rng.random() < 0.5:
        eday, ewhen = _day(s, cast.base_day, "exam", 20, 60)
        s.say(0, ("Also, {exam} moves to {when}.", "One more thing: we've moved {exam} to {when}."),
              exam="the exam", when=ewhen)
        s.fact("decision", f"the exam moved to {num.date_canonical(eday)}", "the exam", about="exam")
    s.say(0, ("See you next week.", "That's all for today."))
    return [lecturer.value]


_GENRE_FUNCS = {
    "meeting": _meeting,
    "status_call": lambda s, n: _meeting(s, n, status=True),
    "interview": _interview,
    "podcast": _podcast,
    "news_brief": _news_brief,
    "voicemail": _voicemail,
    "lecture": _lecture,
}
# agenda items per genre (each adds roughly 15-40 s of speech); voicemails stay short
ITEM_RANGE = {"meeting": (1, 5), "status_call": (1, 3), "interview": (1, 4), "podcast": (1, 4),
              "news_brief": (1, 4), "voicemail": (1, 1), "lecture": (1, 6)}


def document_record(doc: Document) -> dict[str, Any]:
    """A document as plain JSON (LLM-written and ACLSum documents travel to the TTS workers and
    into the committed corpus this way)."""
    return {"id": doc.doc_id, "genre": doc.genre, "language": doc.language, "register": doc.register,
            "speakers": list(doc.speakers),
            "sentences": [{"text": s.text, "spoken": s.spoken, "speaker": s.speaker} for s in doc.sentences],
            "facts": doc.to_json()}


def record_document(record: dict[str, Any]) -> Document:
    return Document(record["id"], record["genre"], record.get("language", "en"), record["register"],
                    list(record["speakers"]),
                    [Sentence(s["text"], s["spoken"], int(s["speaker"])) for s in record["sentences"]],
                    [Fact(**f) for f in record.get("facts", [])])


def make_document(doc_id: str, genre: str, rng: random.Random, length_scale: float = 1.0) -> Document:
    """One English document; `length_scale` (0..1] shrinks the number of agenda items."""
    if genre not in _GENRE_FUNCS:
        raise ValueError(f"unknown genre {genre!r} (known: {', '.join(GENRES)})")
    register = rng.choice(REGISTERS[genre])
    s = Script(rng, register)
    lo, hi = ITEM_RANGE[genre]
    items = rng.randint(lo, max(lo, round(lo + (hi - lo) * length_scale)))
    speakers = _GENRE_FUNCS[genre](s, items)
    doc = Document(doc_id, genre, "en", register, speakers, s.sentences, s.facts)
    settle_facts(doc)
    return doc


_CAST_KINDS = ("person", "org", "place", "room", "project")


def settle_facts(doc: Document) -> None:
    """Make the facts say exactly what the transcript reveals, in place.

    The cast is sampled before the genre decides what to voice, so: cast members never mentioned
    are dropped; a person only ever called by first name is known by first name everywhere
    (a surname in a summary would be invented); a role counts only if it was said.
    """
    text = doc.transcript
    renames: dict[str, str] = {}
    kept = []
    for f in doc.facts:
        if f.kind == "person" and f.value not in text:
            first = _name_parts(f.value)[0]
            if first not in text:
                continue
            renames[f.value] = first
            f.value = f.mention = first
            f.attrs.pop("role", None)
        elif f.kind in _CAST_KINDS and f.mention not in text:
            continue
        if f.kind == "person" and f.attrs.get("role") and f.attrs["role"] not in text:
            f.attrs.pop("role")
        kept.append(f)
    for f in kept:
        for full, first in renames.items():
            f.value = f.value.replace(full, first)
            f.attrs = {k: v.replace(full, first) for k, v in f.attrs.items()}
    missing = [f for f in kept if f.mention.lower() not in text.lower()]
    if missing:
        raise AssertionError(f"{doc.doc_id}: generator bug, facts not voiced: {missing}")
    doc.facts = kept
