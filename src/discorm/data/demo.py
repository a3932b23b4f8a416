"""The built-in demo data set: preference pairs whose preferred answer is objectively better.

Four kinds of pairs, generated deterministically (no download): a correct vs an incorrect arithmetic answer, an
answer that follows an explicit format instruction vs one that breaks it, an on-topic vs an off-topic reply, and a
direct answer vs an evasive one. The train and test splits use disjoint numbers, facts and topics, so held-out
accuracy measures generalisation, not memory. ``demo_rated`` rates single responses of the same kinds on three
attributes (correctness, relevance, format), for the regression and multi-objective heads. ``demo_ranked`` ranks
four responses per prompt (listwise, with ties) and ``demo_graded`` gives pairs a strength on -3..3, with ties.
"""

from __future__ import annotations

import random

from discorm.data import demo_images

TOPICS = {
    "volcanoes": "Volcanoes form where molten rock, called magma, rises through the crust and erupts as lava.",
    "bees": "Bees collect nectar from flowers and turn it into honey, pollinating plants along the way.",
    "the moon": "The Moon orbits the Earth about once every 27 days and its gravity drives the ocean tides.",
    "photosynthesis": "In photosynthesis plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    "glaciers": "Glaciers are slow rivers of ice that form where more snow falls than melts each year.",
    "the heart": "The heart is a muscle that pumps blood through the body, delivering oxygen to every organ.",
    "rainbows": "A rainbow appears when sunlight is refracted and reflected inside raindrops, splitting the colours.",
    "bread": "Bread is made from flour, water and yeast; the yeast produces gas that makes the dough rise.",
    "earthquakes": "Earthquakes happen when tectonic plates slip past each other and release stored energy.",
    "penguins": "Penguins are flightless seabirds that use their wings as flippers to swim after fish.",
    "electricity": "Electricity is the flow of electric charge, usually electrons moving through a conductor.",
    "deserts": "Deserts receive very little rain, and their plants store water to survive long dry spells.",
    "chess": "Chess is a strategy game for two players in which each side tries to checkmate the other king.",
    "vaccines": "Vaccines train the immune system to recognise a germ so the body can fight it off quickly.",
    "tea": "Tea is brewed from the dried leaves of the Camellia sinensis plant steeped in hot water.",
    "the ocean": "The ocean covers about seventy percent of the Earth and holds most of its water.",
    "bicycles": "A bicycle turns the push of the rider's legs on the pedals into motion through a chain.",
    "owls": "Owls are nocturnal birds of prey with silent flight and excellent hearing for hunting at night.",
    "comets": "Comets are balls of ice and dust that grow glowing tails when they pass close to the Sun.",
    "coffee": "Coffee is brewed from roasted coffee beans, and its caffeine helps people feel more alert.",
}
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Cuba": "Havana", "Chile": "Santiago", "Poland": "Warsaw", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Thailand": "Bangkok", "Sweden": "Stockholm", "Russia": "Moscow",
}
EVASIONS = [
    "I'd rather not get into that right now.",
    "That is a complicated question and I cannot really say.",
    "Why do you want to know? Let's talk about something else.",
    "I am not sure anyone can answer that.",
    "You should probably look that up yourself.",
]


def _arithmetic(rng: random.Random, numbers: range) -> dict:
    a, b = rng.choice(numbers), rng.choice(numbers)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    wrong = value + rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
    prompt = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Please calculate {a} {op} {b}."])
    answer = rng.choice(["{a} {op} {b} = {v}.", "The answer is {v}.", "{v}"])
    fill = {"a": a, "op": op, "b": b}
    return {
        "prompt": prompt.format(**fill),
        "chosen": answer.format(v=value, **fill),
        "rejected": answer.format(v=wrong, **fill),
    }


