"""Large, deterministic pools of names, places, organisations and topics.

The pools are built in code from short word lists: real first names and surnames combined
with each other and with invented names made of syllables, so a model cannot memorise a
few dozen entities (the issue asks for thousands). Half the people are invented, which also
means a model cannot guess a name from prior knowledge: it has to hear it.

Every pool is a tuple built once at import from fixed lists (no randomness), so a seed picks
the same entity on every machine. Words that are also common English words ("Will", "May",
"Bay") are left out so the fact check in `styles.check_target` can treat any pool word in a
summary as a claimed entity.
"""

from __future__ import annotations

import itertools
import random

FIRST_NAMES = tuple(
    """
    Aaron Abigail Adrian Aisha Alana Alberto Alejandro Alexei Alicia Amara Amelia Anand Andrea Anika
    Anton Arjun Astrid Beatriz Benedikt Bianca Bogdan Bruno Camila Carmen Cecile Chiara Chidi Clara
    Conor Dalia Daniela Darius Deepa Diego Dmitri Dolores Eamon Edith Elena Elif Emeka Emil Enzo Esther
    Fatima Felipe Fiona Florian Freya Gabriel Giulia Goran Greta Hamza Hana Hannah Hector Helga Hiroshi
    Ibrahim Ines Ingrid Irina Isaac Ivan Jakob Jamal Janek Javier Jonas Jorge Josefine Julian Kamal
    Karin Kasia Keiko Kenji Khalid Klaus Lars Layla Leona Liam Lorenzo Lucia Ludmila Magnus Malik
    Marcus Mariana Marisol Marta Mateo Matilda Mehmet Mei Mikhail Milan Mira Nadia Naomi Nikolai Nina
    Noah Nuno Olga Omar Oscar Pablo Paolo Petra Pilar Priya Rafael Rahul Ramon Rania Rashid Renata
    Rohan Rosa Ruben Sabine Samir Sanjay Sara Sebastian Selin Sergio Shira Simone Sofia Stefan Sunita
    Svetlana Tamar Tariq Teresa Thiago Tobias Tomas Ulrich Valentina Vera Viktor Wanjiru Xavier Yara
    Yusuf Zainab Zoltan Agnes Bernard Caroline Derek Eleanor Gordon Harriet Howard Julia Kevin Linda
    Margaret Martin Natalie Patrick Rebecca Simon Stephanie Theresa Vincent Wendy
    """.split()
)

SURNAMES = tuple(
    """
    Abara Adeyemi Alvarez Andersen Arslan Bauer Becker Bergstrom Bianchi Brennan Castillo Chandra
    Chen Costa Dahl Delgado Dubois Duarte Eriksen Esposito Farouk Fischer Fontaine Garcia Gupta Haddad
    Hansen Hartmann Herrera Horvat Ivanova Jansen Kaminski Kapoor Keller Kowalski Kruger Lambert
    Larsen Lindqvist Lopez Lund Mahmoud Marchetti Mendes Moreau Morales Nakamura Navarro Nguyen
    Novak Nowak Okafor Okonkwo Oliveira Osei Papadopoulos Patel Pereira Petrov Quinn Ramirez Rossi
    Sato Schmidt Schneider Silva Sokolov Suzuki Tanaka Teixeira Torres Vargas Vasquez Weber Wojcik
    Yamamoto Yilmaz Zhang Zielinski Ashworth Blackwood Caldwell Donnelly Fairbanks Gallagher
    Harrington Holloway Kensington Lockhart Mcallister Pemberton Redfield Sinclair Thornton Whitaker
    """.split()
)

# Invented names: onset + vowel + coda syllables, two or three per name. Chosen so that espeak-ng
# and piper pronounce them plausibly (no clusters like "tlk").
_ONSETS = "b d f g h k l m n p r s t v z br dr gr kr tr st sh ch th"
_VOWELS = "a e i o u ai ou ea ie"
_CODAS = "- - - n r l s m nd rt"


def _syllables() -> list[str]:
    onsets = _ONSETS.split()
    vowels = _VOWELS.split()
    codas = [c.replace("-", "") for c in _CODAS.split()]
    return [o + v + c for o, v, c in itertools.product(onsets, vowels, codas)]


