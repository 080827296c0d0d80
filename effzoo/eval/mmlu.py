"""MMLU and CMMLU from local CSV directories: k-shot prompts from the dev split, and the answer
chosen by the log-likelihood the model gives each answer letter after the prompt.

Layouts: MMLU ``DIR/{dev,val,test}/<subject>_<split>.csv`` without a header (question, A, B, C, D,
answer); CMMLU ``DIR/{dev,test}/<subject>.csv`` with a header and an index column
(``,Question,A,B,C,D,Answer``). A header row is recognised in either layout.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effzoo.data.errors import DataError
from effzoo.errors import UnknownNameError

from .models import LanguageModel

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: str


@dataclass(frozen=True)
class TaskFormat:
    """Prompt pieces of one benchmark."""

    header: str          # with {subject}
    question: str        # with {question}
    answer_prefix: str   # ends the question; the scored letter follows
    letter: str          # continuation scored, with {letter}


FORMATS = {
    "mmlu": TaskFormat("The following are multiple choice questions (with answers) about {subject}.\n\n",
                       "{question}", "Answer:", " {letter}"),
    "cmmlu": TaskFormat("以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
                        "题目：{question}", "答案是：", "{letter}"),
}


def _read_csv(path: Path) -> list[Question]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 ({exc})", path=path) from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise DataError("file is empty", path=path)
    header = [c.strip().lower() for c in rows[0]]
    start, offset = 0, 0
    if "question" in header and "answer" in header:
        start, offset = 1, header.index("question")
    elif len(rows[0]) == 7:  # index column without a header
        offset = 1
    questions = []
    for number, row in enumerate(rows[start:], start=start):
        if not any(cell.strip() for cell in row):
            continue
        fields = row[offset:offset + 6]
        if len(fields) != 6:
            raise DataError(f"expected question, A, B, C, D, answer; got {len(row)} columns", path=path, row=number)
        answer = fields[5].strip().upper()
        if answer not in LETTERS:
            raise DataError(f"answer {fields[5]!r} is not one of A, B, C, D", path=path, row=number)
        questions.append(Question(fields[0], tuple(fields[1:5]), answer))
    return questions


def _subject_files(directory: Path, split: str) -> dict[str, Path]:
    folder = directory / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no {split}/ folder in {directory} (expected {split}/<subject>[_{split}].csv)")
    return {f.stem.removesuffix(f"_{split}"): f for f in sorted(folder.glob("*.csv"))}


def load_mmlu_dir(
    directory: str | os.PathLike[str], *, split: str = "test", subjects: Iterable[str] | None = None,
    shots: int = 0,
) -> dict[str, dict[str, list[Question]]]:
    """``{subject: {"eval": questions, "dev": few-shot examples}}`` for MMLU or CMMLU CSV directories."""
    directory = Path(directory)
    files = _subject_files(directory, split)
    if not files:
        raise FileNotFoundError(f"no CSV files in {directory / split}")
    chosen = list(files) if subjects is None else list(subjects)
    for name in chosen:
        if name not in files:
            raise UnknownNameError("subject", name, files)
    dev = _subject_files(directory, "dev") if shots > 0 else {}
    data = {}
    for name in chosen:
        examples: list[Question] = []
        if shots > 0:
            if name not in dev:
                raise FileNotFoundError(f"{shots}-shot needs {directory}/dev/{name}[_dev].csv")
            examples = _read_csv(dev[name])[:shots]
        data[name] = {"eval": _read_csv(files[name]), "dev": examples}
    return data


def format_question(fmt: TaskFormat, q: Question, with_answer: bool) -> str:
    body = fmt.question.format(question=q.question.strip())
    options = "".join(f"\n{letter}. {choice.strip()}" for letter, choice in zip(LETTERS, q.choices))
    text = f"{body}{options}\n{fmt.answer_prefix}"
    return text + (f"{fmt.letter.format(letter=q.answer)}\n\n" if with_answer else "")


def build_prompt(fmt: TaskFormat, subject: str, shots: list[Question], q: Question) -> str:
    return (fmt.header.format(subject=subject.replace("_", " "))
            + "".join(format_question(fmt, s, True) for s in shots) + format_question(fmt, q, False))


@torch.no_grad()
def choice_logliks(lm: LanguageModel, fmt: TaskFormat, subject: str, shots: list[Question], q: Question) -> list[float]:
    """Log-likelihood of each answer letter's tokens after the prompt (few-shot examples are dropped
    from the front, then the prompt is cut from the left, when it would not fit ``lm.max_len``)."""
    conts = [lm.tokenizer.encode(fmt.letter.format(letter=letter)) for letter in LETTERS]
    longest = max(map(len, conts))
    shots = list(shots)
    context = lm.tokenizer.encode(build_prompt(fmt, subject, shots, q))
    while shots and len(context) + longest > lm.max_len:
        shots.pop(0)
        context = lm.tokenizer.encode(build_prompt(fmt, subject, shots, q))
    context = context[-(lm.max_len - longest):]
    seqs = [context + c for c in conts]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq)
    logprobs = torch.log_softmax(lm.logits(ids[:, :-1]).float(), dim=-1).cpu()
    scores = []
    for row, cont in enumerate(conts):
        positions = torch.arange(len(context) - 1, len(context) - 1 + len(cont))
        scores.append(float(logprobs[row, positions, torch.tensor(cont)].sum()))
    return scores


def evaluate_choices(
    lm: LanguageModel, data: dict[str, dict[str, list[Question]]], *, task: str = "mmlu",
    limit: int | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Accuracy per subject and overall (over questions, and the mean over subjects)."""
    from tqdm import tqdm

    fmt = FORMATS[task]
    subjects: dict[str, dict[str, Any]] = {}
    total = sum(len(d["eval"][:limit]) for d in data.values())
    bar = tqdm(total=total, desc=task, disable=not progress)
    for subject, parts in data.items():
        correct = 0
        questions = parts["eval"][:limit]
        for q in questions:
            scores = choice_logliks(lm, fmt, subject, parts["dev"], q)
            correct += LETTERS[max(range(4), key=scores.__getitem__)] == q.answer
            bar.update(1)
        subjects[subject] = {"correct": correct, "total": len(questions),
                             "accuracy": correct / len(questions) if questions else 0.0}
    bar.close()
    right = sum(s["correct"] for s in subjects.values())
    asked = sum(s["total"] for s in subjects.values())
    scored = [s["accuracy"] for s in subjects.values() if s["total"]]
    return {"task": task, "model": lm.name, "shots": max((len(d["dev"]) for d in data.values()), default=0),
            "correct": right, "questions": asked, "accuracy": right / asked if asked else 0.0,
            "macro_accuracy": sum(scored) / len(scored) if scored else 0.0, "subjects": subjects}
