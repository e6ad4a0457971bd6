import json

import numpy as np
import pytest

from attnsae import corpus
from attnsae.errors import AttnsaeError


def test_stdlib_split_is_deterministic_and_disjoint():
    train = corpus.stdlib_files("train")
    val = corpus.stdlib_files("validation")
    assert train == corpus.stdlib_files("train")
    assert not set(train) & set(val)
    assert len(val) > 10 and len(train) > 10 * len(val)
    rel = [p.relative_to(corpus.stdlib_root()).as_posix() for p in train]
    assert rel == sorted(rel)
    assert not any("site-packages" in r for r in rel)


def test_split_of_is_a_pure_function_of_the_key():
    keys = [f"pkg/mod{i}.py" for i in range(2000)]
    first = [corpus.split_of(k) for k in keys]
    assert first == [corpus.split_of(k) for k in keys]
    frac = first.count("validation") / len(keys)
    assert 0.03 < frac < 0.07  # DEFAULT_VAL_FRACTION = 0.05


def test_make_contexts_forces_bos_at_position_zero():
    stream = np.arange(1, 31)
    rows = corpus.make_contexts(stream, 8, bos_id=0)
    assert rows.shape == (4, 8)  # 30 // 7 rows of [BOS] + 7 tokens
    assert (rows[:, 0] == 0).all()
    assert rows[:, 1:].reshape(-1).tolist() == list(range(1, 29))
    plain = corpus.make_contexts(stream, 8, bos_id=None)
    assert plain.shape == (3, 8) and plain.reshape(-1).tolist() == list(range(1, 25))


def test_documents_are_joined_with_end_of_text(tokenizer):
    eot = tokenizer.eos_token_id
    docs = ["def f():\n    return 1\n", "x = 2\n"]
    stream = corpus.tokenize_documents(tokenizer, docs, eot, progress=False)
    a = tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    b = tokenizer(docs[1], add_special_tokens=False)["input_ids"]
    assert stream.tolist() == a + [eot] + b + [eot]


def test_local_txt_jsonl_parquet_and_folder(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("alpha text " * 50)
    with open(tmp_path / "b.jsonl", "w") as f:
        f.write(json.dumps({"body": "beta " * 40}) + "\n")
        f.write("{not json}\n")
        f.write(json.dumps({"other": "no body"}) + "\n")
    pq.write_table(pa.table({"body": ["gamma " * 30, "delta " * 30]}), tmp_path / "c.parquet")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8 \x80")
    stats = corpus.CorpusStats()
    docs = list(corpus.iter_local(tmp_path / "b.jsonl", None, "body", stats, 0.05))
    assert docs == ["beta " * 40] and stats.n_skipped == 2
    docs = list(corpus.iter_local(tmp_path / "c.parquet", None, "body", corpus.CorpusStats(), 0.05))
    assert docs == ["gamma " * 30, "delta " * 30]
    stats = corpus.CorpusStats()
    docs = list(corpus.iter_local(tmp_path, None, "body", stats, 0.05))
    assert len(docs) == 4 and stats.n_skipped == 3  # bad.txt + two bad jsonl rows
    c = corpus.load_corpus(tokenizer, str(tmp_path), "train", context_size=16, text_field="body", progress=False,
                           val_fraction=0.0)
    assert c.tokens.shape[1] == 16 and (c.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert c.stats.n_skipped == 3


def test_folder_split_by_relative_path(tmp_path, tokenizer):
    for i in range(40):
        (tmp_path / f"f{i}.txt").write_text(f"document {i} " * 20)
    train = corpus.local_files(tmp_path, "train", 0.2)
    val = corpus.local_files(tmp_path, "validation", 0.2)
    assert train and val and not set(train) & set(val) and len(train) + len(val) == 40


def test_hf_dataset_path_reads_a_local_dataset(tmp_path, tokenizer):
    data = tmp_path / "ds"
    data.mkdir()
    with open(data / "train.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": f"row {i} " * 30}) + "\n")
    c = corpus.load_corpus(tokenizer, f"hf:{data}", "train", context_size=32, progress=False)
    assert c.stats.n_docs == 20 and c.tokens.shape[1] == 32

    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["saved row " * 30] * 5}).save_to_disk(str(saved))
    c = corpus.load_corpus(tokenizer, str(saved), "train", context_size=32, progress=False)
    assert c.stats.n_docs == 5


def test_unknown_hf_dataset_offline_is_one_clear_error(tokenizer):
    with pytest.raises(AttnsaeError, match="could not load dataset"):
        corpus.load_corpus(tokenizer, "no-such-org/no-such-dataset-xyz", progress=False)


def test_empty_corpus_and_oversized_context_are_errors(tmp_path, tokenizer):
    with pytest.raises(AttnsaeError, match="no full context"):
        corpus.load_corpus(tokenizer, str(tmp_path), progress=False)
    with pytest.raises(AttnsaeError, match="larger than the model's n_ctx"):
        corpus.load_corpus(tokenizer, "stdlib", context_size=512, n_ctx=256, progress=False)


def test_stdlib_validation_corpus_rows(tokenizer):
    c = corpus.load_corpus(tokenizer, "stdlib", "validation", context_size=128, progress=False, max_tokens=20000)
    assert c.tokens.shape == (20000 // 127, 128)
    assert (c.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert c.stats.n_skipped == 0


def test_a_stdlib_other_than_the_reference_models_is_said_once(monkeypatch):
    """The stdlib corpus is the running Python's standard library: on another one than the reference model was
    measured on (its card's fingerprint), the quickstart and eval say in one line that their numbers will differ."""
    import json

    from attnsae import corpus
    from attnsae.jobs.inputs import stdlib_note
    from attnsae.models import REFERENCE_DIR

    card = json.loads((REFERENCE_DIR / "card.json").read_text())["corpus"]
    for fingerprint, expected in ((card["validation"]["sha256"], None), ("another", card["python"])):
        monkeypatch.setattr(corpus, "fingerprint", lambda files, f=fingerprint: f)
        stdlib_note.cache_clear()
        note = stdlib_note()
        assert note is None if expected is None else (expected in note and "\n" not in note), note
    stdlib_note.cache_clear()
