"""Corpus: text sources -> token stream -> fixed-length contexts.

The paper's recipe: documents are tokenised, joined with an end-of-text token, cut into rows of
``context_size`` and a BOS token is forced at position 0 of every row. Sources:

* ``"stdlib"``: the running interpreter's standard-library ``.py`` files, sorted by relative path, split into
  train / validation by a hash of that path (so validation text is never trained on);
* ``"english"``: ~8 M words of public-domain and permissive English (books, speeches, e-mails, chats, plays) built
  from six pinned registry packages and cached on first use; split by a hash of each document's key
  (``attnsae.corpus.english``, ``docs/CORPORA.md``);
* a local file or folder of ``.txt`` / ``.jsonl`` / ``.parquet`` files (folders are split by relative path,
  single files by document index);
* any other string is taken as a Hugging Face dataset name (or a local dataset script / directory understood by
  ``datasets.load_dataset``) and streamed.

Shapes: token streams are ``int64 [n_tokens]``; contexts are ``int64 [n_rows, context_size]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
from tqdm.auto import tqdm

from attnsae.errors import AttnsaeError

Split = Literal["train", "validation"]
SPLITS: tuple[str, ...] = ("train", "validation")
LOCAL_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".parquet")
NAMED_SOURCES: tuple[str, ...] = ("stdlib", "english")  # corpora attnsae builds itself
DEFAULT_VAL_FRACTION = 0.05


@dataclass
class CorpusStats:
    """What reading a source did: documents and bytes kept, files skipped (unreadable or not UTF-8)."""

    n_docs: int = 0
    n_bytes: int = 0
    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)

    def skip(self, what: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < 20:
            self.skipped.append(what)


def split_of(key: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> Split:
    """Deterministic split of a document key (a relative path or an index) by its SHA-1."""
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "validation" if h < val_fraction else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AttnsaeError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


# ----------------------------------------------------------------------------------------------- stdlib


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(split: Split = "train", val_fraction: float = DEFAULT_VAL_FRACTION) -> list[Path]:
    """The standard library's ``.py`` files of one split, sorted by path relative to the stdlib root.

    ``site-packages`` (third-party code) is excluded.
    """
    _check_split(split)
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")) or "/site-packages/" in rel:
            continue
        if split_of(rel, val_fraction) == split:
            files.append((rel, path))
    return [p for _, p in sorted(files)]


def _read_text_file(path: Path, stats: CorpusStats) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        stats.skip(str(path))
        return None
    return text


def iter_stdlib(split: Split, stats: CorpusStats, val_fraction: float = DEFAULT_VAL_FRACTION) -> Iterator[str]:
    for path in stdlib_files(split, val_fraction):
        text = _read_text_file(path, stats)
        if text:
            yield text


# ----------------------------------------------------------------------------------------------- local files


def _iter_file_docs(path: Path, text_field: str, stats: CorpusStats) -> Iterator[str]:
    """Documents of one local file: a .txt is one document; .jsonl and .parquet give one per row."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = _read_text_file(path, stats)
        if text:
            yield text
    elif suffix == ".jsonl":
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            stats.skip(str(path))
            return
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                stats.skip(f"{path}:{i + 1}")
                continue
            text = row.get(text_field) if isinstance(row, dict) else None
            if isinstance(text, str) and text:
                yield text
            else:
                stats.skip(f"{path}:{i + 1} (no {text_field!r} field)")
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=[text_field])
        except ImportError as e:
            raise AttnsaeError("reading .parquet needs pyarrow: pip install 'attnsae[data]'") from e
        except Exception:  # pyarrow raises many types for bad files / missing columns
            stats.skip(str(path))
            return
        for text in table.column(text_field).to_pylist():
            if isinstance(text, str) and text:
                yield text


