"""A small byte-level BPE for Python code (Gao et al. 2025 use a 2048-token BPE on Python,
`tinypython_2k`), trained with the `tokenizers` package on the standard library's own source.

`train_python_bpe` trains one (deterministic: one thread, a fixed corpus order);
`python_bpe()` loads the shipped `jaxcirc/data/python_bpe_2048.json`, built by
`python -m jaxcirc.io._bpe` (the default settings) and written atomically.
"""

from __future__ import annotations

import os
import pathlib

from .._atomic import atomic_write
from .._checks import check_int
from ..tasks._python_tasks import python_source
from ._tokenizer import Tokenizer, load_tokenizer

SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "data" / "python_bpe_2048.json"
SPECIAL = ("<|endoftext|>",)
# tokens the tasks answer with that 2048 merges on the standard library do not learn: added as
# whole tokens (matched before the BPE), inside the vocabulary budget
ADDED = ("]]",)
# GPT-2's byte-level split without the English contractions (`'s`, `'t`, ... would glue a
# quote to the next letter); runs of punctuation stay together, so `]]` and ` +=` can merge
SPLIT = r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def train_python_bpe(
    vocab_size: int = 2048, *, max_chars: int = 4_000_000, path: str | os.PathLike | None = None
) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (the 256 bytes, `<|endoftext|>` and
    `ADDED` included) on the first `max_chars` characters of `python_source()`; saved to `path`
    when given (atomically). BOS and EOS are `<|endoftext|>`."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread: merges in a fixed order
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    vocab_size = check_int(vocab_size, "vocab_size", 258, 65536)
    check_int(max_chars, "max_chars", 1)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ADDED),
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(python_source(max_chars=max_chars), trainer=trainer)
    tok.add_tokens([t for t in ADDED if tok.token_to_id(t) is None])
    if path is not None:
        atomic_write(path, lambda tmp: tok.save(tmp))
    eot = tok.token_to_id(SPECIAL[0])
    return Tokenizer(tok, bos_token_id=eot, eos_token_id=eot)


def python_bpe(path: str | os.PathLike | None = None) -> Tokenizer:
    """The shipped 2048-token Python BPE (or the tokenizer JSON at `path`)."""
    path = pathlib.Path(path or SHIPPED)
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer at {str(path)!r}; build it with `python -m jaxcirc.io._bpe`"
        )
    tok = load_tokenizer(path)
    eot = tok.tokenizer.token_to_id(SPECIAL[0])
    return Tokenizer(tok.tokenizer, bos_token_id=eot, eos_token_id=eot)


if __name__ == "__main__":
    t = train_python_bpe(path=SHIPPED)
    print(f"wrote {SHIPPED} ({t.vocab_size} tokens)")
