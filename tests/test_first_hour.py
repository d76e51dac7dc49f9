"""A new user's first hour (issue 17): grouped-query receivers by head name, `learned_mask`'s
defaults on the shipped induction model, CLI typos/usage/abbreviations, one-line dropped-column
warnings, no citations of documents outside the repository."""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import logit_diff, tiny

import jaxcirc as jc
from jaxcirc import cli
from jaxcirc.methods import _path_patching, feature_ranking, learned_mask, path_patch
from jaxcirc.metrics._divergence import kl_divergence

# ---------------------------------------------------------------------------------------------
# grouped-query attention: head-level key/value receivers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gqa():
    return tiny("llama", n_layers=2, n_heads=4, n_kv_heads=2)


def test_gqa_head_level_receivers_select_their_groups(gqa, tokens):
    clean, corrupt = tokens
    n_heads, n_kv = gqa.cfg.n_heads, gqa.cfg.n_kv_heads
    group = n_heads // n_kv  # heads 2g, 2g+1 read key/value group g
    by_head = path_patch(gqa, clean, corrupt, logit_diff, senders="L0H*", receivers="L1H*.k")
    by_group = path_patch(gqa, clean, corrupt, logit_diff, senders="L0H*", receivers="L1KV*.k")
    assert by_head.receivers == tuple(f"L1KV{g}.k" for g in range(n_kv))
    assert by_head.receivers == by_group.receivers
    np.testing.assert_array_equal(np.asarray(by_head.values), np.asarray(by_group.values))
    g = jc.graph.graph(gqa)
    for h in range(n_heads):
        (j,) = _path_patching._select(f"L1H{h}.v", g.targets, g.targets, "receiver",
                                      _path_patching._head_aliases(g))  # fmt: skip
        assert g.targets[j] == f"L1KV{h // group}.v"
    # queries stay per head; an unknown name still names the nearest valid one
    assert path_patch(gqa, clean, corrupt, logit_diff, receivers="L1H3.q").receivers == ("L1H3.q",)
    with pytest.raises(ValueError, match=r"unknown receiver 'L1H9\.k' \(did you mean 'L1H"):
        path_patch(gqa, clean, corrupt, logit_diff, receivers="L1H9.k")
    with pytest.raises(ValueError, match=r"pattern 'L7H\*\.k' matches no receiver"):
        path_patch(gqa, clean, corrupt, logit_diff, receivers="L7H*.k")


# ---------------------------------------------------------------------------------------------
# learned_mask: the default call finds the induction circuit
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def induction():
    return jc.zoo.induction_model(), jc.zoo.induction_task(8, 6, seed=0)


def test_learned_mask_default_finds_induction_circuit(induction):
    model, task = induction
    found = learned_mask(model, task)
    edges = set(found.edges())
    # the shipped model's previous-token heads are L0H0 and L0H2, its induction heads L1H*
    assert any(s in ("L0H0", "L0H2") and t.startswith("L1H") and t.endswith(".k") for s, t in edges)
    assert any(s.startswith("L1H") and t == "logits" for s, t in edges)
    assert len(edges) < 0.5 * found.graph.n_edges
    # the default penalty is AUTO_PENALTY times the divergence of the empty circuit
    g = found.graph
    empty = jc.graph.masked_logits(
        model, task.clean, jc.graph.Circuit(np.zeros(g.valid.shape, bool), g),
        jc.graph.ablation_values(model, task.clean, task.corrupt, "mean"),
    )  # fmt: skip
    d0 = float(kl_divergence(empty, jax.vmap(model)(task.clean)))
    np.testing.assert_allclose(float(found.info["penalty"]), 0.2 * d0, rtol=1e-4)
    # most of the behaviour survives: far below the empty circuit's divergence
    assert float(found.info["divergence"]) < 0.3 * d0


# ---------------------------------------------------------------------------------------------
# the command line: suggestions, the subcommand's own usage, no abbreviations
# ---------------------------------------------------------------------------------------------


