"""Tokenizers: a Hugging Face `tokenizer.json`, or the byte-level BPE described inside a GGUF file.

A GGUF has no `tokenizer.json`; it stores the vocabulary, merges and special-token ids as
metadata (`tokenizer.ggml.*`). `load_tokenizer` rebuilds the `tokenizers.Tokenizer` from them the
way `transformers` does for byte-level (`gpt2`-model) vocabularies, so both agree token for token.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from ._gguf import metadata, open_gguf

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` -> split regex, as in transformers; others use GPT-2's byte-level regex.
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "lfm2",
            "dbrx",
            "smaug-bpe",
        ),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}
SUPPORTED_GGUF_TOKENIZERS = ("gpt2",)
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer`: text <-> `int32` token ids.

    `tokenizer.tokenizer` is the underlying `tokenizers.Tokenizer`. `bos_token_id` and
    `eos_token_id` are `None` where the source does not name them.
    """

    def __init__(self, tokenizer, bos_token_id: int | None = None, eos_token_id: int | None = None):
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> np.ndarray:
        """Token ids of `text` as an `int32` array of shape `[seq]`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str; got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        """The text of token ids (a sequence, NumPy or JAX array of shape `[seq]`, or one id)."""
        ids = np.asarray(ids)
        ids = ids.astype(np.int64) if ids.size == 0 else ids
        if ids.ndim > 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"decode expects integer ids of shape [seq]; got dtype {ids.dtype}, "
                f"shape {ids.shape}"
            )
        ids = ids.reshape(-1)
        bad = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if bad.size:
            raise ValueError(
                f"token id {int(ids[bad[0]])} is outside [0, vocab_size={self.vocab_size})"
            )
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    def to_str_tokens(self, text_or_ids: str | Sequence[int] | np.ndarray) -> list[str]:
        """Each token decoded on its own: `["The", " capital", ...]`."""
        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else np.asarray(text_or_ids)
        return [self.decode([i]) for i in ids.reshape(-1).tolist()]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_token_id={self.bos_token_id}, "
            f"eos_token_id={self.eos_token_id})"
        )


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a directory holding `tokenizer.json`, that file, or a `.gguf` file.

    **Raises:** `FileNotFoundError` for a missing path or a directory without `tokenizer.json`;
    `ValueError` for a GGUF whose tokenizer is not byte-level BPE, or a corrupt file.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {str(path)!r}")
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; for a GGUF pass the file, e.g. {str(path / ggufs[0])!r}" if ggufs else ""
            raise FileNotFoundError(f"directory {str(path)!r} has no tokenizer.json{hint}")
        return _from_json(path / "tokenizer.json")
    if path.suffix == ".gguf":
        return _from_gguf(path)
    if path.suffix == ".json":
        return _from_json(path)
    raise ValueError(
        f"cannot load a tokenizer from {str(path)!r}: expected a directory with tokenizer.json, "
        "a tokenizer.json file, or a .gguf file"
    )


def _from_json(path: pathlib.Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tokenizer = HFTokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable tokenizer.json ({e})") from e
    special = {}
    config = path.parent / "tokenizer_config.json"
    if config.is_file():
        try:
            special = json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(config)!r} is not valid JSON ({e})") from e

    def token_id(name):
        token = special.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        return tokenizer.token_to_id(token) if isinstance(token, str) else None

    return Tokenizer(tokenizer, token_id("bos_token"), token_id("eos_token"))


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _from_gguf(path: pathlib.Path) -> Tokenizer:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    reader = open_gguf(path)
    kind = metadata(reader, "tokenizer.ggml.model", None)
    if kind not in SUPPORTED_GGUF_TOKENIZERS:
        raise ValueError(
            f"GGUF file {str(path)!r} has tokenizer model {kind!r}; jaxcirc supports "
            f"{list(SUPPORTED_GGUF_TOKENIZERS)} (byte-level BPE), nearest: 'gpt2'"
        )
    tokens = list(metadata(reader, "tokenizer.ggml.tokens"))
    token_types = list(metadata(reader, "tokenizer.ggml.token_type", []))
    merges = []
    for merge in metadata(reader, "tokenizer.ggml.merges"):
        pair = tuple(merge.split(" "))
        if len(pair) != 2:
            raise ValueError(f"GGUF file {str(path)!r}: merge {merge!r} is not two tokens")
        merges.append(pair)
    alphabet = set(_bytes_to_unicode().values())
    spell = lambda t: (
        t if set(t) <= alphabet else "".join(_bytes_to_unicode()[b] for b in t.encode("utf-8"))
    )
    vocab = {spell(token): i for i, token in enumerate(tokens)}
    tokenizer = HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    split = PRE_TOKENIZER_SPLITS.get(metadata(reader, "tokenizer.ggml.pre", "default"))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (`<|im_start|>`) stay whole and are special; user-defined ones stay whole.
    typed = list(zip(tokens, token_types))
    control = [t for t, ttype in typed if ttype == _CONTROL and set(t) <= alphabet]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user = [t for t, ttype in typed if ttype == _USER_DEFINED and t in vocab]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    def token_id(key):
        i = metadata(reader, f"tokenizer.ggml.{key}", None)
        return int(i) if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = token_id("bos_token_id"), token_id("eos_token_id")
    add_bos = bool(metadata(reader, "tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(metadata(reader, "tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        specials = [(spell(tokens[i]), i) for i, on in ((bos, add_bos), (eos, add_eos)) if on]
        template = " ".join(
            [f"{spell(tokens[bos])}:0"] * add_bos + ["$A:0"] + [f"{spell(tokens[eos])}:0"] * add_eos
        )
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=specials
        )
    return Tokenizer(tokenizer, bos, eos)
