"""A generated calibration corpus: thousands of varied short texts from a seeded grammar.

The held-out gate needs enough predictions: a text classifier gives one per text, so telling 0.99
agreement from 0.96 takes on the order of a thousand held-out texts, more than a hand-written corpus
holds and more than users often have at hand. Nothing can be downloaded at run time, so the packaged
corpus is the hand-written texts (data/calibration.txt) plus texts made here: statements, questions,
instructions, support requests, reviews, news, letters, dialogue, facts, numbers and code, with
words drawn from broad lists. The same seed gives the same texts everywhere. Texts from the adapter's
own domain are better; these keep the gate decidable without them.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(text.split(", "))


NAMES = _words(
    "Ana Ben Chen Dara Eli Farah Gus Hana Ivan Jo Kemal Lena Mateo Nia Omar Priya Quinn Rosa Sam "
    "Tariq Uma Victor Wen Xavier Yara Zoe Ahmed Beatriz Carlos Dmitri Elena Fatima Grace Hiro "
    "Ingrid Jamal"
)

PLACES = _phrases(
    "the station, the old harbour, the library, the city centre, the airport, the market, "
    "the hospital, the museum, the university, the beach, the mountains, the village, "
    "the factory, the stadium, the office, the river, the park, the bakery, the border, "
    "the farm, the school, the theatre, the bridge"
)

NOUNS = _words(
    "report meeting printer garden contract bicycle recipe invoice window engine battery letter "
    "budget river forest painting camera account password ticket schedule kitchen delivery "
    "server database network update screen keyboard medicine patient vaccine harvest storm "
    "election policy museum concert novel poem experiment telescope satellite planet molecule "
    "protein theorem proof algorithm customer order refund warranty package shipment parcel "
    "bridge tunnel road train flight hotel menu salary loan mortgage market price dataset model "
    "lecture exam course garden fence roof"
)

ADJECTIVES = _words(
    "old new small large quiet busy broken expensive cheap careful slow fast bright dark cold "
    "warm important strange simple difficult modern ancient local foreign private public heavy "
    "light early late friendly angry tired curious famous empty crowded clean dirty safe "
    "dangerous accurate rare"
)

VERBS_PAST = _words(
    "fixed opened closed found lost painted sold bought signed cancelled repaired updated "
    "checked delivered approved rejected studied measured launched tested wrote read moved "
    "cleaned built designed reviewed printed shared deleted installed replaced collected"
)

VERBS = _words(
    "fix open close find check sign send cancel repair update measure test read move clean build "
    "design review print share install replace collect restart download book pay confirm compare"
)

ADVERBS = _words("quickly carefully slowly quietly suddenly finally rarely often already again still")

TIMES = _phrases(
    "on Monday, on Tuesday, on Wednesday, on Thursday, on Friday, at the weekend, this morning, "
    "last night, next week, in March, in the autumn, after lunch, before dawn, at midnight, "
    "yesterday, tomorrow, in 1998, in 2014, every evening, twice a year"
)

SUBJECTS = _words(
    "physics chemistry biology history economics geography music literature mathematics medicine "
    "astronomy geology law philosophy computing statistics engineering architecture"
)

FEELINGS = _words("great terrible fine disappointing excellent surprising awful lovely mediocre perfect")

UNITS = _words("kilometres metres kilograms litres minutes hours days euros dollars percent degrees")

IDENTIFIERS = _words("items total count user name price rows result values data path config")


def _sentence(rng: random.Random) -> str:
    return rng.choice(_GENRES)(rng)


def _pick(rng: random.Random, words) -> str:
    return rng.choice(words)


def _statement(r: random.Random) -> str:
    return (
        f"{_pick(r, NAMES)} {_pick(r, ADVERBS)} {_pick(r, VERBS_PAST)} the {_pick(r, ADJECTIVES)} "
        f"{_pick(r, NOUNS)} near {_pick(r, PLACES)} {_pick(r, TIMES)}."
    )


def _question(r: random.Random) -> str:
    forms = (
        f"How far is it from {_pick(r, PLACES)} to {_pick(r, PLACES)}?",
        f"Why did {_pick(r, NAMES)} {_pick(r, VERBS)} the {_pick(r, NOUNS)} {_pick(r, TIMES)}?",
        f"Where can I {_pick(r, VERBS)} my {_pick(r, NOUNS)}?",
        f"Is the {_pick(r, NOUNS)} at {_pick(r, PLACES)} still {_pick(r, ADJECTIVES)}?",
        f"What does a {_pick(r, NOUNS)} have to do with {_pick(r, SUBJECTS)}?",
        f"Could you tell me when the {_pick(r, NOUNS)} will arrive?",
    )
    return r.choice(forms)


def _instruction(r: random.Random) -> str:
    return (
        f"To {_pick(r, VERBS)} the {_pick(r, NOUNS)}, first {_pick(r, VERBS)} the {_pick(r, ADJECTIVES)} "
        f"{_pick(r, NOUNS)}, then wait {r.randint(2, 30)} {_pick(r, ('seconds', 'minutes'))}."
    )


def _support(r: random.Random) -> str:
    return (
        f"Hello, my {_pick(r, NOUNS)} order #{r.randint(10000, 99999)} arrived {_pick(r, ADJECTIVES)} "
        f"and I would like to {_pick(r, ('return it', 'get a refund', 'exchange it', 'speak to someone'))}."
    )


def _review(r: random.Random) -> str:
    return (
        f"The {_pick(r, NOUNS)} was {_pick(r, FEELINGS)}: {_pick(r, ADJECTIVES)} and "
        f"{_pick(r, ADJECTIVES)}, {r.randint(1, 5)} stars out of 5."
    )


def _news(r: random.Random) -> str:
    return (
        f"Officials in {_pick(r, ('Lisbon', 'Nairobi', 'Osaka', 'Toronto', 'Lima', 'Oslo', 'Cairo'))} "
        f"{_pick(r, VERBS_PAST)} a {_pick(r, ADJECTIVES)} {_pick(r, NOUNS)} plan {_pick(r, TIMES)}, "
        f"costing {r.randint(2, 900)} million {_pick(r, ('euros', 'dollars', 'pounds'))}."
    )


def _letter(r: random.Random) -> str:
    return (
        f"Dear {_pick(r, NAMES)}, thank you for the {_pick(r, NOUNS)}; I will {_pick(r, VERBS)} "
        f"it {_pick(r, TIMES)}. Best wishes, {_pick(r, NAMES)}"
    )


def _dialogue(r: random.Random) -> str:
    return (
        f'"Did you {_pick(r, VERBS)} the {_pick(r, NOUNS)}?" asked {_pick(r, NAMES)}. '
        f'"Not yet," said {_pick(r, NAMES)}, "it is still {_pick(r, ADJECTIVES)}."'
    )


def _fact(r: random.Random) -> str:
    return (
        f"In {_pick(r, SUBJECTS)}, a {_pick(r, NOUNS)} is often compared with a {_pick(r, NOUNS)} "
        f"because both are {_pick(r, ADJECTIVES)}."
    )


def _numbers(r: random.Random) -> str:
    return (
        f"The {_pick(r, NOUNS)} measured {r.randint(1, 999)}.{r.randint(0, 9)} {_pick(r, UNITS)} on "
        f"{r.randint(1, 28)}/{r.randint(1, 12)}/{r.randint(1990, 2030)}, up {r.randint(1, 60)} percent."
    )


def _code(r: random.Random) -> str:
    a, b = r.sample(IDENTIFIERS, 2)
    forms = (
        f"def {_pick(r, VERBS)}_{a}({b}):\n    return [x for x in {b} if x > {r.randint(0, 99)}]",
        f"SELECT {a}, {b} FROM {_pick(r, NOUNS)}s WHERE {a} > {r.randint(1, 500)} ORDER BY {b};",  # noqa: S608
        f"for {a} in {b}:\n    print({a}, len({b}))",
        f"$ git commit -m '{_pick(r, VERBS)} the {_pick(r, NOUNS)}' && git push origin main",
        f"{a} = {{'{b}': {r.randint(0, 100)}, 'ok': {_pick(r, ('True', 'False'))}}}",
    )
    return r.choice(forms)


_GENRES: tuple[Callable[[random.Random], str], ...] = (
    _statement,
    _question,
    _instruction,
    _support,
    _review,
    _news,
    _letter,
    _dialogue,
    _fact,
    _numbers,
    _code,
)


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct texts of one to three sentences, the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 - reproducible texts, not a secret
    seen: set[str] = set()
    texts: list[str] = []
    while len(texts) < count:
        text = " ".join(_sentence(rng) for _ in range(rng.choice((1, 1, 2, 2, 3))))
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts
