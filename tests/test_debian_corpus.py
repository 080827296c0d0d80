"""benchmarks/prepare_debian_corpus.py on small files made here: no network, no apt."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_debian_corpus.py"
NOUNS = ("driver kernel table query module buffer device thread parser socket option index cluster record "
         "scheduler packet journal window cache compiler library function network server client").split()
VERBS = "reads writes checks stores updates returns handles builds sends locks flushes maps".split()
ADJS = "shared local remote quick stable large small default optional virtual simple careful".split()


@pytest.fixture(scope="module")
def pdc():
    spec = importlib.util.spec_from_file_location("prepare_debian_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and worker processes look the module up by name
    spec.loader.exec_module(module)
    return module


def prose(seed: int, sentences: int = 12) -> str:
    """English-like prose, different for every seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        n1, n2, n3 = rng.sample(NOUNS, 3)
        out.append(f"The {rng.choice(ADJS)} {n1} of the {n2} {rng.choice(VERBS)} a {rng.choice(ADJS)} {n3}, "
                   f"and it is {rng.choice(ADJS)} when this {rng.choice(NOUNS)} {rng.choice(VERBS)} that "
                   f"{rng.choice(NOUNS)} with {seed * 7 + rng.randrange(1000)} entries.")
    return " ".join(out)


def html_page(body: str, title: str = "Page") -> str:
    return (f"<html><head><title>{title}</title><script>var nav = 1;</script></head><body>"
            f"<div role='navigation'>Previous topic Next topic</div><div class='body' role='main'>"
            f"<h1>{title}<a class='headerlink' href='#x'>¶</a></h1>{body}</div>"
            f"<div class='footer'>Copyright footer</div></body></html>")


def test_html_to_text_keeps_main_region_and_layout(pdc):
    page = html_page("<p>Tom &amp; Jerry\n   run   fast.</p><pre>if x:\n    y = 1</pre><ul><li>one</li><li>two</li>"
                     "</ul><div class='sphinxsidebar'>Quick search</div><p>Last <code>word</code>.</p>", "Guide")
    text = pdc.clean_text(pdc.html_to_text(page))
    assert text == "Guide\n\nTom & Jerry run fast.\n\nif x:\n    y = 1\n\none\ntwo\n\nLast word."
    # without a main region: the body, still without navigation, footer or scripts
    plain = "<html><body><nav>menu</nav><p>First</p><p>Second <br>line</p><footer>foot</footer><style>p{}</style>"
    assert pdc.clean_text(pdc.html_to_text(plain)) == "First\n\nSecond\nline"


def test_pod_to_text(pdc):
    pod = ("=head1 NAME\n\nperlthing - B<bold> and C<< $x->y >> with L<the docs|perlfunc> X<index>and "
           "E<lt>tag E<gt>\n\n=over 4\n\n=item * first\n\nItem body.\n\n=back\n\n"
           "=begin html\n\n<p>raw</p>\n\n=end html\n\n"
           "    verbatim code;\n\n=cut\n")
    assert pdc.pod_to_text(pod) == ("NAME\n\nperlthing - bold and $x->y with the docs and <tag >\n\nfirst\n\n"
                                    "Item body.\n\n    verbatim code;")


def test_read_document_and_clean_text(pdc, tmp_path):
    (tmp_path / "a.rst.gz").write_bytes(gzip.compress(b"Title\n=====\n\n\n\nBody\x07 text  \r\nend"))
    (tmp_path / "b.txt").write_bytes("caf\xe9 latin-1".encode("latin-1"))
    assert pdc.clean_text(pdc.read_document(tmp_path / "a.rst.gz")) == "Title\n\nBody text\nend"
    assert pdc.read_document(tmp_path / "b.txt") == "café latin-1"
    assert pdc.document_format(tmp_path / "x.HTML.gz") == "html" and pdc.document_format(tmp_path / "x.yaml") is None


def test_candidate_files_order_and_exclusions(pdc, tmp_path):
    files = ["doc/b.txt", "doc/a.rst.gz", "doc/z.html", "doc/guide.pod", "doc/notes.md", "doc/conf.yaml",
             "html/_sources/z.rst.txt", "man/man1/x.txt", "doc/.hidden.txt", "doc/.cache/c.txt",
             "doc/translations/it.rst"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "doc" / "link.txt").symlink_to("/etc/hostname")
    found = [(p.relative_to(tmp_path).as_posix(), fmt) for p, fmt in pdc.candidate_files(tmp_path)]
    assert found == [("doc/z.html", "html"), ("doc/a.rst.gz", "text"), ("doc/b.txt", "text"),
                     ("doc/guide.pod", "pod"), ("doc/notes.md", "text")]


