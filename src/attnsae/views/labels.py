"""Feature labels a user writes in the Circuit Explorer, kept in a local JSON file (no torch, no model).

The file holds the labels of any number of SAEs, each under its fingerprint (:func:`attnsae.sae.checks.fingerprint`
of its weights), so a label follows the SAE's weights whichever folder they are loaded from, and an SAE retrained
in place starts blank::

    {"format": "attnsae-labels", "version": 1,
     "saes": {"8993580b4f89acb8": {"layer": 0, "labels": {"12": "closing bracket", ...}}, ...}}

Default file: ``$ATTNSAE_HOME/labels.json`` (:func:`default_labels_path`); ``attnsae explore --labels FILE`` picks
another. A file that exists must be such a labels file (one line refuses anything else: attnsae never overwrites a
file it did not write); a new one is created on the first label saved. Every write re-reads the file under a lock
on its folder and merges, so two explorers writing labels of different SAEs keep both, then replaces it atomically
(a temporary sibling renamed into place: a reader sees the old file or the new one, never half of one).

Bounds: a label is at most :data:`MAX_LABEL_CHARS` characters (whitespace runs, newlines included, become one
space; an empty label deletes it), a file at most :data:`MAX_LABELS` labels and :data:`MAX_FILE_BYTES` bytes.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import threading
from pathlib import Path
from typing import Mapping

from attnsae.downloads import cache_home
from attnsae.errors import AttnsaeError
from attnsae.io import atomic_write_json, check_writable_dir, dir_lock, read_json

FORMAT = "attnsae-labels"
VERSION = 1
MAX_LABEL_CHARS = 120
MAX_LABELS = 10_000
MAX_FILE_BYTES = 4 * 2**20
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def default_labels_path() -> Path:
    """``$ATTNSAE_HOME/labels.json`` (default ``~/.cache/attnsae/labels.json``)."""
    return cache_home() / "labels.json"


def clean_label(text: str) -> str:
    """``text`` as it is kept: whitespace runs (newlines, tabs) one space, control characters dropped, stripped;
    refused past :data:`MAX_LABEL_CHARS`."""
    text = re.sub(r"\s+", " ", "".join(c for c in text if c.isprintable() or c.isspace())).strip()
    if len(text) > MAX_LABEL_CHARS:
        raise AttnsaeError(f"a label is at most {MAX_LABEL_CHARS} characters, this one has {len(text)}: shorten it")
    return text


def _not_labels(path: Path, why: str) -> AttnsaeError:
    return AttnsaeError(f"--labels {path} is not a labels file attnsae wrote ({why}); attnsae never overwrites other "
                        "files: give a new path or a labels file")


def read_labels_file(path: str | os.PathLike) -> dict[str, dict]:
    """The ``saes`` of labels file ``path`` (``{}`` when there is no file yet), checked: any other file, or a labels
    file past the bounds, is refused with one line."""
    path = Path(path)
    if not path.exists():
        if os.path.islink(path):
            raise _not_labels(path, "a link to nothing")
        check_writable_dir(path.parent)
        return {}
    if not path.is_file():
        raise _not_labels(path, "not a file")
    try:
        data = read_json(path, MAX_FILE_BYTES)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _not_labels(path, f"not JSON of at most {MAX_FILE_BYTES >> 20} MiB: {type(e).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _not_labels(path, f'no "format": "{FORMAT}"')
    if data.get("version") != VERSION:
        raise _not_labels(path, f"version {data.get('version')!r}, not {VERSION}: it is from another attnsae")
    saes = data.get("saes")
    if not isinstance(saes, dict) or not all(_valid_entry(k, v) for k, v in saes.items()):
        raise _not_labels(path, '"saes" is not {fingerprint: {"layer": int, "labels": {"feature": "text"}}}')
    if sum(len(v["labels"]) for v in saes.values()) > MAX_LABELS:
        raise _not_labels(path, f"over {MAX_LABELS:,} labels")
    return saes


def _valid_entry(fingerprint: object, entry: object) -> bool:
    if not (isinstance(fingerprint, str) and _FINGERPRINT.match(fingerprint) and isinstance(entry, dict)):
        return False
    labels = entry.get("labels")
    return (isinstance(entry.get("layer"), int) and isinstance(labels, dict)
            and all(isinstance(k, str) and k.isdigit() and isinstance(v, str) and 0 < len(v) <= MAX_LABEL_CHARS
                    for k, v in labels.items()))


class Labels:
    """The labels of the explored SAEs, ``{layer: fingerprint}``, in the labels file ``path`` (read at once,
    checked; written on each change), or only in memory with ``path`` None."""

    def __init__(self, path: str | os.PathLike | None, fingerprints: Mapping[int, str]) -> None:
        self.path = Path(path).absolute() if path is not None else None
        self.fingerprints = dict(fingerprints)
        self._saes = read_labels_file(self.path) if self.path else {}
        self._lock = threading.Lock()

    def of_layer(self, layer: int) -> dict[int, str]:
        """``{feature: label}`` of the SAE at ``layer``."""
        entry = self._saes.get(self.fingerprints[layer], {})
        return {int(k): v for k, v in entry.get("labels", {}).items()}

    def get(self, layer: int, feature: int) -> str | None:
        return self._saes.get(self.fingerprints[layer], {}).get("labels", {}).get(str(feature))

    def all(self) -> list[dict]:
        """Every label of the explored SAEs: ``[{"layer", "feature", "label"}]`` by layer and feature."""
        return [{"layer": l, "feature": f, "label": text}
                for l in sorted(self.fingerprints) for f, text in sorted(self.of_layer(l).items())]

    def set(self, layer: int, feature: int, text: str) -> str | None:
        """Label ``feature`` of the SAE at ``layer`` with ``text`` (:func:`clean_label`; empty: remove its label),
        write the file; returns the label kept (None: removed)."""
        text = clean_label(text)
        fp = self.fingerprints[layer]
        with self._lock, (dir_lock(self.path.parent) if self.path else contextlib.nullcontext()):
            # another explorer may have written labels of other SAEs meanwhile
            saes = read_labels_file(self.path) if self.path else copy.deepcopy(self._saes)
            entry = saes.setdefault(fp, {"layer": layer, "labels": {}})
            if text:
                if str(feature) not in entry["labels"] and sum(len(v["labels"]) for v in saes.values()) >= MAX_LABELS:
                    raise AttnsaeError(f"{self.path or 'the labels'} hold {MAX_LABELS:,} labels, the most kept: remove "
                                       "some, or start the explorer with another --labels file")
                entry["labels"][str(feature)] = text
            else:
                entry["labels"].pop(str(feature), None)
            if not entry["labels"]:
                del saes[fp]
            if self.path:
                atomic_write_json({"format": FORMAT, "version": VERSION, "saes": saes}, self.path)
            self._saes = saes
        return text or None
