"""The SmolLM2 world's data, generated deterministically in lm-eval schemas (the `custom_dataset` of its task YAMLs).

* `smol_arith` (target, gsm8k's schema {question, answer}): one-step arithmetic word problems. The expert answer is
  written the way gsm8k's are (calculator annotations `<<a+b=c>>` and a final `#### N`), a format the instruct model
  never writes: the off-policy teacher. The score is gsm8k's flexible-extract (the last number of the response), so
  the model's own correct answers in its own words count as well.
* `smol_capitals`, `smol_antonyms` (retention, arc_easy's schema {id, question, choices{text,label}, answerKey}):
  4-choice questions scored by log-likelihood.
* `smol_capitals_gen` (retention, generation): the capital named in free text, scored by `contains_answer`.

Every draw comes from a fixed seed: the same docs on every machine, nothing downloaded.
"""
from __future__ import annotations

import random
import re

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "United Kingdom": "London", "Ireland": "Dublin", "Netherlands": "Amsterdam", "Belgium": "Brussels",
    "Austria": "Vienna", "Switzerland": "Bern", "Poland": "Warsaw", "Czech Republic": "Prague",
    "Hungary": "Budapest", "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Denmark": "Copenhagen",
    "Finland": "Helsinki", "Iceland": "Reykjavik", "Russia": "Moscow", "Ukraine": "Kyiv", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Turkey": "Ankara", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Ethiopia": "Addis Ababa", "Nigeria": "Abuja", "Ghana": "Accra", "Morocco": "Rabat",
    "Algeria": "Algiers", "Tunisia": "Tunis", "Senegal": "Dakar", "South Africa": "Pretoria", "Uganda": "Kampala",
    "Japan": "Tokyo", "China": "Beijing", "South Korea": "Seoul", "North Korea": "Pyongyang", "India": "New Delhi",
    "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Nepal": "Kathmandu",
    "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Israel": "Jerusalem", "Jordan": "Amman",
    "Syria": "Damascus", "Lebanon": "Beirut", "Afghanistan": "Kabul", "Mongolia": "Ulaanbaatar",
    "United States": "Washington", "Canada": "Ottawa", "Mexico": "Mexico City", "Cuba": "Havana",
    "Jamaica": "Kingston", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Chile": "Santiago", "Peru": "Lima",
    "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito", "Uruguay": "Montevideo",
    "Paraguay": "Asuncion", "Bolivia": "La Paz", "Australia": "Canberra", "New Zealand": "Wellington",
    "Fiji": "Suva", "Qatar": "Doha", "Kuwait": "Kuwait City", "Oman": "Muscat", "Sri Lanka": "Colombo",
    "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Myanmar": "Naypyidaw", "Kazakhstan": "Astana",
    "Uzbekistan": "Tashkent", "Georgia": "Tbilisi", "Armenia": "Yerevan", "Azerbaijan": "Baku",
    "Lithuania": "Vilnius", "Latvia": "Riga", "Estonia": "Tallinn", "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana", "Albania": "Tirana", "Zimbabwe": "Harare", "Zambia": "Lusaka", "Angola": "Luanda",
    "Tanzania": "Dodoma", "Sudan": "Khartoum", "Libya": "Tripoli", "Mali": "Bamako", "Panama": "Panama City",
}
ANTONYMS = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down", "open": "closed",
    "full": "empty", "strong": "weak", "rich": "poor", "young": "old", "early": "late", "hard": "soft",
    "high": "low", "wet": "dry", "loud": "quiet", "thick": "thin", "heavy": "light", "long": "short",
    "clean": "dirty", "true": "false", "win": "lose", "buy": "sell", "push": "pull", "give": "take",
    "arrive": "leave", "begin": "end", "love": "hate", "accept": "reject", "increase": "decrease",
    "remember": "forget", "question": "answer", "friend": "enemy", "day": "night", "inside": "outside",
    "above": "below", "before": "after", "always": "never", "many": "few", "first": "last", "near": "far",
    "safe": "dangerous", "cheap": "expensive", "easy": "difficult", "wide": "narrow", "deep": "shallow",
    "brave": "cowardly", "polite": "rude", "sharp": "dull", "sweet": "sour", "smooth": "rough", "tight": "loose",
    "awake": "asleep", "alive": "dead", "right": "wrong", "success": "failure", "victory": "defeat",
    "entrance": "exit", "north": "south", "east": "west", "summer": "winter", "laugh": "cry", "rise": "fall",
    "borrow": "lend", "attack": "defend", "import": "export", "maximum": "minimum", "ancient": "modern",
    "generous": "selfish", "guilty": "innocent", "visible": "invisible", "possible": "impossible",
    "public": "private", "natural": "artificial", "male": "female", "majority": "minority", "shout": "whisper",
    "expand": "shrink", "include": "exclude", "permanent": "temporary", "optimist": "pessimist",
    "agree": "disagree", "appear": "disappear", "create": "destroy", "freeze": "melt", "float": "sink",
    "wise": "foolish", "calm": "angry", "humble": "proud", "honest": "dishonest", "fat": "thin",
    "tall": "short", "noisy": "silent", "positive": "negative", "top": "bottom", "front": "back",
    "sunny": "cloudy", "come": "go", "teacher": "student", "solid": "liquid", "vertical": "horizontal",
}
NAMES = ["Tom", "Anna", "Liam", "Maria", "Omar", "Sara", "Ken", "Lucy", "Ravi", "Emma", "Noah", "Mia", "Yuki",
         "Carlos", "Fatima", "Ben", "Chloe", "Ivan", "Leila", "Jack"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells", "stamps", "coins"]
SEED = 20260206


def _arith(rng: random.Random) -> tuple[str, str]:
    """One one-step word problem (add, take away or multiply small numbers) and its gsm8k-style answer.

    One step, not two: the base answers 35% of these right by its own last number (48 drawn, 64 tokens, bf16) but
    6% of two-step ones, where it rambles past its answer; at 35% the on-policy arms have verified answers of
    their own to learn from, and the room to gain is wide.
    """
    name, item, kind = rng.choice(NAMES), rng.choice(ITEMS), rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(3, 20), rng.randint(2, 9)
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        expr, n = f"{a}+{b}", a + b
    elif kind == 1:
        a = rng.randint(8, 25)
        b = rng.randint(2, a - 3)
        q = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
        expr, n = f"{a}-{b}", a - b
    else:
        a, b = rng.randint(2, 6), rng.randint(2, 5)
        q = f"{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have?"
        expr, n = f"{a}*{b}", a * b
    return q, f"{name}: {expr}=<<{expr}={n}>>{n}.\n#### {n}"


def _dataset(splits: dict[str, list[dict]]):
    import datasets
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def arithmetic_docs(n_train: int = 2000, n_test: int = 400) -> dict[str, list[dict]]:
    """gsm8k-schema docs: `train` (expert answers) and `test`, disjoint questions."""
    rng, seen, docs = random.Random(f"{SEED}:arith"), set(), []
    while len(docs) < n_train + n_test:
        q, a = _arith(rng)
        if q not in seen:
            seen.add(q)
            docs.append({"question": q, "answer": a})
    return {"train": docs[:n_train], "test": docs[n_train:]}


def _choice_docs(pairs: dict[str, str], question: str, tag: str) -> list[dict]:
    rng, golds, docs = random.Random(f"{SEED}:{tag}"), sorted(set(pairs.values())), []
    for i, (key, gold) in enumerate(pairs.items()):
        options = rng.sample([g for g in golds if g != gold], 3) + [gold]
        rng.shuffle(options)
        docs.append({"id": f"{tag}-{i}", "question": question.format(key), "answerKey": "ABCD"[options.index(gold)],
                     "choices": {"text": options, "label": list("ABCD")}})
    return docs


def capitals_docs() -> dict[str, list[dict]]:
    """arc_easy-schema docs: the capital of each country among 4 capitals."""
    return {"test": _choice_docs(CAPITALS, "What is the capital of {}?", "capitals")}


def antonyms_docs() -> dict[str, list[dict]]:
    """arc_easy-schema docs: the opposite of each word among 4 words."""
    return {"test": _choice_docs(ANTONYMS, 'Which word means the opposite of "{}"?', "antonyms")}


def capitals_gen_docs() -> dict[str, list[dict]]:
    """{question, answer} docs: name the capital of each country in free text. The `train` split asks the same
    countries in other words (a short-answer target for the CI test's flow, not a held-out skill)."""
    return {"test": [{"question": f"What is the capital of {c}? Answer with the name of the city.", "answer": a}
                     for c, a in CAPITALS.items()],
            "train": [{"question": f"Name the capital city of {c}.", "answer": a} for c, a in CAPITALS.items()]}


# lm-eval calls a task's custom_dataset with the task's metadata as keyword arguments (version, ...): ignored here.
def arithmetic(**_) -> object:
    """smol_arith's dataset."""
    return _dataset(arithmetic_docs())


def capitals(**_) -> object:
    """smol_capitals' dataset."""
    return _dataset(capitals_docs())


def antonyms(**_) -> object:
    """smol_antonyms' dataset."""
    return _dataset(antonyms_docs())


def capitals_gen(**_) -> object:
    """smol_capitals_gen's dataset."""
    return _dataset(capitals_gen_docs())


def contains_answer(doc: dict, results: list[str]) -> dict[str, float]:
    """lm-eval process_results: 1 when the response names the gold city as a whole word (any case), else 0."""
    return {"acc": float(re.search(rf"\b{re.escape(doc['answer'])}\b", results[0], re.I) is not None)}
