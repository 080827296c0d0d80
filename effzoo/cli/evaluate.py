"""``effzoo eval ppl|mmlu|cmmlu|passkey|lm-eval``: perplexity (also by position), multiple-choice
accuracy, passkey retrieval, and lm-evaluation-harness tasks, as JSON + Markdown."""
from __future__ import annotations

import argparse
from pathlib import Path

from effzoo.data.shards import TOKEN_DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", required=True, metavar="ppl|mmlu|cmmlu|passkey|lm-eval")
    ppl = sub.add_parser("ppl", help="perplexity on a validation split, token shard or text file")
    _model_args(ppl)
    ppl.add_argument("--data", help="token directory or Megatron prefix (default: the embedded corpus)")
    ppl.add_argument("--split", default="val", choices=("val", "train"), help="split of --data (default val)")
    ppl.add_argument("--text", help="a text/JSONL/parquet file, tokenized with the model's tokenizer")
    ppl.add_argument("--tokens", help="a raw token shard (.bin), read with --dtype-tokens")
    ppl.add_argument("--dtype-tokens", default="uint16",
                     help=f"dtype of --tokens: {', '.join(TOKEN_DTYPES)} (default uint16)")
    ppl.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512, at most the model's)")
    ppl.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    ppl.add_argument("--max-tokens", type=int, help="stop after this many predicted tokens")
    ppl.add_argument("--by-position", action="store_true",
                     help="also loss by token position: a bucket table and OUT-positions.png (ppl-positions.png)")
    ppl.add_argument("--buckets", type=int, default=16, help="position buckets for --by-position (default 16)")
    for task in ("mmlu", "cmmlu"):
        p = sub.add_parser(task, help=f"{task.upper()} accuracy from a local CSV directory")
        _model_args(p)
        p.add_argument("--data-dir", required=True, help="directory with dev/ and test/ CSV folders")
        p.add_argument("--split", default="test", help="folder to evaluate (default test)")
        p.add_argument("--shots", type=int, default=5, help="examples from dev/ before each question (default 5)")
        p.add_argument("--subjects", help="comma-separated subset of subjects (file names without suffix)")
        p.add_argument("--limit", type=int, help="at most this many questions per subject")
    passkey = sub.add_parser("passkey", help="passkey retrieval: accuracy over context length x needle depth")
    _model_args(passkey)
    passkey.add_argument("--lengths", default="1k,2k,4k,8k", help="context lengths in tokens (default 1k,2k,4k,8k)")
    passkey.add_argument("--depths", default="0,0.25,0.5,0.75,1",
                         help="needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)")
    passkey.add_argument("--trials", type=int, default=5, help="random keys per cell (default 5)")
    passkey.add_argument("--seed", type=int, default=0, help="seed of the keys (default 0)")
    from effzoo.eval.lm_eval_model import add_lm_eval_parser

    add_lm_eval_parser(sub)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="saved effzoo directory, training run directory, transformers directory, or a variant name")
    p.add_argument("--size", default="tiny", help="size when --model is a variant name (default tiny)")
    p.add_argument("--tokenizer", help="override the model's tokenizer ('byte', tokenizer.json or directory)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default cuda if present, else cpu)")
    p.add_argument("--dtype", help="model dtype, e.g. bf16")
    p.add_argument("--out", help="write OUT.json and OUT.md (default: print the table only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    from effzoo.eval import load_language_model, markdown_table, write_report

    if args.task == "lm-eval":
        from effzoo.eval.lm_eval_model import run_lm_eval_command

        return run_lm_eval_command(args)
    lm = load_language_model(args.model, size=args.size, tokenizer=args.tokenizer, device=args.device,
                             dtype=args.dtype)
    if args.task == "passkey":
        from effzoo.eval.passkey import run_passkey_command

        return run_passkey_command(args, lm)
    result = _ppl(args, lm) if args.task == "ppl" else _choices(args, lm)
    print(markdown_table(result), end="")
    if args.out:
        json_path, md_path = write_report(result, args.out)
        print(f"wrote {json_path} and {md_path}")
    return 0


def _ppl(args: argparse.Namespace, lm) -> dict:
    import numpy as np

    from effzoo.eval import perplexity

    vocab_size = None  # the data's own vocabulary, where the data records one
    if args.tokens:
        from effzoo.data.shards import memmap_tokens, token_dtype

        tokens, data, split = memmap_tokens(args.tokens, token_dtype(args.dtype_tokens)), args.tokens, "file"
    elif args.text:
        from effzoo.data.readers import iter_documents

        ids: list[int] = []
        for _, doc in iter_documents(args.text):
            ids += lm.tokenizer.encode(doc) + [lm.tokenizer.eos_id]
        tokens, data, split = np.asarray(ids, dtype=np.int64), args.text, "file"
    else:
        from effzoo.data import embedded_dataset, open_dataset

        ds = open_dataset(args.data) if args.data else embedded_dataset(lm.tokenizer.spec)
        tokens, data, split = ds.split(args.split), args.data or "embedded", args.split
        vocab_size = ds.vocab_size
        made_with = ((ds.manifest or {}).get("tokenizer") or {}).get("fingerprint")
        if made_with and made_with != lm.tokenizer.fingerprint:
            from effzoo.data import DataError

            raise DataError(f"tokenized with {ds.manifest['tokenizer'].get('spec')}, but the model uses tokenizer "
                            f"{lm.tokenizer.spec}; pass --tokenizer or evaluate on data made with its tokenizer",
                            path=ds.source)
    stats = perplexity(lm, tokens, seq_len=args.seq_len, batch_size=args.batch_size, max_tokens=args.max_tokens,
                       progress=not args.quiet, vocab_size=vocab_size)
    result = {"task": "ppl", "model": lm.name, "data": str(Path(data)) if data != "embedded" else data,
              "split": split, **stats}
    if args.by_position:
        from effzoo.eval.ppl_positions import report_by_position

        result["by_position"] = report_by_position(lm, tokens, args, vocab_size)
    return result


def _choices(args: argparse.Namespace, lm) -> dict:
    from effzoo.eval import evaluate_choices, load_mmlu_dir

    subjects = [s.strip() for s in args.subjects.split(",")] if args.subjects else None
    data = load_mmlu_dir(args.data_dir, split=args.split, subjects=subjects, shots=args.shots)
    result = evaluate_choices(lm, data, task=args.task, limit=args.limit, progress=not args.quiet)
    result["split"] = args.split
    result["data"] = str(args.data_dir)
    return result
