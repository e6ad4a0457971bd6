"""A ``--config`` file: a YAML or JSON mapping of flat ``setting: value`` pairs, read with bounds (its size, its values
once YAML aliases are expanded) and refusing a key given twice; :class:`attnsae.training.config.TrainConfig` checks
the settings themselves."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from attnsae.errors import AttnsaeError, short

CONFIG_MAX_BYTES = 1 << 20  # a config file is a page of settings: 1 MiB is far more than any needs
CONFIG_MAX_VALUES = 10_000  # values of a YAML document once its aliases are expanded ("billion laughs" stops here)


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON file of flat ``setting: value`` pairs: at most :data:`CONFIG_MAX_BYTES`, and a YAML document at
    most :data:`CONFIG_MAX_VALUES` values once its aliases are expanded."""
    p = Path(path)
    if p.exists() and not p.is_file():  # a folder, a FIFO (whose read would wait forever), a device
        raise AttnsaeError(f"config file {path} is not a regular file; give a YAML or JSON file of settings")
    try:
        with open(p, "rb") as f:  # read at most one byte past the cap: a huge file is never read whole
            data = f.read(CONFIG_MAX_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AttnsaeError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
    if len(data) > CONFIG_MAX_BYTES:
        size = p.stat().st_size if p.is_file() else 0
        raise AttnsaeError(f"config file {path} is {f'{size / 2**20:.1f} MiB, ' if size else ''}more than the "
                           f"{CONFIG_MAX_BYTES >> 20} MiB a config file may be; give a file of settings")
    is_json = p.suffix.lower() == ".json"
    try:
        if is_json:
            d = json.loads(text, object_pairs_hook=lambda pairs: _once([k for k, _ in pairs]) or dict(pairs))
        else:
            import yaml

            d = yaml.load(text, Loader=_bounded_yaml_loader())
    except AttnsaeError as e:
        raise AttnsaeError(f"config file {path} {e}") from None
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise AttnsaeError(f"config file {path} is not valid {'JSON' if is_json else 'YAML'}: "
                           f"{first[:200] + '...' if len(first) > 200 else first}") from None
    if not isinstance(d, dict):
        raise AttnsaeError(f"config file {path} must hold a mapping of settings (setting: value)")
    bad = [k for k in d if not isinstance(k, str)]
    if bad:
        raise AttnsaeError(f"config file {path}: setting names are words, got {short(bad[0])}; write setting: value")
    return d


def _bounded_yaml_loader() -> type:
    """yaml's SafeLoader that refuses, before building anything, a document of more than :data:`CONFIG_MAX_VALUES`
    values once its aliases are expanded (nested aliases grow exponentially: "billion laughs") or one that holds
    itself (a recursive alias)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def construct_document(self, node):  # type: ignore[no-untyped-def]
            _count_values(node)
            return super().construct_document(node)

        def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
            _once([k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)])
            return super().construct_mapping(node, deep)

    return BoundedLoader


def _once(keys: list) -> None:
    """Refuse a mapping that gives a key twice (YAML and JSON keep the last silently: a mistake to point out)."""
    twice = [k for k, n in Counter(keys).items() if n > 1]
    if twice:
        raise AttnsaeError(f"gives {short(twice[0])} twice; keep one")


def _count_values(root: Any) -> int:
    """Scalars, sequences and mappings of the YAML node tree ``root`` with every alias expanded (memoised per node,
    so the count itself is quick); an AttnsaeError past :data:`CONFIG_MAX_VALUES` or on a cycle."""
    counts: dict[int, int] = {}
    open_nodes: set[int] = set()

    def count(node: Any) -> int:
        key = id(node)
        if key in counts:
            return counts[key]
        if key in open_nodes:
            raise AttnsaeError("holds a recursive alias (a value that contains itself); write the values out")
        open_nodes.add(key)
        children = node.value if isinstance(node.value, list) else []
        n = 1
        for child in children:
            for c in (child if isinstance(child, tuple) else (child,)):  # mapping entries are (key, value) pairs
                n += count(c)
            if n > CONFIG_MAX_VALUES:
                raise AttnsaeError(f"holds more than {CONFIG_MAX_VALUES:,} values once its aliases (*name) are "
                                   "expanded; write the settings out plainly")
        open_nodes.discard(key)
        counts[key] = n
        return n

    return count(root)