def _format(rng: random.Random, countries: list[str]) -> dict:
    country = rng.choice(countries)
    capital = CAPITALS[country]
    sentence = f"The capital of {country} is {capital}."
    kind = rng.choice(["upper", "one_word", "lower", "list"])
    if kind == "upper":
        prompt = f"Answer in capital letters only: what is the capital of {country}?"
        good, bad = sentence.upper(), sentence
    elif kind == "one_word":
        prompt = f"Reply with one word only. What is the capital of {country}?"
        good, bad = capital, f"{sentence} It is a large city with a long history and many famous sights."
    elif kind == "lower":
        prompt = f"Answer in lowercase letters only: what is the capital of {country}?"
        good, bad = sentence.lower(), sentence.upper()
    else:
        prompt = f"Name the capital of {country} and two of its neighbours as a bulleted list."
        good, bad = f"- {capital}\n- a neighbouring country\n- another neighbour", f"{capital}, and some neighbours."
    return {"prompt": prompt, "chosen": good, "rejected": bad}


def _topic(rng: random.Random, topics: list[str]) -> dict:
    topic, other = rng.sample(topics, 2)
    prompt = rng.choice(["Tell me about {t}.", "Can you explain {t} briefly?", "What should I know about {t}?"])
    return {"prompt": prompt.format(t=topic), "chosen": TOPICS[topic], "rejected": TOPICS[other]}


def _direct(rng: random.Random, topics: list[str]) -> dict:
    topic = rng.choice(topics)
    prompt = rng.choice(["Explain {t} in one sentence.", "Give me one fact about {t}."])
    return {"prompt": prompt.format(t=topic), "chosen": TOPICS[topic], "rejected": rng.choice(EVASIONS)}


def _generate(split: str, seed: int) -> list[tuple[int, dict]]:
    """(kind, pair) for every pair of a split; kinds are 0 arithmetic, 1 format, 2 topic, 3 direct."""
    topics, countries = sorted(TOPICS), sorted(CAPITALS)
    if split == "train":
        rng, count, numbers, topics, countries = random.Random(seed), 400, range(2, 50), topics[:14], countries[:14]
    elif split == "test":
        rng, count, numbers = random.Random(seed + 1), 100, range(50, 99)
        topics, countries = topics[14:], countries[14:]
    else:
        raise ValueError(f"demo split must be 'train' or 'test', got {split!r}")
    makers = [
        lambda: _arithmetic(rng, numbers),
        lambda: _format(rng, countries),
        lambda: _topic(rng, topics),
        lambda: _direct(rng, topics),
    ]
    return [(i % len(makers), makers[i % len(makers)]()) for i in range(count)]


def rows(split: str = "train", seed: int = 0) -> list[dict]:
    """The demo pairs of one split ("train": 400 pairs, "test": 100), in a fixed order."""
    return [pair for _, pair in _generate(split, seed)]


ATTRIBUTES = ("correctness", "relevance", "format")
# Ratings (1-5) of the preferred and of the other response of each kind of pair; None: the rater left it out.
_RATINGS = {
    0: ({"correctness": 5, "relevance": 5}, {"correctness": 1, "relevance": 5}),  # right vs wrong sum
    1: ({"correctness": 5, "format": 5}, {"correctness": 5, "format": 1}),  # follows vs breaks the format
    2: ({"correctness": 5, "relevance": 5}, {"relevance": 1}),  # on vs off topic
    3: ({"correctness": 5, "relevance": 5}, {"relevance": 1, "correctness": None}),  # direct vs evasive
}


def rated_rows(split: str = "train", seed: int = 10) -> list[dict]:
    """The rated demo responses of one split (400 / 100): one response of a demo-style pair, with ratings of
    `correctness`, `relevance` and `format` on [1, 5]; a quarter of the ratings is off by one (rater noise), and
    attributes that do not apply are not rated (`format` only on format instructions). Other prompts than
    `rows` (another seed)."""
    rng = random.Random(seed + 100)
    out = []
    for kind, pair in _generate(split, seed):
        preferred = rng.random() < 0.5
        scores = dict(_RATINGS[kind][0 if preferred else 1])
        for name, value in scores.items():
            if value is not None and rng.random() < 0.25:
                scores[name] = min(5, max(1, value + rng.choice([-1, 1])))
        out.append({"prompt": pair["prompt"], "response": pair["chosen" if preferred else "rejected"],
                    "scores": scores})
    return out


