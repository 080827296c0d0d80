"""Loss by token position: how well a model predicts token t of a window from the t tokens before it.

The token stream is cut into the same consecutive windows as :func:`effzoo.eval.ppl.perplexity`; the
per-token cross-entropy is averaged over windows for every position, then over equal-width position
buckets. A model that uses its whole context gets lower loss at later positions; one that cannot
extrapolate or forgets shows a loss that rises again."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .models import LanguageModel
from .ppl import checked_windows


@torch.no_grad()
def loss_by_position(lm: LanguageModel, tokens: Any, *, seq_len: int = 512, batch_size: int = 4,
                     buckets: int = 16, max_tokens: int | None = None, progress: bool = False,
                     vocab_size: int | None = None) -> dict[str, Any]:
    """Mean loss per position ``0..seq_len-1`` and per bucket of ``seq_len / buckets`` positions, over the
    windows :func:`effzoo.eval.ppl.perplexity` reads (token ids checked first, as there)."""
    seq_len, windows = checked_windows(lm, tokens, seq_len, max_tokens, vocab_size)
    buckets = max(1, min(buckets, seq_len))
    from tqdm import tqdm

    total = torch.zeros(seq_len, dtype=torch.float64)
    for first in tqdm(range(0, windows, batch_size), desc="loss by position", disable=not progress):
        rows = range(first, min(first + batch_size, windows))
        data = torch.from_numpy(np.stack([np.asarray(tokens[r * seq_len:r * seq_len + seq_len + 1], dtype=np.int64)
                                          for r in rows]))
        logits = lm.logits(data[:, :-1]).float()
        targets = data[:, 1:].to(logits.device)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total += nll.sum(dim=0).double().cpu()
    per_position = (total / windows).tolist()
    edges = [round(i * seq_len / buckets) for i in range(buckets + 1)]
    table = []
    for start, end in zip(edges, edges[1:]):
        loss = sum(per_position[start:end]) / (end - start)
        table.append({"start": start, "end": end, "loss": loss, "ppl": math.exp(loss)})
    return {"seq_len": seq_len, "windows": windows, "loss_per_position": per_position, "buckets": table}


def markdown_table(result: dict[str, Any]) -> str:
    """One row per position bucket."""
    lines = [f"Loss by position ({result['windows']} windows of {result['seq_len']} tokens)", "",
             "| positions | loss | perplexity |", "|---|---:|---:|"]
    lines += [f"| {b['start']}–{b['end'] - 1} | {b['loss']:.4f} | {b['ppl']:.3f} |" for b in result["buckets"]]
    return "\n".join(lines) + "\n"


def position_plot(result: dict[str, Any], path: Any, title: str = "loss by token position") -> Any:
    """Per-position loss (thin) and bucket means (steps) against token position."""
    from effzoo.bench.plots import _pyplot, _save, smooth

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    per = result["loss_per_position"]
    ax.plot(range(len(per)), smooth(per, max(1, len(per) // 64)), alpha=0.5, linewidth=1, label="per position (smoothed)")
    for b in result["buckets"]:
        ax.hlines(b["loss"], b["start"], b["end"] - 1, colors="C1", linewidth=2.5)
    ax.plot([], [], color="C1", linewidth=2.5, label="bucket mean")
    ax.set_xlabel("token position in the window")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def report_by_position(lm: LanguageModel, tokens: Any, args: Any, vocab_size: int | None = None) -> dict[str, Any]:
    """``effzoo eval ppl --by-position``: print the bucket table, draw ``OUT-positions.png`` (or
    ``ppl-positions.png`` without ``--out``) and return the numbers for the JSON report."""
    from pathlib import Path

    result = loss_by_position(lm, tokens, seq_len=args.seq_len, batch_size=args.batch_size, buckets=args.buckets,
                              max_tokens=args.max_tokens, progress=not args.quiet, vocab_size=vocab_size)
    print(markdown_table(result))
    from effzoo.bench import plots

    if plots.available():
        path = Path(f"{args.out}-positions.png" if args.out else "ppl-positions.png")
        result["plot"] = str(position_plot(result, path, title=f"loss by token position: {lm.name}"))
        print(f"wrote {path}")
    else:
        print("effzoo eval: matplotlib is not installed, so no position plot was drawn (pip install 'effzoo[plots]')")
    return result