def test_document_verdict(pdc):
    s = pdc.CleanSettings()
    assert pdc.document_verdict(prose(1), s) is None
    assert pdc.document_verdict("The driver reads a table.", s) == "tiny"
    code = "\n".join(f"static int f{i}(struct dev *d) {{\n\tint r = d->ops[{i}];\n\treturn r;\n}}" for i in range(20))
    assert pdc.document_verdict(code + "\nThe code above is the driver.", s) == "code-heavy"
    italian = " ".join(["Il modulo del kernel gestisce la memoria condivisa quando il dispositivo viene aperto"] * 12)
    assert pdc.document_verdict(italian, s) == "not prose"
    index = "\n".join(f"{NOUNS[i % 20]} {VERBS[i % 12]}, {ADJS[i % 12]} {NOUNS[i % 7]} (module)" for i in range(80))
    assert pdc.document_verdict(index, s) == "not prose"


def test_deduplicator_exact_and_near(pdc):
    dedup = pdc.Deduplicator(pdc.CleanSettings())
    first = prose(1, 30)
    assert dedup.check(first) is None
    assert dedup.check("  " + first.upper().replace(" ", "\n")) == "duplicate"
    marked_up = "Section\n=======\n\n" + first.replace("The ", "The ``", 3) + " One more closing sentence here."
    assert dedup.check(marked_up) == "near-duplicate"
    assert dedup.check(prose(2, 30)) is None
    later = pdc.Deduplicator(pdc.CleanSettings())
    later.add(first)
    assert later.check(first) == "duplicate"


def test_control_fields_and_meta_packages(pdc):
    fields = pdc.parse_control("Package: linux-doc\nVersion: 6.1-2\nInstalled-Size: 10\n"
                               "Depends: linux-doc-6.1 (= 6.1-2), libfoo:any, misc | alt-doc\n"
                               "Description: meta\n more text\n")
    assert fields["Description"] == "meta\nmore text"
    assert pdc.doc_dependencies(fields) == ["linux-doc-6.1"]
    assert pdc.doc_dependencies({**fields, "Installed-Size": "194165"}) == []
    assert pdc.doc_dependencies({"Package": "x"}) == []


def _package_tree(root: Path) -> None:
    docs = root / "usr" / "share" / "doc" / "demo-doc"
    docs.mkdir(parents=True)
    for i in range(6):
        (docs / f"page{i}.html").write_text(html_page(f"<p>{prose(10 + i)}</p>", f"Page {i}"))
    (docs / "zcopy.html").write_text(html_page(f"<p>{prose(11)}</p>", "Page 1"))  # page1 again: a duplicate
    (docs / "copy.txt").write_text(prose(10))  # page0's text without its title: a near-duplicate
    (docs / "tiny.txt").write_text("Too short.")
    (docs / "code.rst.gz").write_bytes(gzip.compress("\n".join(f"int x{i} = f({i});" for i in range(200)).encode()))
    (docs / "copyright").write_text("Format: machine-readable\nLicense: GPL-2\n")


def _shards(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "text").glob("*.jsonl"))}


def test_package_text_shards_and_resume(pdc, tmp_path):
    root, out = tmp_path / "pkg", tmp_path / "out"
    _package_tree(root)
    settings = pdc.CleanSettings(shard_chars=2500)
    record = pdc.build_package_text("demo-doc", root, out, settings, pdc.Deduplicator(settings), log=lambda m: None)
    assert record["documents"] == 6 and record["files"] == 10
    assert record["dropped"] == {"duplicate": 1, "near-duplicate": 1, "tiny": 1, "code-heavy": 1}
    shards = _shards(out)
    assert len(shards) == len(record["shards"]) >= 2
    rows = [json.loads(line) for text in shards.values() for line in text.splitlines()]
    assert [r["source"] for r in rows] == [f"demo-doc/usr/share/doc/demo-doc/page{i}.html" for i in range(6)]
    assert rows[0]["text"].startswith("Page 0\n\nThe ") and "¶" not in rows[0]["text"]
    assert record["characters"] == sum(len(r["text"]) for r in rows)

    # interrupted after the first shard: the rest is rebuilt, the finished shard is untouched
    first = out / record["shards"][0]
    stamp = first.stat().st_mtime_ns
    (out / "packages" / "demo-doc.json").unlink()
    for shard in record["shards"][1:]:
        (out / shard).unlink()
        (out / "parts" / f"{Path(shard).stem}.json").unlink()
    again = pdc.build_package_text("demo-doc", root, out, settings, pdc.Deduplicator(settings), log=lambda m: None)
    assert again == record and _shards(out) == shards and first.stat().st_mtime_ns == stamp

    # finished package: nothing rewritten, but its documents are registered for deduplication
    dedup = pdc.Deduplicator(settings)
    assert pdc.build_package_text("demo-doc", root, out, settings, dedup) == record
    assert dedup.check(rows[3]["text"]) == "duplicate"

    # two worker processes give the same shards
    out2 = tmp_path / "out2"
    pdc.build_package_text("demo-doc", root, out2, settings, pdc.Deduplicator(settings), log=lambda m: None,
                           workers=2)
    assert _shards(out2) == shards