def local_files(root: Path, split: Split | None, val_fraction: float) -> list[Path]:
    """Files of a local folder with a known suffix, sorted, restricted to one split by relative path."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
    if split is None:
        return files
    return [p for p in files if split_of(p.relative_to(root).as_posix(), val_fraction) == split]


def iter_local(
    path: Path, split: Split | None, text_field: str, stats: CorpusStats, val_fraction: float
) -> Iterator[str]:
    """Documents of a local file or folder. ``split=None`` takes everything."""
    if path.is_dir():
        for f in local_files(path, split, val_fraction):
            yield from _iter_file_docs(f, text_field, stats)
        return
    if not path.is_file():  # a FIFO (whose read would wait forever), a device, a socket
        raise AttnsaeError(f"corpus {path} is not a regular file or a folder; give a .txt, .jsonl or .parquet file")
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        raise AttnsaeError(f"unsupported corpus file {path}: use .txt, .jsonl or .parquet, or a folder of them")
    for i, doc in enumerate(_iter_file_docs(path, text_field, stats)):
        # A single .txt file has one document: it belongs to every split rather than to none.
        if split is None or path.suffix.lower() == ".txt" or split_of(str(i), val_fraction) == split:
            yield doc


# ----------------------------------------------------------------------------------------------- HF datasets


def iter_hf(name: str, split: Split, text_field: str, stats: CorpusStats) -> Iterator[str]:
    """Stream a Hugging Face dataset (a hub name, or a local dataset directory / file understood by datasets)."""
    try:
        import datasets
    except ImportError as e:
        raise AttnsaeError("Hugging Face datasets need the datasets package: pip install 'attnsae[data]'") from e
    try:
        if _is_saved_hf_dataset(Path(name)):
            ds = datasets.load_from_disk(name)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(name, split=split, streaming=True)
    except (ValueError, KeyError):
        if split != "train":
            raise AttnsaeError(f"dataset {name!r} has no {split!r} split; pass split='train'") from None
        raise
    except Exception as e:  # offline / unknown name: one clear line
        raise AttnsaeError(
            f"could not load dataset {name!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "check the name, your network, or pass a local file or folder"
        ) from None
    for row in ds:
        text = row.get(text_field)
        if isinstance(text, str) and text:
            yield text
        else:
            stats.skip(f"row without {text_field!r}")


# ----------------------------------------------------------------------------------------------- documents


def iter_documents(
    source: str = "stdlib",
    split: Split = "train",
    text_field: str = "text",
    stats: CorpusStats | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> Iterator[str]:
    """Documents (strings) of a source's split, in a deterministic order. Counts into ``stats``."""
    _check_split(split)
    if not source:
        raise AttnsaeError("the corpus source is empty; give stdlib, english, a local file or folder, or a dataset "
                           "name")
    stats = stats if stats is not None else CorpusStats()
    if source == "stdlib":
        docs: Iterable[str] = iter_stdlib(split, stats, val_fraction)
    elif source == "english":
        from attnsae.corpus.english import iter_english  # imports this module: import it on use

        docs = iter_english(split, val_fraction)
    elif source.startswith("hf:"):
        docs = iter_hf(source[3:], split, text_field, stats)
    elif Path(source).exists() and not _is_saved_hf_dataset(Path(source)):
        docs = iter_local(Path(source), split, text_field, stats, val_fraction)
    else:
        docs = iter_hf(source, split, text_field, stats)
    for doc in docs:
        stats.n_docs += 1
        stats.n_bytes += len(doc.encode("utf-8"))
        yield doc


def _is_saved_hf_dataset(path: Path) -> bool:
    """A folder written by ``datasets`` ``save_to_disk`` rather than a plain folder of text files."""
    return path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


# ----------------------------------------------------------------------------------------------- tokens


