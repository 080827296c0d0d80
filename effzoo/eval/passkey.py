"""Passkey retrieval: a number hidden in repeated filler text at a chosen depth, asked for at the end.

For each context length L (prompt plus answer, in the model's own tokens) and depth d in [0, 1], the
prompt is ``intro + filler[:b] + needle + filler[b:] + question`` with ``b = round(d * filler tokens)``,
so depth 0 puts the needle right after the intro and depth 1 right before the question. Each segment is
tokenized on its own, so lengths are exact in tokens for any tokenizer. The model continues the prompt
with greedy cached decoding; a trial is right when the first number in the continuation is the key.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from effzoo.errors import ConfigError

from .models import LanguageModel

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about it.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"
ANSWER = " {key}."
KEY_DIGITS = 5

Generate = Callable[[torch.Tensor, int], torch.Tensor]  # (B, T) prompt ids, n -> (B, n) new ids


def parse_lengths(text: str) -> list[int]:
    """'1k,2k,1.5k,512' -> [1024, 2048, 1536, 512]."""
    out = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(k?)", part)
        if not match:
            raise ConfigError(f"length {part!r} is not a number of tokens like 512, 1k or 1.5k")
        out.append(int(float(match.group(1)) * (1024 if match.group(2) else 1)))
    if not out:
        raise ConfigError("give at least one length, e.g. --lengths 1k,2k")
    return out


def parse_depths(text: str) -> list[float]:
    """'0,0.25,1' -> [0.0, 0.25, 1.0]; each depth must lie in [0, 1]."""
    try:
        depths = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ConfigError(f"depths must be numbers between 0 and 1, got {text!r}") from exc
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ConfigError(f"depths must be numbers between 0 and 1, got {text!r}")
    return depths


@dataclass(frozen=True)
class PasskeyPrompt:
    """Prompt ids, the key, where the needle starts (token index) and how many answer tokens follow."""

    ids: list[int]
    key: str
    needle_start: int
    answer_tokens: int


def build_prompt(tokenizer: Any, length: int, depth: float, key: str) -> PasskeyPrompt:
    """A prompt that with its answer is exactly ``length`` tokens, the needle at ``depth`` of the filler."""
    intro, question = tokenizer.encode(INTRO), tokenizer.encode(QUESTION)
    needle, answer = tokenizer.encode(NEEDLE.format(key=key)), tokenizer.encode(ANSWER.format(key=key))
    budget = length - len(intro) - len(needle) - len(question) - len(answer)
    if budget < 0:
        raise ConfigError(f"length {length} is too short for the passkey prompt "
                          f"({length - budget} tokens without filler)")
    unit = tokenizer.encode(FILLER)
    filler = (unit * (budget // len(unit) + 1))[:budget]
    before = round(depth * budget)
    ids = intro + filler[:before] + needle + filler[before:] + question
    return PasskeyPrompt(ids, key, len(intro) + before, len(answer))


def greedy_generate(lm: LanguageModel) -> Generate:
    """Greedy cached decoding: ``model.generate`` for effzoo models, transformers' ``generate`` otherwise."""
    model = lm.model

    def run(ids: torch.Tensor, n: int) -> torch.Tensor:
        ids = ids.to(lm.device)
        if hasattr(model, "new_cache"):
            return model.generate(ids, n)[:, ids.shape[1]:]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)
        return out[:, ids.shape[1]:]
    return run


def answered(text: str, key: str) -> bool:
    """Whether the first number in ``text`` is ``key``."""
    match = re.search(r"\d+", text)
    return match is not None and match.group(0) == key


