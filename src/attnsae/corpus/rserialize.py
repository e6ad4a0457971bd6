"""A minimal reader of R's serialization format and of R lazy-load databases, in pure Python (no R needed).

R packages keep their data sets in a lazy-load database: ``data/Rdata.rdx`` (an index) and ``data/Rdata.rdb`` (the
objects). Both hold R *serializations*: the XDR (big-endian) binary format that ``saveRDS`` and ``serialize``
write, versions 2 and 3, starting ``b"X\\n"``. This module reads what data sets are made of: ``NULL``, symbols,
logical / integer / double / complex / character / raw vectors, lists, pairlists and attributes (so names, classes
and factors), environments and namespaces as references, and the ALTREP compact sequences and wrappers. Anything
else (byte code, S4 persistence hooks, deferred strings) is refused with one clear error.

Values come back as :class:`RObject`; :func:`to_python` turns character vectors, factors and named lists into plain
Python lists and dicts.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from attnsae.errors import AttnsaeError

# SEXP types (R's Rinternals.h) and the pseudo-types of serialize.c.
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP = 9, 10, 13, 14, 15, 16, 17
VECSXP, EXPRSXP, RAWSXP, S4SXP = 19, 20, 24, 25
ALTREP_SXP, BASEENV_SXP, EMPTYENV_SXP = 238, 241, 242
NAMESPACESXP, PACKAGESXP = 249, 248
BASENAMESPACE_SXP, MISSINGARG_SXP, UNBOUNDVALUE_SXP, GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 250, 251, 252, 253, 254, 255

VECTOR_TYPES = {LGLSXP: "logical", INTSXP: "integer", REALSXP: "double", CPLXSXP: "complex", STRSXP: "character",
                VECSXP: "list", EXPRSXP: "expression", RAWSXP: "raw", S4SXP: "S4"}
PAIRLIST_TYPES = {LISTSXP: "pairlist", LANGSXP: "language", CLOSXP: "closure", PROMSXP: "promise", DOTSXP: "dots"}
SPECIAL_ENVS = {GLOBALENV_SXP: "R_GlobalEnv", EMPTYENV_SXP: "R_EmptyEnv", BASEENV_SXP: "base",
                BASENAMESPACE_SXP: "namespace:base", MISSINGARG_SXP: "missing_arg", UNBOUNDVALUE_SXP: "unbound"}
NA_INTEGER = -(2**31)
LATIN1_MASK, BYTES_MASK = 1 << 2, 1 << 1


@dataclass
class RObject:
    """One R value.

    ``type`` is R's ``typeof`` name (``"character"``, ``"integer"``, ``"double"``, ``"logical"``, ``"list"``,
    ``"pairlist"``, ``"symbol"``, ``"NULL"``, ``"environment"``, ...). ``value`` is a ``list`` for vectors (``None``
    for NA, except doubles, whose NA is a NaN), ``list[tuple[str | None, RObject]]`` (tag, value) for pairlists, a
    ``str`` for symbols and environments (the name), ``bytes`` for raw vectors and ``None`` for ``NULL``.
    ``attributes`` maps attribute names (``"names"``, ``"class"``, ``"levels"``, ...) to values.
    """

    type: str
    value: Any = None
    attributes: dict[str, "RObject"] = field(default_factory=dict)

    def attr(self, name: str) -> list | None:
        """An attribute's value (e.g. the ``names`` strings), or ``None`` when absent."""
        a = self.attributes.get(name)
        return a.value if a is not None else None


def _error(what: str) -> AttnsaeError:
    return AttnsaeError(f"cannot read R serialization: {what}")


