"""lm-evaluation-harness adapter: any model ``effzoo eval`` can load, as lm-eval model ``effzoo``.

lm-eval 0.4 finds models only in its registry (``lm_eval.api.registry.register_model``); it has no
entry-point group for model packages, so the class is registered when this module's
:func:`register` runs. Three ways in:

* ``effzoo eval lm-eval --model RUN --tasks T`` (registers, then calls ``lm_eval.simple_evaluate``);
* ``python -m effzoo.eval.lm_eval_model --model effzoo --model_args pretrained=RUN --tasks T``
  (registers, then runs lm-eval's own command line with every one of its options);
* ``import effzoo.eval.lm_eval_model as m; m.register()`` in Python, then ``lm_eval.simple_evaluate``.

``loglikelihood`` and ``loglikelihood_rolling`` score right-padded batches in one forward pass each
(causal models never see the padding); ``generate_until`` decodes batches of equal-length prompts
greedily with the model's cache (``model.generate``) and cuts at the first stop string. Text goes
through the model's own tokenizer.
"""
from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

import torch

from effzoo.errors import EffzooError

from .models import LanguageModel, load_language_model

MODEL_NAME = "effzoo"
INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'effzoo[eval]' (or pip install lm-eval)"


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise EffzooError(INSTALL_HINT) from exc
    return lm_eval


@torch.no_grad()
def score_continuations(lm: LanguageModel, pairs: Sequence[tuple[list[int], list[int]]],
                        batch_size: int = 8) -> list[tuple[float, bool]]:
    """Sum of log-probabilities of each continuation after its context, and whether greedy decoding
    would produce it; contexts are cut from the left to fit ``lm.max_len``."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        inputs, spans = [], []
        for i in chunk:
            context, continuation = pairs[i]
            if not continuation:
                raise EffzooError("lm-eval asked for the log-likelihood of an empty continuation")
            whole = (context + continuation)[-(lm.max_len + 1):]
            inputs.append(whole[:-1])
            spans.append((len(whole) - 1 - len(continuation), continuation))
        width = max(map(len, inputs))
        ids = torch.zeros(len(inputs), width, dtype=torch.long)
        for row, seq in enumerate(inputs):
            ids[row, :len(seq)] = torch.tensor(seq)
        logprobs = torch.log_softmax(lm.logits(ids).float(), dim=-1).cpu()
        for row, (i, (start, continuation)) in enumerate(zip(chunk, spans)):
            window = logprobs[row, start:start + len(continuation)]
            target = torch.tensor(continuation)
            out[i] = (float(window.gather(1, target[:, None]).sum()), bool((window.argmax(-1) == target).all()))
    return out


def rolling_windows(tokens: list[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows that predict every token once, each with as much
    context as fits (lm-eval's rolling scheme, first token conditioned on ``prefix``)."""
    windows, predicted = [], 0
    while predicted < len(tokens):
        end = min(len(tokens), predicted + max_len)
        context = ([prefix] + tokens)[max(0, end - max_len):predicted + 1]
        windows.append((context, tokens[predicted:end]))
        predicted = end
    return windows


def greedy_until(lm: LanguageModel, prompts: Sequence[list[int]], max_new: int, until: Sequence[str],
                 batch_size: int = 8) -> list[str]:
    """Greedy cached continuations of ``prompts`` (each cut at the first of ``until``)."""
    from .passkey import greedy_generate

    generate = greedy_generate(lm)
    keep = max(1, lm.max_len - max_new)
    cut = [list(p[-keep:]) for p in prompts]
    texts = [""] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(cut):
        groups.setdefault(len(ids), []).append(i)
    for members in groups.values():
        for first in range(0, len(members), batch_size):
            chunk = members[first:first + batch_size]
            new = generate(torch.tensor([cut[i] for i in chunk], dtype=torch.long),
                           min(max_new, lm.max_len - len(cut[chunk[0]]))).cpu().tolist()
            for i, ids in zip(chunk, new):
                text = lm.tokenizer.decode(ids)
                stops = [text.find(s) for s in until if s and s in text]
                texts[i] = text[:min(stops)] if stops else text
    return texts


