"""Spanish, French and German documents for the zero-shot cross-lingual test split.

A short meeting summary read by one speaker, built from the same kinds of facts as the English
genres. Numbers, dates and times are written with digits: espeak-ng reads digits correctly in
each of these languages, so written and spoken forms are the same text. Fact values stay in
English (canonical dates, "$"-free euro amounts) because targets are English: the check is
whether a model trained on English speech can summarise speech in another language.
"""

from __future__ import annotations

import datetime as dt
import random

from speechsum.data import numbers as num
from speechsum.data import pools
from speechsum.data.documents import Document, Script, settle_facts

LANGUAGES = ("es", "fr", "de")

_T = {
    "es": dict(
        months="enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
        weekdays="lunes martes miércoles jueves viernes sábado domingo",
        date="{weekday} {day} de {month}",
        euros="{n} euros",
        open=("Buenos días a todos, soy {name}, de {org}.", "Hola a todos, aquí {name}, de {org}."),
        where=("Hoy estamos en {city}.", "La reunión de hoy es en {city}."),
        topic=("Primero, {topic}.", "Ahora hablamos de {topic}.", "El siguiente tema es {topic}."),
        metric=("Ya tenemos {n} clientes.", "Este mes llegamos a {n} clientes."),
        money=("El presupuesto actual es de {m}.", "Hasta ahora hemos gastado {m}."),
        decide=("Hemos decidido {d}.", "Entonces acordamos {d}."),
        act=("{name}, por favor, {t} antes del {date}.", "{name} va a {t} antes del {date}."),
        meet=("Nos vemos el {date} a las {time}.", "La próxima reunión es el {date} a las {time}."),
        close=("Gracias a todos.", "Eso es todo, gracias."),
        topics=[("el nuevo almacén", "the new warehouse"), ("la campaña de verano", "the summer campaign"),
                ("la aplicación móvil", "the mobile app"), ("el contrato con el proveedor", "the supplier contract")],
        decisions=[("trasladar el lanzamiento al {date}", "move the launch to {date}"),
                   ("aprobar {m} para el proyecto", "approve {m} for the project"),
                   ("contratar a {n} personas", "hire {n} people"),
                   ("abrir una oficina en {city}", "open an office in {city}")],
        tasks=[("enviar el informe", "send the report"), ("llamar al proveedor", "call the supplier"),
               ("preparar la presentación", "prepare the presentation")],
    ),
    "fr": dict(
        months="janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
        weekdays="lundi mardi mercredi jeudi vendredi samedi dimanche",
        date="{weekday} {day} {month}",
        euros="{n} euros",
        open=("Bonjour à tous, je suis {name}, de {org}.", "Bonjour, ici {name}, de chez {org}."),
        where=("Aujourd'hui nous sommes à {city}.", "La réunion se tient à {city}."),
        topic=("D'abord, {topic}.", "Passons à {topic}.", "Le point suivant, c'est {topic}."),
        metric=("Nous avons déjà {n} clients.", "Ce mois-ci, nous arrivons à {n} clients."),
        money=("Le budget actuel est de {m}.", "Jusqu'ici, nous avons dépensé {m}."),
        decide=("Nous avons décidé de {d}.", "Donc, on est d'accord pour {d}."),
        act=("{name}, merci de {t} avant le {date}.", "{name} va {t} avant le {date}."),
        meet=("On se revoit le {date} à {time}.", "La prochaine réunion est le {date} à {time}."),
        close=("Merci à tous.", "C'est tout, merci."),
        topics=[("le nouvel entrepôt", "the new warehouse"), ("la campagne d'été", "the summer campaign"),
                ("l'application mobile", "the mobile app"), ("le contrat fournisseur", "the supplier contract")],
        decisions=[("repousser le lancement au {date}", "move the launch to {date}"),
                   ("approuver {m} pour le projet", "approve {m} for the project"),
                   ("embaucher {n} personnes", "hire {n} people"),
                   ("ouvrir un bureau à {city}", "open an office in {city}")],
        tasks=[("envoyer le rapport", "send the report"), ("appeler le fournisseur", "call the supplier"),
               ("préparer la présentation", "prepare the presentation")],
    ),
    "de": dict(
        months="Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
        weekdays="Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
        date="{weekday}, {day}. {month}",
        euros="{n} Euro",
        open=("Guten Morgen zusammen, ich bin {name} von {org}.", "Hallo an alle, hier ist {name} von {org}."),
        where=("Heute sind wir in {city}.", "Das Treffen findet in {city} statt."),
        topic=("Zuerst {topic}.", "Jetzt zu {topic}.", "Der nächste Punkt ist {topic}."),
        metric=("Wir haben schon {n} Kunden.", "Diesen Monat sind es {n} Kunden."),
        money=("Das Budget liegt bei {m}.", "Bisher haben wir {m} ausgegeben."),
        decide=("Wir haben beschlossen, {d}.", "Also, wir einigen uns darauf, {d}."),
        act=("{name}, bitte {t} bis {date}.", "{name} wird bis {date} {t}."),
        meet=("Wir sehen uns am {date} um {time}.", "Das nächste Treffen ist am {date} um {time}."),
        close=("Danke an alle.", "Das war's, danke."),
        topics=[("das neue Lager", "the new warehouse"), ("die Sommerkampagne", "the summer campaign"),
                ("die mobile App", "the mobile app"), ("den Liefervertrag", "the supplier contract")],
        decisions=[("den Start auf {date} zu verschieben", "move the launch to {date}"),
                   ("{m} für das Projekt freizugeben", "approve {m} for the project"),
                   ("{n} Leute einzustellen", "hire {n} people"),
                   ("ein Büro in {city} zu eröffnen", "open an office in {city}")],
        tasks=[("den Bericht schicken", "send the report"), ("den Lieferanten anrufen", "call the supplier"),
               ("die Präsentation vorbereiten", "prepare the presentation")],
    ),
}