class _Reader:
    """Reads one XDR serialization from ``data`` (``bytes``), item by item, with R's reference table."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.refs: list[RObject] = []
        self.encoding = "utf-8"

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise _error(f"truncated data (wanted {n} bytes at byte {self.pos} of {len(self.data)})")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.i32()
        if n == -1:  # a long vector: the length follows as two 32-bit halves
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) + lo
        elif n < 0:
            raise _error(f"negative length {n} at byte {self.pos}")
        return n

    def header(self) -> None:
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            raise _error(f"format {fmt!r} is not XDR binary (b'X\\n'); only XDR serializations are read")
        version = self.i32()
        self.take(8)  # the R version that wrote it, and the oldest that reads it
        if version == 3:
            self.encoding = bytes(self.take(self.i32())).decode("ascii").lower().replace("utf8", "utf-8")
        elif version != 2:
            raise _error(f"serialization version {version} (versions 2 and 3 are read)")

    def item(self) -> RObject:
        return self.item_with(self.i32())

    def item_with(self, flags: int) -> RObject:
        """The item whose flags word (type, levels, object / attribute / tag bits) was just read."""
        kind = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        if kind == NILVALUE_SXP:
            return RObject("NULL")
        if kind == REFSXP:
            index = (flags >> 8) or self.i32()
            if not 0 < index <= len(self.refs):
                raise _error(f"reference {index} to an unknown item")
            return self.refs[index - 1]
        if kind in SPECIAL_ENVS:
            return RObject("environment", SPECIAL_ENVS[kind])
        if kind == SYMSXP:
            sym = RObject("symbol", self.item().value)
            self.refs.append(sym)
            return sym
        if kind in (PACKAGESXP, NAMESPACESXP):
            return self.named_env(kind)
        if kind == ENVSXP:
            return self.environment()
        if kind in PAIRLIST_TYPES:
            return self.pairlist(flags)
        if kind == CHARSXP:
            return RObject("char", self.chars(flags >> 12))
        if kind == ALTREP_SXP:
            return self.altrep()
        if kind not in VECTOR_TYPES:
            raise _error(f"unsupported R type {kind} at byte {self.pos}")
        obj = RObject(VECTOR_TYPES[kind], self.vector(kind))
        if has_attr:
            obj.attributes = self.attributes()
        return obj

    def chars(self, levels: int) -> str | None:
        n = self.i32()
        if n == -1:
            return None  # NA_character_
        raw = bytes(self.take(n))
        if levels & (LATIN1_MASK | BYTES_MASK):
            return raw.decode("latin-1")
        try:
            return raw.decode(self.encoding)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")

    def vector(self, kind: int) -> Any:
        n = self.length()
        if kind in (LGLSXP, INTSXP):
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            if kind == LGLSXP:
                return [None if v == NA_INTEGER else bool(v) for v in ints]
            return [None if v == NA_INTEGER else v for v in ints]
        if kind == REALSXP:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind == CPLXSXP:
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        if kind == STRSXP:
            return [self.item().value for _ in range(n)]
        if kind == RAWSXP:
            return bytes(self.take(n))
        if kind == S4SXP:
            return None
        return [self.item() for _ in range(n)]  # VECSXP, EXPRSXP

    def attributes(self) -> dict[str, RObject]:
        attrs = self.item()
        if attrs.type != "pairlist":
            raise _error(f"attributes are a {attrs.type}, not a pairlist")
        return {tag: value for tag, value in attrs.value if tag is not None}

    def pairlist(self, flags: int) -> RObject:
        """A pairlist (or call, closure, ...): its cells, read in a loop rather than by recursion on the tail."""
        obj = RObject(PAIRLIST_TYPES[flags & 0xFF], [])
        while True:
            attributes = self.attributes() if flags & (1 << 9) else {}
            if not obj.value:
                obj.attributes = attributes
            tag = self.item().value if flags & (1 << 10) else None
            obj.value.append((tag, self.item()))
            flags = self.i32()
            if flags & 0xFF != LISTSXP:
                tail = self.item_with(flags)
                if tail.type != "NULL":
                    obj.value.append((None, tail))
                return obj

    def named_env(self, kind: int) -> RObject:
        if self.i32() != 0:
            raise _error("a package or namespace reference in an unknown form")
        names = [self.item().value for _ in range(self.i32())]
        env = RObject("environment", ("package:" if kind == PACKAGESXP else "namespace:") + ":".join(map(str, names)))
        self.refs.append(env)
        return env

    def environment(self) -> RObject:
        """An environment: its variables (from the frame and the hash table) become a pairlist-like value."""
        env = RObject("environment", [])
        self.refs.append(env)  # before its contents, which may refer to it
        self.i32()  # locked
        self.item()  # enclosing environment
        frame, table = self.item(), self.item()
        env.attributes = {} if (a := self.item()).type == "NULL" else {t: v for t, v in a.value if t is not None}
        cells = list(frame.value or [])
        for bucket in table.value or []:
            cells.extend(bucket.value or [])
        env.value = cells
        return env

    def altrep(self) -> RObject:
        """An ALTREP vector: R's compact integer / real sequences and the ``wrap_*`` wrappers."""
        info, state, attrs = self.item(), self.item(), self.item()
        cls = info.value[0][1].value if info.type == "pairlist" and info.value else "?"
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = state.value[:3]
            obj = RObject("integer" if cls == "compact_intseq" else "double",
                          [(int if cls == "compact_intseq" else float)(start + i * step) for i in range(int(n))])
        elif cls.startswith("wrap_"):
            obj = RObject(state.value[0].type, state.value[0].value, dict(state.value[0].attributes))
        else:
            raise _error(f"unsupported ALTREP class {cls!r}")
        if attrs.type == "pairlist":
            obj.attributes = {t: v for t, v in attrs.value if t is not None}
        return obj


