#!/usr/bin/env python3
"""Build a real-English-text training corpus from Debian documentation packages.

Steps (each one skipped on a rerun when its output is already there):

1. ``apt-get download`` every package of ``--packages`` into ``WORK/debs`` (meta-packages such as
   ``linux-doc`` or ``python3-doc`` are followed to the versioned documentation package they depend on);
2. ``dpkg-deb -x`` each ``.deb`` into ``WORK/extract/PACKAGE`` (never into ``/``);
3. turn its HTML, reST, text, Markdown and POD documents (gzip'd ones too) into plain text, drop tiny,
   code-heavy, non-prose and duplicate documents, and write ``OUT/text/PACKAGE-NNNN.jsonl`` shards of
   ``{"text": ..., "source": "PACKAGE/path"}`` lines;
4. copy each package's copyright file to ``OUT/licenses`` and write ``OUT/corpus.json`` (packages,
   versions, copyright paths, counts, settings);
5. train a byte-level BPE tokenizer on the corpus (``effzoo data tokenizer train``) and tokenize it
   (``effzoo data tokenize``) into ``OUT/tokens``, the directory ``effzoo train/bench --data`` reads.

Cleaning rules (see ``CleanSettings``), in this order: a document is dropped as *tiny* below ``min_chars``
characters or ``min_words`` words; as *code-heavy* when letters are under ``min_alpha_ratio`` of its
non-space characters or more than ``max_code_line_share`` of its lines look like code (ending in ``;``,
``{`` or ``}``, or starting with a shell or Python prompt, ``#include``, a comment); as *not prose* when
fewer than ``min_stopword_share`` of its words are common English function words (other languages,
indexes, tables of names); as a *duplicate* when its
lower-cased words equal an earlier document's; as a *near-duplicate* when at least
``near_duplicate_share`` of its sampled word 5-grams occurred in earlier documents (this removes, e.g.,
the reST source of a page whose rendered HTML was already kept: HTML files are read first).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

DEFAULT_PACKAGES = ("python3-doc", "postgresql-doc", "perl-doc", "git-doc", "sqlite3-doc", "nodejs-doc",
                    "debian-reference-en", "debian-policy", "developers-reference", "linux-doc")
MANIFEST_NAME = "corpus.json"
SETTINGS_NAME = "settings.json"
META_PACKAGE_MAX_KIB = 64  # a package this small (Installed-Size) only points at the real documentation

# Format by file suffix (after a trailing .gz is removed); HTML first: it is the rendered, cleanest copy.
FORMATS = {".html": "html", ".htm": "html", ".xhtml": "html", ".txt": "text", ".rst": "text", ".md": "text",
           ".markdown": "text", ".text": "text", ".pod": "pod"}
FORMAT_ORDER = {"html": 0, "text": 1, "pod": 1}
SKIP_DIR_NAMES = {"man", "doc-base", "lintian", "translations"}  # man pages, Debian metadata, non-English docs


class CorpusError(Exception):
    """A step failed in a way the user can fix; the message says how."""


@dataclass(frozen=True)
class CleanSettings:
    """The document filters; a rerun into the same output folder must use the same."""

    min_chars: int = 400
    min_words: int = 60
    min_alpha_ratio: float = 0.68
    max_code_line_share: float = 0.3
    min_stopword_share: float = 0.15
    near_duplicate_share: float = 0.5
    shingle_words: int = 5
    shingle_sample: int = 8  # keep a 5-gram when its hash is divisible by this (a deterministic 1/8 sample)
    shard_chars: int = 16_000_000


@dataclass(frozen=True)
class PackageDeb:
    """One downloaded documentation package."""

    package: str
    version: str
    deb: Path
    requested: str


# ---------------------------------------------------------------- commands, download, extraction

def run_command(cmd: list[str], cwd: Path | None = None) -> str:
    """Run ``cmd``; its stdout, or a ``CorpusError`` with its stderr."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise CorpusError(f"{cmd[0]} is not installed (this script needs Debian's apt-get and dpkg-deb)") from exc
    if done.returncode != 0:
        raise CorpusError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def parse_control(text: str) -> dict[str, str]:
    """Fields of a Debian control paragraph (continuation lines joined with newlines)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


def deb_fields(deb: Path) -> dict[str, str]:
    """The control fields of a ``.deb`` file (read offline with ``dpkg-deb -f``)."""
    return parse_control(run_command(["dpkg-deb", "-f", str(deb)]))


def doc_dependencies(fields: dict[str, str]) -> list[str]:
    """For a meta-package (Installed-Size at most ``META_PACKAGE_MAX_KIB``), the documentation packages it
    depends on (first alternative, names containing ``doc``); for a real package, nothing."""
    size = fields.get("Installed-Size", "")
    if not size.isdigit() or int(size) > META_PACKAGE_MAX_KIB:
        return []
    names = []
    for clause in fields.get("Depends", "").split(","):
        name = re.split(r"[\s(:|]", clause.strip(), maxsplit=1)[0]
        if name and "doc" in name:
            names.append(name)
    return names


def find_deb(name: str, debs: Path) -> Path | None:
    """The newest ``NAME_VERSION_ARCH.deb`` already in ``debs``, if any."""
    hits = sorted(debs.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def download_deb(name: str, debs: Path) -> Path:
    """``apt-get download NAME`` into ``debs`` unless a ``.deb`` of it is already there."""
    found = find_deb(name, debs)
    if found is not None:
        return found
    debs.mkdir(parents=True, exist_ok=True)
    try:
        run_command(["apt-get", "download", name], cwd=debs)
    except CorpusError as exc:
        if "Unable to locate package" in str(exc) or "has no installation candidate" in str(exc):
            raise CorpusError(f"apt does not know the package {name!r}: run `apt-get update` first (an empty "
                              "package list knows nothing), check the name with `apt-cache search`, or pass "
                              "--skip-missing") from exc
        raise
    found = find_deb(name, debs)
    if found is None:
        raise CorpusError(f"apt-get download {name} reported success but left no {name}_*.deb in {debs}")
    return found


def resolve_packages(names: list[str], debs: Path, *, skip_missing: bool = False,
                     download: Callable[[str, Path], Path] = download_deb) -> list[PackageDeb]:
    """Download ``names`` and follow meta-packages to the documentation packages they depend on."""
    resolved: list[PackageDeb] = []
    seen: set[str] = set()
    pending = [(name, name) for name in names]
    while pending:
        name, requested = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            deb = download(name, debs)
        except CorpusError as exc:
            if not skip_missing:
                raise
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        fields = deb_fields(deb)
        targets = doc_dependencies(fields)
        if targets:
            pending[:0] = [(t, requested) for t in targets]
        else:
            resolved.append(PackageDeb(fields.get("Package", name), fields.get("Version", "?"), deb, requested))
    return resolved


def extract_deb(deb: Path, work: Path, package: str) -> Path:
    """Unpack ``deb`` into ``work/extract/package`` (skipped when already there) and return that folder."""
    if work.resolve() == Path(work.resolve().anchor):
        raise CorpusError(f"refusing to unpack packages into {work.resolve()}: choose a work folder")
    dest = work / "extract" / package
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=dest.parent))
    try:
        run_command(["dpkg-deb", "-x", str(deb), str(staging)])
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------- documents -> text

def document_format(path: Path) -> str | None:
    """``html``, ``text`` or ``pod`` from the suffix (a trailing ``.gz`` ignored); None for other files."""
    name = path.name.lower()
    return FORMATS.get(os.path.splitext(name.removesuffix(".gz"))[1])


def candidate_files(root: Path) -> list[tuple[Path, str]]:
    """Documents under an unpacked package as ``(path, format)``, HTML first, then by path. Skips hidden
    and Sphinx build folders (``_sources``, ``_static``...), man pages and Debian metadata."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).parts
        if any(p.startswith(("_", ".")) or p in SKIP_DIR_NAMES for p in rel[:-1]) or rel[-1].startswith("."):
            continue
        fmt = document_format(path)
        if fmt is not None and path.is_file() and not path.is_symlink():
            found.append((path, fmt))
    return sorted(found, key=lambda item: (FORMAT_ORDER[item[1]], item[0].relative_to(root).as_posix()))


def read_document(path: Path) -> str:
    """The file's text (gunzipped when it ends in .gz); UTF-8, else Latin-1."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _HTMLText(HTMLParser):
    """Collect visible text, skipping navigation, scripts and permalink markers; keep ``<pre>`` layout."""

    VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
    SKIP_TAGS = frozenset("script style head nav header footer noscript form button select svg iframe "
                          "template".split())
    SKIP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo"})
    SKIP_CLASSES = frozenset({"headerlink", "sphinxsidebar", "related", "footer", "navheader", "navfooter",
                              "breadcrumbs", "toc", "wy-nav-side", "rst-footer-buttons"})
    SKIP_IDS = frozenset({"footer", "toc", "sidebar"})
    PARAGRAPH = frozenset("p div section article main h1 h2 h3 h4 h5 h6 pre table ul ol dl blockquote figure "
                          "title".split())
    LINE = frozenset({"li", "tr", "dt", "dd", "br", "hr", "figcaption", "caption"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool, bool]] = []  # tag, skip, main, pre
        self.skip = self.main = self.pre = 0
        self.all: list[str] = []
        self.main_text: list[str] = []

    def _write(self, text: str) -> None:
        if not text:
            return
        self.all.append(text)
        if self.main:
            self.main_text.append(text)

    def _break(self, tag: str) -> None:
        if not self.skip:
            if tag in self.PARAGRAPH:
                self._write("\n\n")
            elif tag in self.LINE and self.all and not self.all[-1].endswith("\n"):
                self._write("\n")
            elif tag in ("td", "th"):
                self._write(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            self._break(tag)
            return
        a = {k: v or "" for k, v in attrs}
        skip = (tag in self.SKIP_TAGS or a.get("role") in self.SKIP_ROLES or a.get("id") in self.SKIP_IDS
                or bool(self.SKIP_CLASSES.intersection(a.get("class", "").split())))
        main, pre = tag == "main" or a.get("role") == "main", tag == "pre"
        self._break(tag)
        self.stack.append((tag, skip, main, pre))
        self.skip, self.main, self.pre = self.skip + skip, self.main + main, self.pre + pre

    def handle_endtag(self, tag: str) -> None:
        if not any(entry[0] == tag for entry in self.stack):
            return
        while self.stack:
            name, skip, main, pre = self.stack.pop()
            self.skip, self.main, self.pre = self.skip - skip, self.main - main, self.pre - pre
            self._break(name)
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if data.startswith(" ") and (not self.all or self.all[-1][-1] in " \n"):
                data = data[1:]
        self._write(data)

    def text(self) -> str:
        main = "".join(self.main_text)
        return main if main.strip() else "".join(self.all)


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (only its main region when it marks one) with blank-line paragraphs."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text()


_POD_CODE = re.compile(r"([A-Z])<(?:<+\s(.*?)\s>+|([^<>]*))>", re.DOTALL)


def _pod_code(match: re.Match) -> str:
    code, inner = match.group(1), match.group(2) if match.group(2) is not None else match.group(3)
    if code in "XZ":
        return ""
    if code == "E":
        return {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(inner, "")
    if code == "L":
        return inner.split("|", 1)[0] if "|" in inner else inner.replace('"', "")
    return inner


def pod_to_text(pod: str) -> str:
    """Plain text of a Perl POD document: headings and items as text, formatting codes unwrapped,
    ``=begin``/``=end`` and ``=for`` blocks dropped, verbatim (indented) paragraphs kept."""
    out: list[str] = []
    in_block = False
    for para in re.split(r"\n\s*\n", pod):
        if para.startswith("="):
            command, _, rest = para[1:].partition(" ")
            command = command.split("\n", 1)[0]
            if command == "begin":
                in_block = True
            elif command == "end":
                in_block = False
            elif command.startswith("head") or command == "item":
                out.append(rest.strip().lstrip("*").strip())
            continue
        if in_block:
            continue
        while True:
            unwrapped = _POD_CODE.sub(_pod_code, para)
            if unwrapped == para:
                break
            para = unwrapped
        out.append(para.rstrip())
    return "\n\n".join(p for p in out if p)


_RULE_LINE = re.compile(r"^\s*([=\-~^\"'`#*+_.:])\1{2,}\s*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Normalise line ends and blank lines, remove control characters and underline rules (``=====``)."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n"))
    lines = [line.rstrip() for line in text.split("\n") if not _RULE_LINE.match(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def document_text(path: Path, fmt: str) -> str:
    """Read and convert one document to clean plain text."""
    raw = read_document(path)
    if fmt == "html":
        raw = html_to_text(raw)
    elif fmt == "pod":
        raw = pod_to_text(raw)
    return clean_text(raw)


# ---------------------------------------------------------------- filters and deduplication

STOPWORDS = frozenset("""the of and to a in is that for it as with be on not this are by or from an at which can
if will you have was but all they their there more when one has its so may been we these than other into only
also would should must any each such what how some use used no do does then them your our were he she his her
who about because while those where most both""".split())  # common English function words
_WORD = re.compile(r"[A-Za-z]+")
_CODE_LINE = re.compile(r"[;{}]$|^(?:#\s*(?:include|define|if|endif)\b|\$ |# |>>> |\.\.\. |//|/\*|\*/)")


def document_verdict(text: str, settings: CleanSettings) -> str | None:
    """Why the document is dropped (``tiny``, ``not prose``, ``code-heavy``), or None to keep it."""
    words = _WORD.findall(text)
    if len(text) < settings.min_chars or len(words) < settings.min_words:
        return "tiny"
    visible = len(text) - sum(text.count(c) for c in " \n\t")
    letters = sum(len(w) for w in words)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    code_lines = sum(bool(_CODE_LINE.search(line)) for line in lines)
    if letters < settings.min_alpha_ratio * visible or code_lines > settings.max_code_line_share * len(lines):
        return "code-heavy"
    if sum(w.lower() in STOPWORDS for w in words) < settings.min_stopword_share * len(words):
        return "not prose"
    return None


class Deduplicator:
    """Exact duplicates (same lower-cased word sequence) and near-duplicates (shared sampled word n-grams)
    against every document registered so far."""

    def __init__(self, settings: CleanSettings) -> None:
        self.settings = settings
        self.exact: set[bytes] = set()
        self.shingles: set[int] = set()

    def _keys(self, text: str) -> tuple[bytes, set[int]]:
        words = [w.lower() for w in re.findall(r"[A-Za-z0-9]+", text)]
        exact = hashlib.blake2b(" ".join(words).encode(), digest_size=16).digest()
        n, sample = self.settings.shingle_words, self.settings.shingle_sample
        grams = set()
        for i in range(max(len(words) - n + 1, 0)):
            h = int.from_bytes(hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=8).digest(), "little")
            if h % sample == 0:
                grams.add(h)
        return exact, grams

    def check(self, text: str) -> str | None:
        """``duplicate`` / ``near-duplicate`` for a repeat; otherwise registers the text and returns None."""
        exact, grams = self._keys(text)
        if exact in self.exact:
            return "duplicate"
        if grams and len(grams & self.shingles) >= self.settings.near_duplicate_share * len(grams):
            return "near-duplicate"
        self.exact.add(exact)
        self.shingles |= grams
        return None

    def add(self, text: str) -> None:
        """Register a text kept earlier (when resuming) without checking it."""
        exact, grams = self._keys(text)
        self.exact.add(exact)
        self.shingles |= grams


# ---------------------------------------------------------------- shards

def write_json(target: Path, document: Any) -> None:
    """Write JSON atomically (temporary sibling, then rename); the script needs nothing but the standard
    library until it calls effzoo's CLI."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardWriter:
    """JSONL lines into a hidden temporary file; ``commit`` renames it to its final name."""

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target = target
        fd, self.tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
        self.documents = self.characters = 0

    def write(self, text: str, source: str) -> None:
        self.fh.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        self.documents += 1
        self.characters += len(text)

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        self.fh.close()
        Path(self.tmp).unlink(missing_ok=True)


def read_shard_texts(path: Path) -> Iterator[str]:
    """The ``text`` of every line of a finished JSONL shard."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["text"]


def _convert(item: tuple[Path, str, CleanSettings]) -> tuple[str | None, str | None]:
    """``(text, drop reason)`` of one document; runs in worker processes."""
    path, fmt, settings = item
    try:
        text = document_text(path, fmt)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError):
        return None, "unreadable"
    return text, document_verdict(text, settings)


def _converted(items: list[tuple[Path, str, CleanSettings]], workers: int) -> Iterator[tuple[str | None, str | None]]:
    """``_convert`` over ``items`` in order, in ``workers`` processes when more than one."""
    if workers <= 1 or len(items) < 2:
        yield from map(_convert, items)
        return
    import multiprocessing

    with multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn").Pool(
            workers) as pool:
        yield from pool.imap(_convert, items, chunksize=4)


def build_package_text(package: str, root: Path, out: Path, settings: CleanSettings, dedup: Deduplicator,
                       log: Callable[[str], None] = print, workers: int = 1) -> dict[str, Any]:
    """Turn the documents under ``root`` into ``out/text/PACKAGE-NNNN.jsonl`` shards of at most about
    ``settings.shard_chars`` characters. Each finished shard is recorded in ``out/parts/``; a rerun
    registers the finished shards' documents with ``dedup`` and continues after them, and a finished
    package (``out/packages/PACKAGE.json``) is only re-registered."""
    record_file = out / "packages" / f"{package}.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        for shard in record["shards"]:
            for text in read_shard_texts(out / shard):
                dedup.add(text)
        return record
    files = candidate_files(root)
    shards: list[dict[str, Any]] = []
    while (part := out / "parts" / f"{package}-{len(shards):04d}.json").is_file():
        shards.append(json.loads(part.read_text()))
        for text in read_shard_texts(out / shards[-1]["path"]):
            dedup.add(text)
    start = shards[-1]["next_file"] if shards else 0
    if shards:
        log(f"{package}: {len(shards)} shards already written, continuing at file {start} of {len(files)}")
    writer: ShardWriter | None = None
    dropped: Counter = Counter()
    first = start
    try:
        items = [(path, fmt, settings) for path, fmt in files[start:]]
        for index, (text, reason) in enumerate(_converted(items, workers), start):
            reason = reason or dedup.check(text)
            if reason:
                dropped[reason] += 1
                continue
            if writer is None:
                writer = ShardWriter(out / "text" / f"{package}-{len(shards):04d}.jsonl")
            writer.write(text, f"{package}/{files[index][0].relative_to(root).as_posix()}")
            if writer.characters >= settings.shard_chars:
                shards.append(_finish_shard(writer, out, first, index + 1, dropped))
                writer, first, dropped = None, index + 1, Counter()
        if writer is not None:
            shards.append(_finish_shard(writer, out, first, len(files), dropped))
        elif dropped and shards:  # documents dropped after the last shard: count them with it
            shards[-1].update(dropped=dict(Counter(shards[-1]["dropped"]) + dropped), next_file=len(files))
            write_json(out / "parts" / f"{package}-{len(shards) - 1:04d}.json", shards[-1])
        elif dropped:
            shards.append({"path": None, "first_file": first, "next_file": len(files), "documents": 0,
                           "characters": 0, "dropped": dict(dropped)})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    total_dropped: Counter = Counter()
    for shard in shards:
        total_dropped.update(shard["dropped"])
    record = {"package": package, "files": len(files),
              "documents": sum(s["documents"] for s in shards), "characters": sum(s["characters"] for s in shards),
              "dropped": dict(total_dropped), "shards": [s["path"] for s in shards if s["path"]]}
    write_json(record_file, record)
    return record


def _finish_shard(writer: ShardWriter, out: Path, first: int, next_file: int, dropped: Counter) -> dict[str, Any]:
    writer.commit()
    shard = {"path": writer.target.relative_to(out).as_posix(), "first_file": first, "next_file": next_file,
             "documents": writer.documents, "characters": writer.characters, "dropped": dict(dropped)}
    write_json(out / "parts" / f"{writer.target.stem}.json", shard)
    return shard


def copy_license(package: str, root: Path, out: Path) -> tuple[str | None, str | None]:
    """Copy ``usr/share/doc/PACKAGE/copyright`` to ``out/licenses/PACKAGE.copyright``; both paths, or None."""
    source = root / "usr" / "share" / "doc" / package / "copyright"
    if not source.is_file():
        return None, None
    target = out / "licenses" / f"{package}.copyright"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return source.relative_to(root).as_posix(), target.relative_to(out).as_posix()


def check_settings(out: Path, settings: CleanSettings, overwrite: bool) -> None:
    """Refuse to mix shards made with other filter settings; ``overwrite`` starts the text over."""
    file = out / SETTINGS_NAME
    if overwrite:
        for sub in ("text", "parts", "packages", "licenses", "tokenizer", "tokens"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)
    elif file.is_file():
        saved = json.loads(file.read_text())
        diff = {k: (saved.get(k), v) for k, v in asdict(settings).items() if saved.get(k) != v}
        if diff:
            details = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise CorpusError(f"{out} was built with other settings ({details}); use another --out or --overwrite")
    write_json(file, asdict(settings))


# ---------------------------------------------------------------- effzoo tokenization

def effzoo(*args: str) -> None:
    """Run an ``effzoo`` command with this interpreter; its output goes to ours."""
    cmd = [sys.executable, "-m", "effzoo", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise CorpusError(f"`effzoo {' '.join(args)}` failed (see its message above)")


def tokenize_corpus(out: Path, shards: list[str], tokenizer: str, vocab_size: int, val_fraction: float,
                    workers: int) -> dict[str, Any]:
    """Train the BPE tokenizer on ``shards`` when ``tokenizer == "bpe"`` (once), tokenize them into
    ``out/tokens`` (effzoo resumes finished shards) and return the token manifest."""
    spec, files = tokenizer, [str(out / shard) for shard in shards]
    if tokenizer == "bpe":
        spec = str(out / "tokenizer")
        if not (out / "tokenizer" / "tokenizer.json").is_file():
            effzoo("data", "tokenizer", "train", *files, "--out", spec, "--vocab-size", str(vocab_size), "--quiet")
    effzoo("data", "tokenize", *files, "--out", str(out / "tokens"), "--tokenizer", spec,
           "--val-fraction", str(val_fraction), "--workers", str(workers), "--quiet")
    return json.loads((out / "tokens" / "manifest.json").read_text())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the whole pipeline

def prepare(out: Path, packages: list[str], *, work: Path | None = None, settings: CleanSettings = CleanSettings(),
            tokenizer: str | None = "bpe", vocab_size: int = 32000, val_fraction: float = 0.01, workers: int = 2,
            min_tokens: int = 10_000_000, skip_missing: bool = False, overwrite: bool = False,
            log: Callable[[str], None] = print) -> int:
    """The five steps of the module docstring; returns the process exit code (1 when too few tokens)."""
    started = time.perf_counter()
    work = work or out / "work"
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings, overwrite)
    debs = resolve_packages(packages, work / "debs", skip_missing=skip_missing)
    if not debs:
        raise CorpusError("no package could be downloaded")
    dedup = Deduplicator(settings)
    records = []
    for deb in debs:
        root = extract_deb(deb.deb, work, deb.package)
        record = build_package_text(deb.package, root, out, settings, dedup, log=log, workers=workers)
        copyright_path, license_file = copy_license(deb.package, root, out)
        if copyright_path is None:
            log(f"warning: {deb.package} ships no usr/share/doc/{deb.package}/copyright; check its license")
        records.append({"package": deb.package, "version": deb.version, "requested": deb.requested,
                        "deb": deb.deb.name, "copyright": copyright_path, "license_file": license_file,
                        **{k: record[k] for k in ("files", "documents", "characters", "dropped", "shards")}})
        log(f"{deb.package} {deb.version}: {record['documents']:,} documents, {record['characters']:,} characters "
            f"kept of {record['files']:,} files; dropped {record['dropped'] or 'none'}")
    dropped: Counter = Counter()
    for r in records:
        dropped.update(r["dropped"])
    manifest: dict[str, Any] = {
        "format": "effzoo-debian-corpus", "version": 1, "settings": asdict(settings), "packages": records,
        "documents": sum(r["documents"] for r in records), "characters": sum(r["characters"] for r in records),
        "dropped": dict(dropped),
    }
    write_json(out / MANIFEST_NAME, manifest)
    log(f"text: {manifest['documents']:,} documents, {manifest['characters']:,} characters in {out / 'text'}")
    if tokenizer is None:
        log(f"tokenization skipped (--no-tokenize); {time.perf_counter() - started:.0f} s")
        return 0
    shards = [shard for r in records for shard in r["shards"]]
    if not shards:
        raise CorpusError("no document passed the filters: nothing to tokenize")
    tokens = tokenize_corpus(out, shards, tokenizer, vocab_size, val_fraction, workers)
    splits = tokens["splits"]
    manifest["tokens"] = {"dir": "tokens", "tokenizer": tokens["tokenizer"], "dtype": tokens["dtype"],
                          "train": splits["train"]["tokens"], "val": splits["val"]["tokens"],
                          "bytes": folder_bytes(out / "tokens")}
    write_json(out / MANIFEST_NAME, manifest)
    train = splits["train"]["tokens"]
    log(f"total: {manifest['documents']:,} documents, {manifest['characters']:,} characters, "
        f"{train + splits['val']['tokens']:,} tokens ({train:,} train, {splits['val']['tokens']:,} val; "
        f"{tokens['tokenizer']['name']} vocab {tokens['tokenizer']['vocab_size']:,}); "
        f"{out / 'tokens'}: {manifest['tokens']['bytes'] / 1e6:.1f} MB; {time.perf_counter() - started:.0f} s")
    if train < min_tokens:
        print(f"error: only {train:,} training tokens, fewer than the {min_tokens:,} required (--min-tokens); "
              "add packages with --packages, or lower --min-tokens", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="apt-get needs package lists: run `apt-get update` once first when /var/lib/apt/lists is empty. "
               "Rerunning the same command resumes: downloaded and unpacked packages, finished shards, the "
               "trained tokenizer and tokenized shards are kept. Nothing is installed; packages are unpacked "
               "under --work only.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (text/, tokens/, corpus.json)")
    parser.add_argument("--work", type=Path, help="downloads and unpacked packages (default OUT/work)")
    parser.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                        help="comma-separated Debian documentation packages (default %(default)s); earlier "
                             "packages win when documents repeat")
    parser.add_argument("--skip-missing", action="store_true", help="skip packages apt cannot find")
    parser.add_argument("--tokenizer", default="bpe",
                        help="'bpe' (default: train a byte-level BPE on the corpus into OUT/tokenizer), 'byte', "
                             "or a tokenizer.json / tokenizer directory")
    parser.add_argument("--vocab-size", type=int, default=32000, help="BPE vocabulary (default %(default)s)")
    parser.add_argument("--no-tokenize", action="store_true", help="stop after the JSONL shards")
    parser.add_argument("--min-tokens", type=float, default=1e7,
                        help="fail (exit 1) below this many training tokens (default 1e7)")
    parser.add_argument("--val-fraction", type=float, default=0.01,
                        help="share of documents for validation (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for reading documents and tokenizing (default: all cores)")
    parser.add_argument("--min-chars", type=int, default=CleanSettings.min_chars,
                        help="drop documents shorter than this (default %(default)s)")
    parser.add_argument("--shard-mb", type=float, default=CleanSettings.shard_chars / 1e6,
                        help="million characters per JSONL shard (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild text and tokens (keeps downloads)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = CleanSettings(min_chars=args.min_chars, shard_chars=int(args.shard_mb * 1e6))
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    try:
        return prepare(args.out, packages, work=args.work, settings=settings,
                       tokenizer=None if args.no_tokenize else args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, workers=args.workers, min_tokens=int(args.min_tokens),
                       skip_missing=args.skip_missing, overwrite=args.overwrite)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