def _others(rng: random.Random, pair: dict, topics: list[str]) -> tuple[str, str]:
    """An off-topic fact and an evasion that differ from the pair's responses."""
    facts = [TOPICS[t] for t in topics if TOPICS[t] not in (pair["chosen"], pair["rejected"])]
    evasions = [e for e in EVASIONS if e not in (pair["chosen"], pair["rejected"])]
    return rng.choice(facts), rng.choice(evasions)


def _split_topics(split: str) -> list[str]:
    return sorted(TOPICS)[:14] if split == "train" else sorted(TOPICS)[14:]


def ranked_rows(split: str = "train", seed: int = 20) -> list[dict]:
    """Lists of four responses per demo prompt (400 / 100), ranked by quality level: the preferred answer (level
    0); the demo's other answer when it attempts the task (a wrong sum, a broken format: level 1); an off-topic
    fact and an evasion (level 2, tied with an off-topic or evasive other answer). Shuffled per row."""
    rng = random.Random(seed + 200)
    out = []
    for kind, pair in _generate(split, seed):
        fact, evasion = _others(rng, pair, _split_topics(split))
        responses = [(pair["chosen"], 0), (pair["rejected"], 1 if kind in (0, 1) else 2), (fact, 2), (evasion, 2)]
        rng.shuffle(responses)
        levels = sorted({level for _, level in responses})
        ranking = [[i for i, (_, level) in enumerate(responses) if level == want] for want in levels]
        out.append({"prompt": pair["prompt"], "responses": [text for text, _ in responses],
                    "ranking": [group[0] if len(group) == 1 else group for group in ranking]})
    return out


def graded_rows(split: str = "train", seed: int = 30) -> list[dict]:
    """Demo pairs with a strength on -3..3 (400 / 100): 3 for an on-topic answer against an evasion or an off-topic
    one, 2 for a right against a wrong sum or a kept against a broken format; a quarter of the rows are ties
    (strength 0: two off-topic facts, or two evasions). A negative strength: the first response is the better."""
    rng = random.Random(seed + 300)
    out = []
    for kind, pair in _generate(split, seed):
        if rng.random() < 0.25:
            fact, evasion = _others(rng, pair, _split_topics(split))
            first, second = (fact, TOPICS[rng.choice([t for t in _split_topics(split) if TOPICS[t] != fact])]) \
                if rng.random() < 0.5 else (evasion, rng.choice([e for e in EVASIONS if e != evasion]))
            out.append({"prompt": pair["prompt"], "chosen": first, "rejected": second, "strength": 0})
            continue
        strength = 2 if kind in (0, 1) else 3
        if rng.random() < 0.5:
            out.append({"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
                        "strength": strength})
        else:  # the better response second: a negative strength
            out.append({"prompt": pair["prompt"], "chosen": pair["rejected"], "rejected": pair["chosen"],
                        "strength": -strength})
    return out


BUILTIN = {"demo": rows, "demo_rated": rated_rows, "demo_ranked": ranked_rows,
           "demo_graded": graded_rows}  # `<name>_test` is the test split of each
BUILTIN_FORMATS = {"demo_rated": "rated", "demo_ranked": "listwise"}  # the others: explicit pairs
BUILTIN_STRENGTH_SCALE = 3.0  # demo_graded's strengths
BUILTIN.update(demo_images.BUILTIN)  # demo_images, demo_images_blank: image-grounded pairs (sharegpt with images)
BUILTIN_FORMATS.update(dict.fromkeys(demo_images.BUILTIN, "sharegpt"))
