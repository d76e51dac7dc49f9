"""Tokenizers: tokenizer.json directories, tiny and real GGUF vocabularies, parity, errors."""

import json
import os

import numpy as np
import pytest

from jaxcirc.io import load_tokenizer
from jaxcirc.io._gguf import smollm2_gguf_path

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

STRINGS = [
    "The capital of France is",
    "Hello  world!\n\tfoo",
    "<|im_start|>user\nhi<|im_end|>",
    "naïve café 1234567 😀",
    "   leading spaces",
    "def f(x):\n    return x**2  # comment",
    "Ünïcödé ∑ 中文 日本語",
    "don't I'LL we've",
    "",
]


def write_tokenizer_gguf(path, tokens, merges, token_types, model="gpt2", pre="default", **extra):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    if extra.get("add_bos"):
        writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


TINY_TOKENS = ["<s>", "</s>", "a", "b", "c", "Ġ", "ab", "Ġab", "abc"]
TINY_MERGES = ["a b", "Ġ ab", "ab c"]
TINY_TYPES = [3, 3, 1, 1, 1, 1, 1, 1, 1]


def test_tiny_gguf_byte_level_bpe(tmp_path):
    path = write_tokenizer_gguf(tmp_path / "tok.gguf", TINY_TOKENS, TINY_MERGES, TINY_TYPES)
    tok = load_tokenizer(path)
    ids = tok.encode("abc ab</s>")
    assert ids.dtype == np.int32 and ids.tolist() == [8, 7, 1]
    assert tok.decode(ids) == "abc ab</s>"
    assert tok.decode(ids, skip_special_tokens=True) == "abc ab"
    assert tok.to_str_tokens("abc ab") == ["abc", " ab"]
    assert (tok.vocab_size, tok.bos_token_id, tok.eos_token_id) == (9, 0, 1)
    assert isinstance(tok.tokenizer, tokenizers.Tokenizer)


def test_tiny_gguf_adds_bos_when_asked(tmp_path):
    path = write_tokenizer_gguf(
        tmp_path / "bos.gguf", TINY_TOKENS, TINY_MERGES, TINY_TYPES, add_bos=True
    )
    tok = load_tokenizer(path)
    assert tok.encode("ab").tolist() == [0, 6]
    assert tok.encode("ab", add_special_tokens=False).tolist() == [6]


def test_sentencepiece_gguf_is_refused(tmp_path):
    path = write_tokenizer_gguf(
        tmp_path / "spm.gguf", TINY_TOKENS, TINY_MERGES, TINY_TYPES, model="llama"
    )
    with pytest.raises(ValueError, match=r"'llama'.*'gpt2'"):
        load_tokenizer(path)


def test_tokenizer_json_directory(tmp_path):
    vocab = {"<bos>": 0, "<eos>": 1, "hello": 2, "world": 3, "[UNK]": 4}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    inner.decoder = tokenizers.decoders.WordPiece()
    inner.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<bos>", "eos_token": {"content": "<eos>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for source in (tmp_path, tmp_path / "tokenizer.json"):
        tok = load_tokenizer(source)
        assert tok.encode("hello world nope").tolist() == [2, 3, 4]
        assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (0, 1, 5)
        assert tok.decode(np.array([2, 3])) == "hello world"


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json.*model.gguf"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="model.gguf.*not a readable GGUF"):
        load_tokenizer(tmp_path / "model.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin.*expected a directory"):
        load_tokenizer(tmp_path / "weights.bin")
    tok = load_tokenizer(
        write_tokenizer_gguf(tmp_path / "tok.gguf", TINY_TOKENS, TINY_MERGES, TINY_TYPES)
    )
    with pytest.raises(ValueError, match=r"token id 9 is outside \[0, vocab_size=9\)"):
        tok.decode([2, 9])
    with pytest.raises(TypeError, match="str"):
        tok.encode([1, 2])


@pytest.mark.slow
def test_smollm2_matches_transformers():
    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok = load_tokenizer(path)
    assert tok.vocab_size == len(ref) == 49152
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    for text in STRINGS:
        ids = tok.encode(text)
        assert ids.tolist() == ref(text)["input_ids"], text
        assert tok.decode(ids) == ref.decode(ids.tolist()) == text
