"""The shipped Python-code models (`jaxcirc.zoo.python_model`): the weight-sparse one holds
exactly 1/16 of each matrix with at least 4 per row and column (NumPy count), solves the quote
task on fresh prompts, and its task circuit is validated both ways; the record matches the
files."""

import jax
import numpy as np
import pytest

import jaxcirc as jc
from jaxcirc import sparse
from jaxcirc.sparse._masked import as_matrix, default_row_axis


@pytest.fixture(scope="module")
def bpe():
    return jc.io.python_bpe()


@pytest.fixture(scope="module")
def model():
    return jc.zoo.python_model("sparse")


def test_every_matrix_holds_a_sixteenth_and_the_floor(model):
    record = jc.zoo.python_models_record()
    fraction, floor = record["sparse"]["fraction"], record["settings"]["floor"]
    assert fraction == 1 / 16 and floor == 4
    seen = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(model):
        if not sparse.default_include(path, leaf):
            continue
        seen += 1
        m = np.asarray(as_matrix(leaf, default_row_axis(path, leaf)))
        nonzero = m != 0
        assert nonzero.sum() == int(np.ceil(np.float32(fraction) * np.float32(m.size))), path
        assert nonzero.sum(1).min() >= min(floor, m.shape[1]), path  # every row
        assert nonzero.sum(0).min() >= min(floor, m.shape[0]), path  # every column
    assert seen >= 2 * 6  # embed, unembed, pos, 4 attention and 2 MLP matrices per layer


def test_dense_models_are_dense_and_the_record_matches(model):
    record = jc.zoo.python_models_record()
    dense = jc.zoo.python_model("dense")
    assert dense.cfg == model.cfg == jc.models.weight_sparse(d_vocab=2048)
    w = np.asarray(dense.blocks[0].mlp.W_in)
    assert (w != 0).mean() > 0.99
    assert record["matched"]["sparse_loss"] == record["sparse"]["final"]["loss"]
    assert abs(record["matched"]["loss"] - record["sparse"]["final"]["loss"]) < 0.2


def test_the_sparse_model_solves_quote(model, bpe):
    task = jc.tasks.quote_task(bpe, 128, seed=11)  # prompts the record never saw
    assert sparse.task_scores(model, task)["accuracy"] >= 0.9


def test_the_sparse_model_tells_the_bracket_depths_apart(model, bpe):
    """`x = f(g(a, b` -> `))`, `x = f + g(a, b` -> `)`. The standard library continues with `)`
    more often than `))` even at depth 2 (`bench_bracket_corpus.py`), so raw accuracy sits near
    chance; but the margin `))` − `)` is higher at depth 2 than at depth 1 on nearly every pair
    (measured 96.7 % of 256 fresh pairs). A scale and bias fitted on other prompts lift the
    accuracy only a little (measured 63.7 %): the margin moves more across prompts than with
    the depth, so the task is not solved in the absolute sense the done-when asks."""
    fit = sparse.calibrate(model, jc.tasks.bracket_task(bpe, 256, seed=0))
    fresh = jc.tasks.bracket_task(bpe, 256, seed=11)
    scores = sparse.task_scores(model, fresh, pairs=True)
    calibrated = sparse.task_scores(model, fresh, calibration=fit)["accuracy"]
    assert scores["accuracy"] < 0.7 and scores["pair_accuracy"] >= 0.9, scores
    assert calibrated > scores["accuracy"]  # the fitted bias helps, on prompts it never saw


def test_quote_circuit_is_sufficient_and_necessary(model, bpe):
    _, held, _ = jc.tasks.python_rows(bpe, 128, 1, 32)
    means = sparse.node_means(model, held)
    train = jc.tasks.quote_task(bpe, 64, seed=0)
    test = jc.tasks.quote_task(bpe, 128, seed=1)
    circuit = sparse.prune(model, train, means, target_loss=0.3, steps=100, lr=2e-2, batch=32,
                           progress=False)  # fmt: skip
    total = sum(np.size(m) for m in means.values())
    assert circuit.loss <= 0.3 and circuit.n_nodes < total / 4
    kept = sparse.evaluate(model, test, circuit, means, ablate="complement")
    ablated = sparse.evaluate(model, test, circuit, means, ablate="circuit")
    assert kept["accuracy"] >= 0.85  # the circuit alone still solves fresh prompts
    assert 0.3 <= ablated["accuracy"] <= 0.7  # without it: chance