def test_settings_mismatch_refused_and_root_refused(pdc, tmp_path):
    pdc.check_settings(tmp_path, pdc.CleanSettings(), overwrite=False)
    with pytest.raises(pdc.CorpusError, match="min_chars: 400 there, 100 now"):
        pdc.check_settings(tmp_path, pdc.CleanSettings(min_chars=100), overwrite=False)
    (tmp_path / "text").mkdir()
    pdc.check_settings(tmp_path, pdc.CleanSettings(min_chars=100), overwrite=True)
    assert not (tmp_path / "text").exists()
    with pytest.raises(pdc.CorpusError, match="refusing to unpack"):
        pdc.extract_deb(tmp_path / "x.deb", Path("/"), "x")


def _build_deb(tmp_path: Path, name: str, control: str, tree=None) -> Path:
    pkg = tmp_path / "build" / name
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\n"
                                            f"Maintainer: Test <t@example.org>\n{control}Description: test\n")
    if tree:
        tree(pkg)
    deb = tmp_path / "debs" / f"{name}_1.0-1_all.deb"
    deb.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (not a Debian system)")
def test_tiny_deb_end_to_end(pdc, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    _build_deb(work, "demo-doc", "", _package_tree)
    _build_deb(work, "demo-doc-meta", "Installed-Size: 1\nDepends: demo-doc (= 1.0-1)\n")

    def no_apt(name: str, debs: Path) -> Path:
        found = pdc.find_deb(name, debs)
        if found is None:
            raise pdc.CorpusError(f"no {name}")
        return found

    assert pdc.resolve_packages(["missing-doc", "demo-doc-meta"], work / "debs", skip_missing=True,
                                download=no_apt) == [
        pdc.PackageDeb("demo-doc", "1.0-1", work / "debs" / "demo-doc_1.0-1_all.deb", "demo-doc-meta")]

    # the .debs are already in WORK/debs, so apt-get is never called
    args = ["--out", str(out), "--work", str(work), "--packages", "demo-doc-meta", "--tokenizer", "byte",
            "--workers", "1", "--shard-mb", "0.003"]
    assert pdc.main(args + ["--min-tokens", "1e9"]) == 1
    assert "fewer than the 1,000,000,000 required" in capsys.readouterr().err
    manifest = json.loads((out / "corpus.json").read_text())
    (package,) = manifest["packages"]
    assert (package["package"], package["version"], package["requested"]) == ("demo-doc", "1.0-1", "demo-doc-meta")
    assert package["copyright"] == "usr/share/doc/demo-doc/copyright"
    assert (out / package["license_file"]).read_text().startswith("Format:")
    texts = [json.loads(line)["text"] for shard in package["shards"] for line in (out / shard).open()]
    assert manifest["documents"] == len(texts) == 6 and manifest["characters"] == sum(map(len, texts))
    tokens = manifest["tokens"]
    assert tokens["train"] + tokens["val"] == sum(len(t.encode()) + 1 for t in texts)  # bytes + one EOS each

    extracted = work / "extract" / "demo-doc"
    stamps = {p: p.stat().st_mtime_ns for p in [extracted, *(out / s for s in package["shards"])]}
    assert pdc.main(args + ["--min-tokens", "100"]) == 0
    assert "6 documents" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(os.listdir(work / "debs")) == ["demo-doc-meta_1.0-1_all.deb", "demo-doc_1.0-1_all.deb"]