def _invented(count: int, parts: int, salt: str) -> tuple[str, ...]:
    """`count` distinct invented words of `parts` syllables, deterministic for `salt`."""
    syl = _syllables()
    rng = random.Random(f"pools:{salt}")
    out: dict[str, None] = {}
    while len(out) < count:
        word = "".join(rng.choice(syl) for _ in range(parts))
        if 4 <= len(word) <= 10 and not _awkward(word):
            out[word.capitalize()] = None
    return tuple(out)


def _awkward(word: str) -> bool:
    # triple consonants and doubled vowels across syllables are hard to pronounce and to spell back
    vowels = set("aeiou")
    run = 0
    for ch in word:
        run = run + 1 if ch not in vowels else 0
        if run >= 3:
            return True
    return any(a == b and a in vowels for a, b in zip(word, word[1:]))


INVENTED_FIRST = _invented(1200, 2, "first")
INVENTED_SURNAMES = _invented(2400, 3, "surname")
INVENTED_TOWNS = _invented(900, 2, "town")
INVENTED_WORDS = _invented(900, 2, "brand")  # product / project / company stems

REAL_CITIES = tuple(
    """
    Lisbon Porto Madrid Valencia Seville Lyon Marseille Toulouse Bordeaux Brussels Antwerp Rotterdam
    Utrecht Hamburg Munich Cologne Leipzig Dresden Stuttgart Zurich Geneva Basel Vienna Graz Prague
    Brno Krakow Gdansk Warsaw Budapest Zagreb Ljubljana Belgrade Sofia Bucharest Athens Thessaloniki
    Istanbul Izmir Helsinki Tampere Oslo Bergen Stockholm Gothenburg Copenhagen Aarhus Dublin Cork
    Glasgow Edinburgh Leeds Bristol Manchester Cardiff Belfast Toronto Montreal Calgary Vancouver
    Ottawa Boston Chicago Denver Seattle Portland Austin Houston Atlanta Phoenix Nashville Pittsburgh
    Baltimore Minneapolis Sacramento Tucson Oakland Lagos Accra Nairobi Kampala Kigali Dakar Cairo
    Tunis Casablanca Johannesburg Durban Mumbai Pune Chennai Hyderabad Bangalore Kolkata Lahore Karachi
    Dhaka Colombo Singapore Jakarta Manila Hanoi Bangkok Taipei Osaka Kyoto Sapporo Busan Seoul
    Melbourne Sydney Brisbane Perth Adelaide Auckland Wellington Santiago Lima Bogota Quito Montevideo
    Rosario Curitiba Recife Monterrey Guadalajara
    """.split()
)
_TOWN_FORMS = ("{}", "Port {}", "{}ford", "{}ton", "New {}", "{}burg", "{} Falls")

ROLES = tuple(
    s.strip()
    for s in """
    product manager, engineering lead, data scientist, finance director, head of sales, designer,
    operations manager, legal counsel, research scientist, marketing lead, project coordinator,
    chief of staff, site manager, procurement officer, support lead, quality engineer, analyst,
    head of partnerships, recruiter, security engineer, field technician, editor, producer,
    city councillor, professor, lab manager, nurse manager, logistics planner, accountant, architect
    """.split(",")
)

ORG_SUFFIXES = ("Labs", "Systems", "Logistics", "Health", "Foods", "Energy", "Media", "Robotics",
                "Analytics", "Partners", "Group", "Materials", "Mobility", "Studios", "Bank")
PROJECT_WORDS = tuple(
    """
    Falcon Meridian Harbor Lantern Juniper Cobalt Horizon Willow Granite Atlas Beacon Summit Orchid
    Tundra Saffron Quartz Nimbus Cedar Aurora Helix Mosaic Pioneer Sierra Vertex Ember Delta Zephyr
    """.split()
)
ROOMS = ("the Birch room", "the main boardroom", "the third floor lab", "the Harbor room",
         "the east wing", "the north office", "the training room", "the loading dock office",
         "the studio", "the library annex")