def _parsers(parser, path=("jaxcirc",)):
    """Every parser under `parser`, with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_cli_every_parser_refuses_abbreviations():
    found = dict(_parsers(cli.parser()))
    assert ("jaxcirc", "sae", "train") in found and ("jaxcirc", "patch") in found
    for path, p in found.items():
        assert p.allow_abbrev is False, path
        assert p.prog == " ".join(path), (p.prog, path)


@pytest.mark.parametrize(
    "argv, usage, message",
    [
        (["pach"], "usage: jaxcirc [", "unknown command 'pach'; did you mean 'patch'?"),
        (["sae", "trian"], "usage: jaxcirc sae [",
         "unknown command 'trian'; did you mean 'train'?"),
        (["patch", "--n-prompt", "4"], "usage: jaxcirc patch [",
         "unrecognized arguments: --n-prompt 4 (--n-prompt; did you mean '--n-prompts'?)"),
        (["lasso", "--bogus-flag"], "usage: jaxcirc lasso [",
         "jaxcirc lasso: error: unrecognized arguments: --bogus-flag"),
        (["sae", "train", "--site", "resid_pre", "--batch-row", "3"],
         "usage: jaxcirc sae train [", "did you mean '--batch-rows'?"),
    ],
)  # fmt: skip
def test_cli_errors_name_the_fix_with_the_subcommands_usage(capsys, argv, usage, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert message in err, err


# ---------------------------------------------------------------------------------------------
# the README's logit difference with per-example answers; no citations of absent documents
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_readme_logit_diff_is_per_example():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("# Activation patching sweeps")
    snippet = readme[start : readme.index("grid = jc.patching.sweep", start)]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4, 11)).astype(np.float32)
    answer, wrong = rng.permutation(11)[:5], rng.permutation(11)[5:10]
    scope = {"jc": jc, "answer": answer, "wrong": wrong}
    exec(snippet, scope)
    want = np.mean([logits[b, -1, answer[b]] - logits[b, -1, wrong[b]] for b in range(5)])
    np.testing.assert_allclose(float(scope["logit_diff"](jax.numpy.asarray(logits))), want,
                               rtol=1e-5)  # fmt: skip


def test_no_citations_of_documents_outside_the_repository():
    files = [ROOT / "README.md", *sorted((ROOT / "jaxcirc").rglob("*.py")),
             *sorted((ROOT / "tests").glob("*.py"))]  # fmt: skip
    absent = ("METHODS" + ".md", "ARCHITECTURE" + ".md", "STYLE" + ".md", "PEERS" + ".md")
    hits = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in files
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if any(name in line for name in absent)
    ]
    assert not hits, hits
    help_text = "\n".join(p.format_help() for _, p in _parsers(cli.parser()))
    assert not any(name in help_text for name in absent)


# ---------------------------------------------------------------------------------------------
# constant columns: one short warning per call, at the caller's line
# ---------------------------------------------------------------------------------------------


def test_dropped_columns_one_short_warning_per_call():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(40, 3)), np.ones((40, 300))], 1)
    y = z[:, 0] - 2 * z[:, 2] + 0.01 * rng.normal(size=40)
    with pytest.warns(UserWarning, match=r"dropped 300 zero-variance column\(s\)") as caught:
        ranking = feature_ranking(z, y, n_alphas=4)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "\n" not in message and len(message) < 300, message
    assert "feature3, feature4, feature5, feature6, …" in message and "feature7" not in message
    assert caught[0].filename == __file__  # the user's line, not one inside jaxcirc
    assert set(ranking.order[:2].tolist()) == {0, 2}  # the columns y was made from
    assert not np.asarray(ranking.dataset)[3:].any()  # constant columns get no score


# ---------------------------------------------------------------------------------------------
# `jaxcirc prune` on the MLP reports the files it wrote and the call that reads them
# ---------------------------------------------------------------------------------------------


def test_prune_mlp_reports_what_it_wrote(tmp_path, capsys):
    argv = ["prune", "--keep", "0.5", "--trials", "10", "--n-eval", "64", "--out", str(tmp_path),
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "prune.json").read_text())["checkpoint"]
    assert record["files"] == [str(tmp_path / "abstraction")]  # one jaxcirc.save folder
    assert (tmp_path / "abstraction").is_dir() and record["load"].startswith("jaxcirc.load(")
    for f in record["files"]:
        assert f in printed
    assert record["load"] in printed
    loaded = eval(record["load"], {"jaxcirc": jc})  # the reported call reads the checkpoint
    assert loaded.widths[0] == 64 and loaded.widths[-1] == 10 and loaded.widths[2] == 64
