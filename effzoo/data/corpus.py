"""The embedded default corpus: English paragraphs written for effzoo (``effzoo/corpus/*.txt``, one
document per blank-line-separated paragraph) plus deterministic generated documents (arithmetic,
units, calendars, comparisons, short stories). Small, license-clean, no download."""
from __future__ import annotations

import functools
import random
from importlib import resources
from pathlib import Path

import numpy as np

from .dataset import TokenDataset
from .manifest import shard_dtype
from .tokenizers import load_tokenizer

GENERATED_DOCUMENTS = 800
VAL_EVERY = 20  # every 20th document is validation

_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = ("January February March April May June July August September October November December").split()
# Things in increasing typical size, so comparisons are true.
_SIZES = ("grain of sand", "ant", "bee", "mouse", "sparrow", "cat", "dog", "child", "horse", "car",
          "elephant", "bus", "whale", "house", "ship", "mountain")
_UNITS = (("kilometre", "metres", 1000), ("metre", "centimetres", 100), ("hour", "minutes", 60),
          ("minute", "seconds", 60), ("kilogram", "grams", 1000), ("day", "hours", 24), ("week", "days", 7),
          ("litre", "millilitres", 1000), ("year", "months", 12))
_NAMES = "Ana Ben Chen Dara Eli Fatima Goran Hana Ivan Jun Kemal Lena Mateo Nora Omar Priya Ravi Sofia Tomas Yuki".split()
_PLACES = ("market", "library", "park", "station", "bakery", "school", "harbour", "museum", "garden", "clinic")
_ITEMS = ("bread", "apples", "a notebook", "rice", "a lamp", "tea", "a map", "onions", "a bicycle bell", "soap")
_FEELINGS = ("happy", "tired", "curious", "calm", "surprised", "proud")
_WEATHER = ("It was raining softly.", "The sun was bright and warm.", "A cold wind came from the north.",
            "The sky was grey but dry.", "Fog covered the streets in the morning.")


def _word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{a} plus {b} equals {a + b}."
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return f"{a} minus {b} equals {a - b}."
    if kind == 2:
        return f"{a} times {b} is {a * b}."
    return f"{_word(a).capitalize()} and {_word(b)} make {a + b}."


def _unit(rng: random.Random) -> str:
    big, small, factor = rng.choice(_UNITS)
    n = rng.randint(1, 9)
    return f"{n} {big}{'s' if n > 1 else ''} {'are' if n > 1 else 'is'} {n * factor} {small}."


def _calendar(rng: random.Random) -> str:
    if rng.random() < 0.5:
        i = rng.randrange(7)
        return f"The day after {_DAYS[i]} is {_DAYS[(i + 1) % 7]}."
    i = rng.randrange(12)
    return f"{_MONTHS[i]} comes before {_MONTHS[(i + 1) % 12]}."


def _compare(rng: random.Random) -> str:
    i, j = sorted(rng.sample(range(len(_SIZES)), 2))
    if rng.random() < 0.5:
        return f"A {_SIZES[j]} is larger than a {_SIZES[i]}."
    return f"A {_SIZES[i]} is smaller than a {_SIZES[j]}."


def _story(rng: random.Random) -> str:
    name, friend = rng.sample(_NAMES, 2)
    place, item = rng.choice(_PLACES), rng.choice(_ITEMS)
    day = rng.choice(_DAYS)
    count = rng.randint(2, 9)
    return (f"On {day}, {name} walked to the {place} to buy {item}. {rng.choice(_WEATHER)} "
            f"At the {place}, {name} met {friend}, and they talked for {_word(count)} minutes. "
            f"{friend} felt {rng.choice(_FEELINGS)} and {name} went home {rng.choice(_FEELINGS)}.")


def generated_documents(count: int = GENERATED_DOCUMENTS, seed: int = 1234) -> list[str]:
    """``count`` deterministic documents of simple, regular, true sentences."""
    rng = random.Random(seed)
    makers = (_arithmetic, _unit, _calendar, _compare)
    docs = []
    for _ in range(count):
        if rng.random() < 0.35:
            docs.append(" ".join(_story(rng) for _ in range(rng.randint(1, 2))))
        else:
            maker = rng.choice(makers)
            docs.append(" ".join(maker(rng) for _ in range(rng.randint(4, 10))))
    return docs


def written_documents() -> list[str]:
    """The hand-written paragraphs shipped in ``effzoo/corpus/*.txt``, one per blank-line block."""
    root = resources.files("effzoo") / "corpus"
    docs: list[str] = []
    for name in sorted(p.name for p in root.iterdir() if p.name.endswith(".txt")):
        text = (root / name).read_text(encoding="utf-8")
        docs += [" ".join(block.split()) for block in text.split("\n\n") if block.strip()]
    return docs


@functools.lru_cache(maxsize=1)
def corpus_documents() -> tuple[str, ...]:
    """Written and generated documents, interleaved deterministically."""
    written, generated = written_documents(), generated_documents()
    mixed = written + generated
    random.Random(0).shuffle(mixed)
    return tuple(mixed)


def write_corpus(path: str | Path) -> Path:
    """Write the embedded corpus as a text file (documents separated by blank lines)."""
    from ..atomic import write_text

    return write_text(path, "\n\n".join(corpus_documents()) + "\n")


@functools.lru_cache(maxsize=8)
def _embedded(spec: str) -> TokenDataset:
    tok = load_tokenizer(spec)
    parts: dict[str, list[int]] = {"train": [], "val": []}
    for i, doc in enumerate(corpus_documents()):
        split = "val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"
        parts[split] += tok.encode(doc) + [tok.eos_id]
    dtype = shard_dtype(tok.vocab_size)
    arrays = {k: np.asarray(v, dtype=dtype) for k, v in parts.items()}
    for a in arrays.values():
        a.setflags(write=False)
    return TokenDataset(arrays["train"], arrays["val"], tok.vocab_size, tok.eos_id, tok.spec, "embedded")


def embedded_dataset(tokenizer: str = "byte") -> TokenDataset:
    """The embedded corpus tokenized with ``tokenizer`` (cached per tokenizer); every 20th document is
    validation. With the byte tokenizer it has vocabulary 257, so the ``tiny`` size (vocab 512) fits."""
    return _embedded(str(tokenizer))
