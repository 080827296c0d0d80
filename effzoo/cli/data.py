"""``effzoo data download|sample|tokenizer|tokenize|inspect|corpus``: from raw corpora to token shards."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("download", help="fetch FineWeb-Edu parquet files from the hub or a mirror")
    p.add_argument("--out", required=True, help="local directory (rerun the same command to resume)")
    p.add_argument("--repo", default="HuggingFaceFW/fineweb-edu", help="dataset repo (default %(default)s)")
    p.add_argument("--config", default="sample-350BT", help="config or repo folder (default %(default)s)")
    p.add_argument("--max-files", type=int, help="at most this many parquet files")
    p.add_argument("--max-gb", type=float, help="at most this many GB (1e9 bytes), at least one file")
    p.add_argument("--endpoint", help="hub mirror, e.g. https://hf-mirror.com (default: $HF_ENDPOINT or the hub)")
    p.add_argument("--workers", type=int, default=4, help="parallel downloads (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")

    p = sub.add_parser("sample", help="sample a subset by size, zh/en ratio and minimum score into parquet shards")
    p.add_argument("inputs", nargs="+", help="parquet/JSONL files or directories")
    p.add_argument("--out", required=True, help="directory for the sampled parquet shards")
    p.add_argument("--size-gb", type=float, required=True, help="target text size in GB (1e9 bytes of UTF-8)")
    p.add_argument("--zh-ratio", type=float, default=0.0, help="share of the text budget in Chinese (default 0)")
    p.add_argument("--en-ratio", type=float, default=None, help="default: 1 - zh ratio")
    p.add_argument("--min-score", type=float, default=0.0, help="minimum score/int_score for every language")
    p.add_argument("--min-score-zh", type=float, help="minimum score for Chinese (overrides --min-score)")
    p.add_argument("--min-score-en", type=float, help="minimum score for English (overrides --min-score)")
    p.add_argument("--shard-mb", type=float, default=500, help="text MB per output parquet shard (default 500)")
    _common(p)
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")

    p = sub.add_parser("tokenizer", help="show a tokenizer, or train a byte-level BPE tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_action", required=True, metavar="show|train")
    show = tsub.add_parser("show", help="vocabulary, EOS and an example encoding")
    show.add_argument("spec", nargs="?", default="byte", help="'byte', a tokenizer.json or a tokenizer directory")
    show.add_argument("--text", default="Hello, world! 你好", help="text to encode")
    train = tsub.add_parser("train", help="train a byte-level BPE tokenizer with HF tokenizers")
    train.add_argument("inputs", nargs="+", help="parquet/JSONL/text files or directories")
    train.add_argument("--out", required=True, help="output directory (tokenizer.json + tokenizer_config.json)")
    train.add_argument("--vocab-size", type=int, default=32000, help="vocabulary entries (default 32000)")
    train.add_argument("--max-documents", type=int, help="train on at most this many documents")
    _common(train, seed=False)

    p = sub.add_parser("tokenize", help="text -> token shards with EOS, train/val split and manifest")
    p.add_argument("inputs", nargs="+", help="parquet/JSONL/text files or directories")
    p.add_argument("--out", required=True, help="token directory: train/ and val/ shards and manifest.json")
    p.add_argument("--tokenizer", default="byte", help="'byte' (default), a tokenizer.json or directory")
    p.add_argument("--eos-token", help="end-of-text token when the tokenizer does not name one")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of documents for validation")
    p.add_argument("--workers", type=int, default=1, help="processes, one input file each at a time")
    _common(p)
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")

    p = sub.add_parser("inspect", help="summarise token data (effzoo directory or Megatron prefix)")
    p.add_argument("path", help="token directory or Megatron PREFIX")
    p.add_argument("--verify", action="store_true", help="recompute checksums and check every token id")
    p.add_argument("--show", type=int, default=0, metavar="N", help="decode the first N training tokens")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("corpus", help="write the embedded default corpus to a text file")
    p.add_argument("out", help="text file to write")


def _common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("--text-column", help="text column (default: text, else content)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad files/rows instead of stopping")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed of the sampling / split (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    return {"download": _download, "sample": _sample, "tokenizer": _tokenizer, "tokenize": _tokenize,
            "inspect": _inspect, "corpus": _corpus}[args.action](args)


def _download(args: argparse.Namespace) -> int:
    from effzoo.data.download import HubSource, download, plan_download

    source = HubSource(args.endpoint)
    max_bytes = None if args.max_gb is None else int(args.max_gb * 1e9)
    plan = plan_download(source, args.out, repo_id=args.repo, config=args.config, max_files=args.max_files,
                         max_bytes=max_bytes)
    print(f"{args.repo}/{plan.folder}: {len(plan.files)} files, {plan.bytes_total / 1e9:.2f} GB; "
          f"{len(plan.present)} already present, {plan.bytes_needed / 1e9:.2f} GB to fetch"
          + (f" via {source.endpoint}" if source.endpoint else ""))
    if args.dry_run:
        for f in plan.missing:
            print(f"  {f.path}  {f.size / 1e6:.1f} MB")
        return 0
    files = download(plan, source, workers=args.workers, progress=not args.quiet)
    print(f"done: {len(files)} files in {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from effzoo.data.sample import sample

    en = 1.0 - args.zh_ratio if args.en_ratio is None else args.en_ratio
    ratios = {k: v for k, v in (("zh", args.zh_ratio), ("en", en)) if v > 0}
    scores = {"zh": args.min_score if args.min_score_zh is None else args.min_score_zh,
              "en": args.min_score if args.min_score_en is None else args.min_score_en}
    report = sample(args.inputs, args.out, target_bytes=int(args.size_gb * 1e9), ratios=ratios, min_score=scores,
                    shard_bytes=int(args.shard_mb * 1e6), seed=args.seed, text_column=args.text_column,
                    on_error="skip" if args.skip_bad else "raise", overwrite=args.overwrite,
                    progress=not args.quiet)
    for lang, stats in report["languages"].items():
        flag = "" if stats["complete"] else "  (budget not reached: not enough data)"
        print(f"{lang}: {stats['documents']:,} documents, {stats['text_bytes'] / 1e6:.2f} MB{flag}")
    print(f"{len(report['shards'])} shards in {args.out}; skipped: {report['skipped'] or 'none'}")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from effzoo.data.tokenizers import load_tokenizer, train_bpe

    if args.tokenizer_action == "show":
        tok = load_tokenizer(args.spec)
        ids = tok.encode(args.text)
        print(f"{tok.name}: vocab_size {tok.vocab_size}, eos_id {tok.eos_id}, spec {tok.spec}")
        print(f"{args.text!r} -> {ids} ({len(ids)} tokens) -> {tok.decode(ids)!r}")
        return 0
    import itertools
    from collections import Counter

    from effzoo.data.readers import input_files, iter_documents

    skipped: Counter = Counter()
    on_error = "skip" if args.skip_bad else "raise"
    texts = (text for f in input_files(args.inputs)
             for _, text in iter_documents(f, text_column=args.text_column, on_error=on_error, skipped=skipped))
    tok = train_bpe(itertools.islice(texts, args.max_documents), args.vocab_size, args.out,
                    show_progress=not args.quiet)
    print(f"trained byte-level BPE: vocab_size {tok.vocab_size}, eos_id {tok.eos_id} -> {args.out}"
          + (f"; skipped {dict(skipped)}" if skipped else ""))
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from effzoo.data.tokenize import tokenize

    manifest = tokenize(args.inputs, args.out, args.tokenizer, val_fraction=args.val_fraction, seed=args.seed,
                        text_column=args.text_column, on_error="skip" if args.skip_bad else "raise",
                        workers=args.workers, progress=not args.quiet, overwrite=args.overwrite,
                        eos_token=args.eos_token)
    s = manifest["splits"]
    print(f"{args.out}: train {s['train']['tokens']:,} tokens / {s['train']['documents']:,} documents, "
          f"val {s['val']['tokens']:,} tokens / {s['val']['documents']:,} documents, {manifest['dtype']}"
          + (f"; skipped {manifest['skipped']}" if manifest["skipped"] else ""))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from effzoo.data import open_dataset
    from effzoo.data.manifest import verify_shards

    ds = open_dataset(args.path)
    summary = {"source": ds.source, "train_tokens": len(ds.train), "val_tokens": len(ds.val),
               "vocab_size": ds.vocab_size, "eos_id": ds.eos_id, "tokenizer": ds.tokenizer,
               "dtype": str(ds.train.dtype)}
    problems: list[str] = []
    if args.verify:
        if ds.manifest is not None:
            problems = verify_shards(args.path, ds.manifest)
        if not problems:
            ds.check_range()
        summary["verified"] = not problems
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>13}: {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                  else f"{key:>13}: {value}")
        if args.show:
            print(repr(ds.load_tokenizer().decode(list(map(int, ds.train[:args.show])))))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _corpus(args: argparse.Namespace) -> int:
    from effzoo.data.corpus import corpus_documents, write_corpus

    path = write_corpus(args.out)
    print(f"wrote {len(corpus_documents())} documents to {path}")
    return 0