def tokenize_documents(
    tokenizer,
    docs: Iterable[str],
    eot_id: int,
    batch_size: int = 256,
    progress: bool = True,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Tokenise documents in batches and join them, each followed by ``eot_id``.

    Returns the token stream ``int64 [n_tokens]``. Stops early once ``max_tokens`` are collected.
    """
    chunks: list[np.ndarray] = []
    n = 0
    batch: list[str] = []
    bar = tqdm(desc="tokenising", unit="tok", unit_scale=True, disable=not progress)

    def flush() -> None:
        nonlocal n
        enc = _encode_batch(tokenizer, batch)
        for ids in enc:
            arr = np.empty(len(ids) + 1, dtype=np.int64)
            arr[:-1] = ids
            arr[-1] = eot_id
            chunks.append(arr)
            n += len(arr)
        bar.update(sum(len(ids) + 1 for ids in enc))
        batch.clear()

    try:
        for doc in docs:
            batch.append(doc)
            if len(batch) >= batch_size:
                flush()
                if max_tokens is not None and n >= max_tokens:
                    break
        if batch and (max_tokens is None or n < max_tokens):
            flush()
    finally:  # also on an error from the source, so that its message starts on a line of its own
        bar.close()
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return stream[:max_tokens] if max_tokens is not None else stream


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Fast path for HF fast tokenizers (rust, parallel), fallback to the generic call."""
    backend = getattr(tokenizer, "_tokenizer", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    if hasattr(tokenizer, "encode_batch"):  # a bare tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def make_contexts(stream: np.ndarray, context_size: int, bos_id: int | None) -> np.ndarray:
    """Cut a token stream into rows ``[n_rows, context_size]``.

    With ``bos_id`` set, every row is ``[bos] + context_size - 1`` stream tokens (BOS forced at position 0);
    otherwise rows are plain consecutive slices. A trailing partial row is dropped.
    """
    if context_size < 1 or (bos_id is not None and context_size < 2):
        raise AttnsaeError(f"context_size must be at least {2 if bos_id is not None else 1}, got {context_size}")
    body = context_size - 1 if bos_id is not None else context_size
    n_rows = len(stream) // body
    rows = stream[: n_rows * body].reshape(n_rows, body)
    if bos_id is None:
        return rows.copy()
    out = np.empty((n_rows, context_size), dtype=np.int64)
    out[:, 0] = bos_id
    out[:, 1:] = rows
    return out


@dataclass
class Corpus:
    """Token contexts of one source split, plus how they were made.

    ``tokens``: ``int64 [n_rows, context_size]``.
    """

    tokens: np.ndarray
    source: str
    split: str
    context_size: int
    prepend_bos: bool
    stats: CorpusStats

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)


def load_corpus(
    tokenizer,
    source: str = "stdlib",
    split: Split = "train",
    context_size: int = 128,
    prepend_bos: bool = True,
    text_field: str = "text",
    max_tokens: int | None = None,
    n_ctx: int | None = None,
    progress: bool = True,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> Corpus:
    """Read, tokenise and cut a source split into contexts.

    ``n_ctx`` (the model's) rejects a ``context_size`` the model cannot take. An empty result is an error.
    """
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
        raise AttnsaeError(f"context_size must be an integer >= 2 (BOS and one token), got {context_size!r}")
    if max_tokens is not None and max_tokens < 1:
        raise AttnsaeError(f"max_tokens must be positive, got {max_tokens}")
    if n_ctx is not None and context_size > n_ctx:
        raise AttnsaeError(f"context_size {context_size} is larger than the model's n_ctx {n_ctx}; use <= {n_ctx}")
    eot_id = eot_token_id(tokenizer)
    stats = CorpusStats()
    docs = iter_documents(source, split, text_field, stats, val_fraction)
    stream = tokenize_documents(tokenizer, docs, eot_id, progress=progress, max_tokens=max_tokens)
    bos = bos_token_id(tokenizer) if prepend_bos else None
    rows = make_contexts(stream, context_size, bos)
    if len(rows) == 0:
        raise AttnsaeError(
            f"corpus {source!r} split {split!r} gave no full context of {context_size} tokens "
            f"({stats.n_docs} documents, {len(stream)} tokens, {stats.n_skipped} skipped); give it more text"
        )
    return Corpus(rows, source, split, context_size, prepend_bos, stats)


def eot_token_id(tokenizer) -> int:
    """The document separator: EOS, else SEP (encoders), else the BOS token."""
    return _special_id(tokenizer, ("eos_token", "sep_token", "bos_token", "cls_token"), "end-of-text (EOS or SEP)")


def bos_token_id(tokenizer) -> int:
    """The token every context starts with: BOS, else CLS (encoders), else EOS."""
    return _special_id(tokenizer, ("bos_token", "cls_token", "eos_token"), "BOS or CLS")


def _special_id(tokenizer, names: tuple[str, ...], what: str) -> int:
    """The id of the first of ``names`` that is a real token of the vocabulary. A token the tokenizer merely names
    but maps to its unknown token (a BOS synthesised for an encoder, which maps to ``[UNK]``) is passed over."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for name in names:
        tid, token = getattr(tokenizer, name + "_id", None), getattr(tokenizer, name, None)
        if tid is None or (unk is not None and int(tid) == int(unk) and str(token) != str(tokenizer.unk_token)):
            continue
        return int(tid)
    raise AttnsaeError(f"the tokenizer has no {what} token in its vocabulary; set one (tokenizer.bos_token = ...)")


def fingerprint(files: list[Path]) -> str:
    """SHA-256 over (relative path, content) of files, for model cards and caches."""
    h = hashlib.sha256()
    root = stdlib_root()
    for p in files:
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = os.fspath(p)
        h.update(rel.encode())
        h.update(p.read_bytes())
    return h.hexdigest()