def _date(s: Script, lang: str, base: dt.date, lo: int, hi: int, about: str) -> tuple[str, str]:
    t = _T[lang]
    day = base + dt.timedelta(days=s.rng.randrange(lo, hi))
    text = t["date"].format(weekday=t["weekdays"].split()[day.weekday()], day=day.day,
                            month=t["months"].split()[day.month - 1])
    s.fact("date", num.date_canonical(day), text, about=about)
    return text, num.date_canonical(day)


def make_document(doc_id: str, language: str, rng: random.Random, length_scale: float = 1.0) -> Document:
    """A one-speaker meeting recap in `language` (es, fr or de)."""
    if language not in _T:
        raise ValueError(f"unsupported language {language!r} (supported: {', '.join(LANGUAGES)})")
    t = _T[language]
    s = Script(rng, "formal")  # no fillers: English fillers would be wrong and ours are English
    me, other = pools.person_name(rng), pools.person_name(rng)
    while other.split()[0] == me.split()[0]:
        other = pools.person_name(rng)
    org, city = rng.choice(pools.ORGS), rng.choice(pools.CITIES)
    base = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(900))
    s.fact("person", me, me)
    s.fact("person", other, other)
    s.fact("org", org, org)
    s.fact("place", city, city)
    s.say(0, t["open"], name=me, org=org)
    s.say(0, t["where"], city=city)
    n_items = rng.randint(1, max(1, min(len(t["topics"]), round(3 * length_scale))))
    for topic, topic_en in rng.sample(t["topics"], n_items):
        s.fact("topic", topic_en, topic)
        s.say(0, t["topic"], topic=topic)
        n = rng.randrange(12, 5000)
        s.fact("count", f"{n} customers", str(n), about=topic_en)
        s.say(0, t["metric"], n=str(n))
        amount = rng.randrange(2, 90) * 500
        euros = t["euros"].format(n=amount)
        s.fact("money", f"{amount:,} euros", euros, about=topic_en)
        s.say(0, t["money"], m=euros)
        dec, dec_en = rng.choice(t["decisions"])
        slots, slots_en = {}, {}
        if "{date}" in dec:
            slots["date"], slots_en["date"] = _date(s, language, base, 5, 60, topic_en)
        if "{m}" in dec:
            amount2 = rng.randrange(2, 90) * 1000
            slots["m"], slots_en["m"] = t["euros"].format(n=amount2), f"{amount2:,} euros"
            s.fact("money", slots_en["m"], slots["m"], about=topic_en)
        if "{n}" in dec:
            hires = rng.randrange(2, 30)
            slots["n"], slots_en["n"] = str(hires), str(hires)
            s.fact("count", f"{hires} people", str(hires), about=topic_en)
        if "{city}" in dec:
            c = rng.choice(pools.CITIES)
            slots["city"] = slots_en["city"] = c
            s.fact("place", c, c)
        phrase = dec.format(**slots)
        s.say(0, t["decide"], d=phrase)
        s.fact("decision", f"{dec_en.format(**slots_en)} ({topic_en})", phrase, form="vp", about=topic_en)
        task, task_en = rng.choice(t["tasks"])
        when, when_en = _date(s, language, base, 1, 20, topic_en)
        owner = rng.choice((me, other))
        first = owner.split()[0]
        s.say(0, t["act"], name=first, t=task, date=when)
        s.fact("action", f"{owner}: {task_en} by {when_en}", task, owner=owner, deadline=when_en, about=topic_en)
    when, _ = _date(s, language, base, 5, 30, "next meeting")
    hour, minute = rng.randrange(8, 19), rng.choice((0, 15, 30, 45))
    clock = f"{hour}:{minute:02d}"
    s.fact("time", num.clock_canonical(hour, minute), clock, about="next meeting")
    s.say(0, t["meet"], date=when, time=clock)
    s.say(0, t["close"])
    doc = Document(doc_id, "meeting", language, "formal", [me], s.sentences, s.facts)
    settle_facts(doc)
    return doc
