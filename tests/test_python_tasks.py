"""Python-code data without downloads: the stdlib corpus, the 2048-token BPE (deterministic,
shipped), and Gao et al.'s binary tasks, whose answers are checked by Python itself (the clean
prompt completed by the answer parses or runs; completed by the distractor it does not)."""

import ast

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jaxcirc.io import _bpe
from jaxcirc.io._tokenizer import Tokenizer
from jaxcirc.tasks import _python_tasks as pt


@pytest.fixture(scope="module")
def bpe():
    return _bpe.python_bpe()


def test_corpus_is_the_stdlib_source_in_a_fixed_order():
    docs = list(pt.python_source(max_chars=300_000))
    assert docs == list(pt.python_source(max_chars=300_000)) and len(docs) > 3
    assert sum(map(len, docs)) <= 300_000
    for doc in docs[:5]:
        ast.parse(doc)  # real Python source


def test_training_is_deterministic_and_the_shipped_bpe_round_trips(bpe, tmp_path):
    a = _bpe.train_python_bpe(300, max_chars=100_000, path=tmp_path / "a.json")
    b = _bpe.train_python_bpe(300, max_chars=100_000, path=tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.vocab_size == b.vocab_size == 300
    assert bpe.vocab_size == 2048 and bpe.bos_token_id == bpe.eos_token_id is not None
    source = next(pt.python_source())
    ids = bpe.encode(source, add_special_tokens=False)
    assert bpe.decode(ids) == source and len(ids) < len(source) / 2.5  # it compresses code
    with pytest.raises(FileNotFoundError, match="python -m jaxcirc.io._bpe"):
        _bpe.python_bpe(tmp_path / "missing.json")


def _completes(task_name, prompt, token):
    """Whether `prompt + token` is right, asked of Python (parse, or run on lists of str)."""
    if task_name == "quote":
        text = prompt + token
    elif task_name == "square_bracket":
        text = prompt + token + (")" if "([" in prompt else "")
    elif task_name == "bracket":  # names need not exist: compiling decides
        try:
            compile(prompt + token, "<task>", "exec")
        except SyntaxError:
            return False
        return True
    else:
        loop = prompt.split("for ")[1].split(" in")[0]
        text = prompt + token + (f"add({loop})" if token == "." else f" {loop}")
    try:
        code = compile(text, "<task>", "exec")
    except SyntaxError:
        return False
    env = {k: ["a", "b"] for k in ("words", "lines", "items", "data", "text")}
    env |= {k: 1 for k in pt.ITEMS if k.isidentifier()}
    try:
        exec(code, env)
    except (TypeError, AttributeError):
        return False
    return True


@pytest.mark.parametrize("name", sorted(pt.PYTHON_TASKS))
def test_tasks_are_right_by_python_itself(bpe, name):
    task = pt.PYTHON_TASKS[name](bpe, 16, seed=3)
    again = pt.PYTHON_TASKS[name](bpe, 16, seed=3)
    assert task.prompts == again.prompts and task.name == name
    clean, corrupt = np.asarray(task.clean), np.asarray(task.corrupt)
    lengths = np.asarray(task.lengths)
    answers, distractors = np.asarray(task.answer), np.asarray(task.distractor)
    assert len(set(answers.tolist())) == 2  # both orders of the pairs
    for i in range(task.batch):
        p, q = task.prompts[i], task.corrupt_prompts[i]
        n = lengths[i]
        assert bpe.decode(clean[i, :n]) == p and bpe.decode(corrupt[i, :n]) == q
        assert len(bpe.encode(q)) == n  # same token length
        a, d = bpe.decode([answers[i]]), bpe.decode([distractors[i]])
        assert _completes(name, p, a) and not _completes(name, p, d), (p, a, d)
        assert _completes(name, q, d) and not _completes(name, q, a), (q, a, d)
    # the metric reads each prompt's last token: logit(answer) - logit(distractor)
    logits = np.random.default_rng(0).standard_normal((task.batch, task.seq, 2048), np.float32)
    rows = np.arange(task.batch)
    want = (logits[rows, lengths - 1, answers] - logits[rows, lengths - 1, distractors]).mean()
    np.testing.assert_allclose(float(task.metric(logits)), want, rtol=1e-5)


def test_tokens_missing_from_the_tokenizer_are_a_clear_error():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    bytes_only = Tokenizer(hf)
    assert pt.quote_task(bytes_only, 4).batch == 4  # one-byte answers exist
    with pytest.raises(ValueError, match=r"square_bracket answer '\]\]' is 2 tokens"):
        pt.square_bracket_task(bytes_only, 4)
    with pytest.raises(ValueError, match=r"bracket answer '\)\)' is 2 tokens"):
        pt.bracket_task(bytes_only, 4)
    with pytest.raises(ValueError, match=r"set_or_string (answer|distractor) ' \+=' is 3 tokens"):
        pt.set_or_string_task(bytes_only, 4)
    with pytest.raises(ValueError, match=r"n must be an even int"):
        pt.quote_task(bytes_only, 3)