@functools.lru_cache(maxsize=1)
def register() -> type:
    """Define the lm-eval model class and register it as ``effzoo`` (once); returns the class."""
    _lm_eval()
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    class EffzooLM(LM):
        """lm-eval's view of an effzoo (or transformers) model and its tokenizer."""

        def __init__(self, pretrained: str, size: str = "tiny", tokenizer: str | None = None,
                     device: str | None = None, dtype: str | None = None, batch_size: int | str = 8,
                     max_gen_toks: int = 256, **_: Any) -> None:
            super().__init__()
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.lm = load_language_model(str(pretrained), size=size, tokenizer=tokenizer, device=device, dtype=dtype)
            self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
            self.max_gen_toks = int(max_gen_toks)

        def _prefix(self) -> int:
            eos = self.lm.tokenizer.eos_id
            return eos if eos is not None else 0

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            tok = self.lm.tokenizer
            pairs = [(tok.encode(ctx) if ctx else [self._prefix()], tok.encode(cont)) for ctx, cont in
                     (r.args for r in requests)]
            return score_continuations(self.lm, pairs, self.batch_size)

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            totals = []
            for request in requests:
                windows = rolling_windows(self.lm.tokenizer.encode(request.args[0]), self._prefix(), self.lm.max_len)
                totals.append(sum(score for score, _ in score_continuations(self.lm, windows, self.batch_size)))
            return totals

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out: list[str] = [""] * len(requests)
            by_kwargs: dict[tuple[tuple[str, ...], int], list[int]] = {}
            for i, request in enumerate(requests):
                kwargs = dict(request.args[1] or {})
                until = kwargs.get("until") or []
                until = (until,) if isinstance(until, str) else tuple(until)
                by_kwargs.setdefault((until, int(kwargs.get("max_gen_toks", self.max_gen_toks))), []).append(i)
            for (until, max_new), members in by_kwargs.items():
                prompts = [self.lm.tokenizer.encode(requests[i].args[0]) or [self._prefix()] for i in members]
                for i, text in zip(members, greedy_until(self.lm, prompts, max_new, until, self.batch_size)):
                    out[i] = text
            return out

    register_model(MODEL_NAME)(EffzooLM)
    return EffzooLM


def evaluate(model: str, tasks: Sequence[str], *, include_path: str | None = None, num_fewshot: int | None = None,
             limit: float | None = None, batch_size: int = 8, model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with the effzoo model ``model`` (a run, directory or variant name)."""
    lm_eval = _lm_eval()
    register()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    results = lm_eval.simple_evaluate(model=MODEL_NAME, model_args={"pretrained": model, **(model_args or {})},
                                      tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                                      task_manager=manager, log_samples=False)
    if results is None:
        raise EffzooError("lm-eval returned no results")
    return results


def add_lm_eval_parser(sub: Any) -> None:
    """The ``effzoo eval lm-eval`` subcommand's options."""
    p = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks (needs effzoo[eval])")
    p.add_argument("--model", required=True,
                   help="saved effzoo directory, training run directory, transformers directory, or a variant name")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", help="folder of extra task YAML files (lm-eval's --include_path)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    p.add_argument("--limit", type=float, help="at most this many documents per task (or a fraction < 1)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass (default 8)")
    p.add_argument("--size", default="tiny", help="size when --model is a variant name (default tiny)")
    p.add_argument("--tokenizer", help="override the model's tokenizer ('byte', tokenizer.json or directory)")
    p.add_argument("--device", help="torch device (default cuda if present, else cpu)")
    p.add_argument("--dtype", help="model dtype, e.g. bf16")
    p.add_argument("--out", help="write OUT.json (lm-eval's results) and OUT.md (its table)")


def run_lm_eval_command(args: argparse.Namespace) -> int:
    """``effzoo eval lm-eval``: evaluate, print lm-eval's table, optionally write it and the results."""
    from pathlib import Path

    from effzoo.atomic import write_json, write_text

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    extra = {k: v for k, v in (("size", args.size), ("tokenizer", args.tokenizer), ("device", args.device),
                               ("dtype", args.dtype)) if v is not None}
    results = evaluate(args.model, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                       limit=args.limit, batch_size=args.batch_size, model_args=extra)
    from lm_eval.utils import make_table

    table = make_table(results)
    print(table)
    if args.out:
        prefix = Path(args.out)
        kept = {k: results[k] for k in ("results", "versions", "n-shot", "higher_is_better", "n-samples") if k in results}
        written = [write_json(prefix.with_name(prefix.name + ".json"), kept),
                   write_text(prefix.with_name(prefix.name + ".md"), table)]
        print("wrote " + ", ".join(map(str, written)))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line with the ``effzoo`` model registered."""
    import sys

    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