# Subjects a document is about: (noun phrase, a thing that is measured, a unit for counts)
TOPICS = (
    ("the mobile app redesign", "weekly active users", "users"),
    ("the warehouse move", "pallets shipped", "pallets"),
    ("the spring hiring plan", "open positions", "engineers"),
    ("the customer support backlog", "open tickets", "tickets"),
    ("the new billing system", "failed payments", "invoices"),
    ("the solar panel rollout", "installed panels", "panels"),
    ("the clinic scheduling pilot", "missed appointments", "patients"),
    ("the school library renovation", "books catalogued", "volunteers"),
    ("the data center migration", "servers moved", "servers"),
    ("the city bike scheme", "daily rentals", "bikes"),
    ("the product launch", "preorders", "preorders"),
    ("the supplier contract", "delivery delays", "shipments"),
    ("the research grant application", "survey responses", "participants"),
    ("the food bank drive", "meals served", "volunteers"),
    ("the quarterly marketing campaign", "newsletter signups", "signups"),
    ("the factory safety audit", "reported incidents", "inspectors"),
    ("the translation project", "pages translated", "translators"),
    ("the podcast network expansion", "downloads per episode", "episodes"),
    ("the museum exhibition", "visitors", "visitors"),
    ("the river cleanup", "volunteer hours", "volunteers"),
)

# Lecture subjects: (field, concept, a measured quantity)
LECTURE_TOPICS = (
    ("marine biology", "coral bleaching", "reef survey sites"),
    ("economics", "inflation targeting", "central banks"),
    ("computer science", "hash tables", "buckets"),
    ("history", "the printing press", "printed books"),
    ("astronomy", "exoplanet detection", "confirmed planets"),
    ("public health", "vaccine cold chains", "clinics"),
    ("urban planning", "traffic calming", "intersections"),
    ("linguistics", "language contact", "speakers"),
    ("geology", "glacier retreat", "measurement stations"),
    ("materials science", "battery recycling", "cells"),
)


def _cities() -> tuple[str, ...]:
    towns = [form.format(stem) for stem, form in zip(INVENTED_TOWNS, itertools.cycle(_TOWN_FORMS))]
    return REAL_CITIES + tuple(towns)


CITIES = _cities()
ORGS = tuple(
    f"{stem} {suf}" for stem, suf in zip(INVENTED_WORDS + PROJECT_WORDS, itertools.cycle(ORG_SUFFIXES))
)


def person_name(rng: random.Random) -> str:
    """A full name; about half are invented (invented first name or invented surname)."""
    kind = rng.random()
    if kind < 0.5:
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
    if kind < 0.75:
        return f"{rng.choice(FIRST_NAMES)} {rng.choice(INVENTED_SURNAMES)}"
    return f"{rng.choice(INVENTED_FIRST)} {rng.choice(INVENTED_SURNAMES + SURNAMES)}"


def pool_sizes() -> dict[str, int]:
    """How many distinct entities each pool can produce (for the dataset card)."""
    firsts = len(FIRST_NAMES) + len(INVENTED_FIRST)
    return {
        "person_names": len(FIRST_NAMES) * (len(SURNAMES) + len(INVENTED_SURNAMES))
        + len(INVENTED_FIRST) * (len(INVENTED_SURNAMES) + len(SURNAMES)),
        "first_names": firsts,
        "surnames": len(SURNAMES) + len(INVENTED_SURNAMES),
        "places": len(CITIES),
        "organisations": len(ORGS),
    }


def entity_words() -> frozenset[str]:
    """Every capitalised word any pool can put into a document (used by the target fact check)."""
    words: set[str] = set(FIRST_NAMES) | set(SURNAMES) | set(INVENTED_FIRST) | set(INVENTED_SURNAMES)
    for phrase in CITIES + ORGS + PROJECT_WORDS:
        words.update(w for w in phrase.split() if w[:1].isupper())
    # generic words that occur in entity phrases but also in ordinary summaries
    return frozenset(words - {"New", "Port", "Falls", "Group", "Partners", "Bank", "Labs", "Systems",
                              "Logistics", "Health", "Foods", "Energy", "Media", "Robotics", "Analytics",
                              "Materials", "Mobility", "Studios", "Summit", "Delta", "Horizon", "Project"})