def unserialize(data: bytes) -> RObject:
    """Read one R serialization (``bytes`` starting ``b"X\\n"``; gzip-compressed, as ``saveRDS`` writes, too)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    reader = _Reader(data)
    reader.header()
    return reader.item()


def to_python(obj: RObject) -> Any:
    """Plain Python: factors become their level strings, named lists dicts, other vectors lists, ``NULL`` None."""
    levels = obj.attr("levels")
    if obj.type == "integer" and levels is not None and "factor" in (obj.attr("class") or []):
        return [None if i is None else levels[i - 1] for i in obj.value]
    if obj.type in ("list", "expression"):
        items = [to_python(v) for v in obj.value]
        names = obj.attr("names")
        return dict(zip(names, items)) if names is not None else items
    if obj.type == "pairlist":
        return {tag: to_python(v) for tag, v in obj.value}
    return obj.value


def _lazyload_entry(blob: bytes, compression: int) -> bytes:
    """Decompress one lazy-load database entry: a 4-byte big-endian length, then (type 2 / 3) a method byte."""
    if len(blob) < 4:
        raise _error("a lazy-load entry shorter than its header")
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    method = "Z"
    if compression in (2, 3):
        method, body = chr(blob[4]), blob[5:]
    try:
        out = {"Z": zlib.decompress, "2": bz2.decompress, "X": lzma.decompress, "0": bytes}[method](body)
    except KeyError:
        raise _error(f"unknown lazy-load compression {method!r}") from None
    except (zlib.error, OSError, lzma.LZMAError, ValueError) as e:
        raise _error(f"a corrupt lazy-load entry ({e})") from None
    if len(out) != size:
        raise _error(f"a lazy-load entry of {len(out)} bytes, not {size}")
    return out


def read_lazyload_db(rdb: bytes, rdx: bytes) -> dict[str, RObject]:
    """The objects of an R lazy-load database (``Rdata.rdb`` bytes and its ``Rdata.rdx`` index), by name."""
    index = to_python(unserialize(rdx if rdx[:2] in (b"\x1f\x8b", b"X\n") else _lazyload_entry(rdx, 1)))
    if not isinstance(index, dict) or "variables" not in index:
        raise _error("the .rdx index has no 'variables'")
    compressed = index.get("compressed") or [True]
    compression = int(compressed[0])
    objects = {}
    for name, (offset, length) in index["variables"].items():
        objects[name] = unserialize(_lazyload_entry(rdb[offset: offset + length], compression))
    return objects