def run_passkey(lm: LanguageModel, lengths: Sequence[int], depths: Sequence[float], *, trials: int = 5,
                seed: int = 0, generate: Generate | None = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy over ``trials`` random keys for every (length, depth); lengths beyond the model's maximum
    are skipped (their row is None and ``skipped`` says why)."""
    from tqdm import tqdm

    generate = generate or greedy_generate(lm)
    rng = random.Random(seed)
    keys = [str(rng.randrange(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)) for _ in range(trials)]
    grid: list[list[float] | None] = []
    skipped: dict[str, str] = {}
    bar = tqdm(total=len(lengths) * len(depths), desc="passkey", disable=not progress)
    for length in lengths:
        if length > lm.max_len:
            skipped[str(length)] = f"longer than the model's maximum length {lm.max_len}"
            grid.append(None)
            bar.update(len(depths))
            continue
        row = []
        for depth in depths:
            prompts = [build_prompt(lm.tokenizer, length, depth, key) for key in keys]
            right = 0
            for same in _by_shape(prompts):
                ids = torch.tensor([p.ids for p in same], dtype=torch.long)
                new = generate(ids, same[0].answer_tokens).cpu().tolist()
                right += sum(answered(lm.tokenizer.decode(out), p.key) for out, p in zip(new, same))
            row.append(right / trials)
            bar.update(1)
        grid.append(row)
    bar.close()
    return {"task": "passkey", "model": lm.name, "lengths": list(lengths), "depths": list(depths),
            "trials": trials, "seed": seed, "accuracy": grid, "skipped": skipped}


def _by_shape(prompts: list[PasskeyPrompt]) -> list[list[PasskeyPrompt]]:
    """Prompts grouped so that each group decodes as one batch (same prompt and answer lengths)."""
    groups: dict[tuple[int, int], list[PasskeyPrompt]] = {}
    for p in prompts:
        groups.setdefault((len(p.ids), p.answer_tokens), []).append(p)
    return list(groups.values())


def markdown_table(result: dict[str, Any]) -> str:
    """Accuracy (%) with one row per length and one column per depth."""
    depths = result["depths"]
    lines = [f"**Passkey retrieval** — {result['model']}, {result['trials']} keys per cell", "",
             "| length | " + " | ".join(f"depth {d:g}" for d in depths) + " |", "|---:|" + "---:|" * len(depths)]
    for length, row in zip(result["lengths"], result["accuracy"]):
        cells = ["–"] * len(depths) if row is None else [f"{100 * a:.0f}%" for a in row]
        lines.append(f"| {length:,} | " + " | ".join(cells) + " |")
    lines += [f"\n- {length} skipped: {why}" for length, why in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def heatmap(result: dict[str, Any], path: Any) -> Any:
    """Length x depth accuracy as a heatmap (skipped lengths grey)."""
    import numpy as np

    from effzoo.bench.plots import _pyplot, _save

    plt = _pyplot()
    depths, lengths = result["depths"], result["lengths"]
    values = np.array([[np.nan] * len(depths) if row is None else row for row in result["accuracy"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(depths) + 2.5, 0.7 * len(lengths) + 1.8))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    for i in range(len(lengths)):
        for j in range(len(depths)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize="small")
    ax.set_xlabel("needle depth")
    ax.set_ylabel("context length (tokens)")
    ax.set_title(f"passkey: {result['model']}")
    fig.colorbar(image, ax=ax, label="accuracy")
    return _save(fig, plt, path)


def run_passkey_command(args: Any, lm: LanguageModel) -> int:
    """``effzoo eval passkey``: print the grid; ``--out PREFIX`` writes PREFIX.json, .md and the heatmap .png."""
    from pathlib import Path

    from effzoo.atomic import write_json, write_text
    from effzoo.bench import plots

    result = run_passkey(lm, parse_lengths(args.lengths), parse_depths(args.depths), trials=args.trials,
                         seed=args.seed, progress=not args.quiet)
    table = markdown_table(result)
    print(table, end="")
    if args.out:
        prefix = Path(args.out)
        written = [write_json(prefix.with_name(prefix.name + ".json"), result),
                   write_text(prefix.with_name(prefix.name + ".md"), table)]
        if plots.available():
            written.append(heatmap(result, prefix.with_name(prefix.name + ".png")))
        print("wrote " + ", ".join(map(str, written)))
    return 0
