"""The ``effzoo`` command: each subcommand lives in its own module and is imported only when used."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module under effzoo.cli, one-line help). Each module defines
# ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("variants", "list registered variants and their capabilities"),
    "info": ("info", "parameters, FLOPs/token and cache bytes/token of a variant at a size"),
    "plugins": ("plugins", "installed plugins, their distributions and versions, and failures"),
    "train": ("train", "train a variant (torchrun-aware; embedded corpus when --data is omitted)"),
    "data": ("data", "download, sample, train tokenizers and tokenize corpora into token shards"),
    "eval": ("evaluate", "perplexity and MMLU / CMMLU evaluation"),
    "bench": ("bench", "run a benchmark suite and write the EfficientLLM tables"),
    "report": ("report", "rebuild tables and plots from finished runs"),
    "plot": ("plot", "compare loss curves of runs"),
    "doctor": ("doctor", "torch build, device, optional kernels, threads, and the --quick suite's time here"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: effzoo [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `effzoo <command> --help` for the options of a command.",
              "--debug (anywhere, or EFFZOO_DEBUG=1) shows the full traceback of an error."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``effzoo`` console script and ``python -m effzoo``. An error caused by the input
    (an effzoo error or an unreadable file) is one line, ``effzoo <command>: error: ...``, exit code 2."""
    import argparse
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end] or os.environ.get("EFFZOO_DEBUG", "") not in ("", "0")
    args = [a for i, a in enumerate(args) if not (a == "--debug" and i < end)]
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from effzoo import __version__

        print(f"effzoo {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        from effzoo.errors import close_matches

        hint = close_matches(name, COMMANDS)
        print(f"effzoo: unknown command {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""), file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(f"effzoo.cli.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"effzoo {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    parsed = parser.parse_args(args[1:])
    if argv is None and name != "doctor":  # the console script: no more torch threads than idle cores
        from effzoo.cli.machine import fit_threads

        fit_threads()
    from effzoo.errors import EffzooError

    try:
        return int(module.run(parsed) or 0)
    except (EffzooError, OSError) as exc:
        if debug:
            raise
        print(f"effzoo {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The error's message on one line (an OSError without one gets its type and file name)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return text or type(exc).__name__
