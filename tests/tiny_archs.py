"""Tiny random-weight models of each architecture family, built offline from transformers' config classes.

Each builder saves an HF-format folder (weights + tokenizer) that :func:`attnsae.load_model` loads like any local
model. Decoders share the reference model's byte-level BPE tokenizer (8,192 tokens, ``<|endoftext|>`` = 0 as BOS);
encoders get a WordPiece tokenizer trained here on a few standard-library files, with real ``[CLS]`` / ``[SEP]`` /
``[PAD]`` / ``[UNK]`` tokens. Weights are random but made to matter: norm scales and biases are drawn away from
their identity initialisation, so that a method that ignores them gives visibly wrong numbers.

Used by the architecture-matrix test and by ``scripts/architecture_matrix.py`` (which writes docs/ARCHITECTURES.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

VOCAB = 8192
HIDDEN = 64
LAYERS = 3
CTX = 128


def _decoder_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from attnsae.models import REFERENCE_DIR

    return PreTrainedTokenizerFast.from_pretrained(REFERENCE_DIR)


def _encoder_tokenizer(vocab_size: int = 2048):
    """A BERT WordPiece tokenizer trained on a few stdlib files: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3."""
    import sysconfig

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = [str(lib / n) for n in ("textwrap.py", "string.py", "glob.py", "fnmatch.py", "bisect.py")]
    tok.train(files, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]")


def _perturb(model, seed: int) -> None:
    """Move norm scales and biases away from 1 and 0 so that every term of every decomposition counts."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln" in name or "LayerNorm" in name):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _save(model, tokenizer, path, seed: int) -> str:
    _perturb(model, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _causal(config_cls: str, model_cls: str, **kw) -> Callable[[str | Path, int], str]:
    def build(path: str | Path, seed: int = 0) -> str:
        import torch
        import transformers

        torch.manual_seed(seed)
        cfg = getattr(transformers, config_cls)(**kw)
        return _save(getattr(transformers, model_cls)(cfg), _decoder_tokenizer(), path, seed)

    return build


_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX, bos_token_id=0,
                   eos_token_id=0, pad_token_id=VOCAB - 1)  # not BOS: a padding row is zeroed


def build_bert(path: str | Path, seed: int = 0) -> str:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    tok = _encoder_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                     intermediate_size=2 * HIDDEN, max_position_embeddings=CTX, pad_token_id=0)
    return _save(BertForMaskedLM(cfg), tok, path, seed)


def build_bert_headless(path: str | Path, seed: int = 0) -> str:
    """A BERT checkpoint saved without its MLM head (a bare ``BertModel``, declared ``BertForMaskedLM``): its decoder
    ties to the loaded embeddings, but the head's transform and bias are random on load."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tok = _encoder_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                     intermediate_size=2 * HIDDEN, max_position_embeddings=CTX, pad_token_id=0,
                     architectures=["BertForMaskedLM"])
    return _save(BertModel(cfg, add_pooling_layer=False), tok, path, seed)


def build_llama_headless(path: str | Path, seed: int = 0) -> str:
    """A Llama checkpoint saved without its LM head (a bare ``LlamaModel``): loading it as a causal LM gives a
    randomly initialised head, which CE and logit effects must refuse."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(**_LLAMA_LIKE, architectures=["LlamaForCausalLM"])
    return _save(LlamaModel(cfg), _decoder_tokenizer(), path, seed)


# family -> builder(path, seed) -> path. Each notes what makes it a distinct case.
FAMILIES: dict[str, Callable[..., str]] = {
    # LayerNorm, learned positions, biases everywhere, Conv1D weights
    "gpt2": _causal("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_positions=CTX, n_embd=HIDDEN,
                    n_layer=LAYERS, n_head=4, bos_token_id=0, eos_token_id=0),
    # RMSNorm, rotary, grouped-query attention (4 query heads on 2 value heads), no biases
    "llama": _causal("LlamaConfig", "LlamaForCausalLM", **_LLAMA_LIKE),
    # QKV biases, sliding window on some layers
    "qwen2": _causal("Qwen2Config", "Qwen2ForCausalLM", **_LLAMA_LIKE, use_sliding_window=True, sliding_window=8,
                     max_window_layers=1),
    # sliding-window attention on every layer
    "mistral": _causal("MistralConfig", "MistralForCausalLM", **_LLAMA_LIKE, sliding_window=8),
    # sandwich norms (post-attention norm), RMSNorm with 1 + w, local/global layers with two rotary bases,
    # q/k norms, d_head * n_heads != d_model, embeddings scaled by sqrt(d_model), tied unembedding
    "gemma3": _causal("Gemma3TextConfig", "Gemma3ForCausalLM", **{**_LLAMA_LIKE, "head_dim": 24},
                      sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                      rope_local_base_freq=10_000.0, query_pre_attn_scalar=24),
    # norms after attention and after the MLP only (no pre-norm), q/k norms
    "olmo2": _causal("Olmo2Config", "Olmo2ForCausalLM", **_LLAMA_LIKE),
    # parallel attention and MLP, partial rotary
    "gpt_neox": _causal("GPTNeoXConfig", "GPTNeoXForCausalLM", vocab_size=VOCAB, hidden_size=HIDDEN,
                        intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                        max_position_embeddings=CTX, rotary_pct=0.5, bos_token_id=0, eos_token_id=0),
    # sandwich norms, attention and final-logit soft-capping (the LM head is not a linear read-out)
    "gemma2": _causal("Gemma2Config", "Gemma2ForCausalLM", **{**_LLAMA_LIKE, "head_dim": 16}, sliding_window=8,
                      final_logit_softcapping=0.5, attn_logit_softcapping=50.0, query_pre_attn_scalar=16),
    # the Llama layout with the LM head missing from the checkpoint
    "llama_headless": build_llama_headless,
    # bidirectional encoder with post-norms (LayerNorm after each residual add) and an untrained-for-CE MLM head
    "bert": build_bert,
}


def build(family: str, root: str | Path, seed: int = 0) -> str:
    """Build ``family``'s tiny model in ``root/family`` (reusing it if already there) and return the folder."""
    path = Path(root) / family
    if not (path / "config.json").exists():
        FAMILIES[family](path, seed)
    return str(path)
