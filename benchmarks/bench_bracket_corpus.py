"""What the Python corpus says after an open bracket: the answer statistics behind `bracket_task`.

`jaxcirc.tasks.bracket_task` asks the shipped Python-code models (Gao et al. 2025, arXiv
2511.13653) for `))` at nesting depth 2 and `)` at depth 1, and scores a prompt right when the
answer's logit beats the other's. This counts, over the standard library's source
(`jaxcirc.tasks.python_source()`, tokenised by `jaxcirc.io.python_bpe()`), every token that
begins with a closing parenthesis, by the parenthesis depth before it (`(` and `)` inside every
earlier token of the file, strings and comments included, floored at 0): how often a model
that matched the corpus exactly would put `))` above `)`.

    python benchmarks/bench_bracket_corpus.py
"""

from __future__ import annotations

import time
from collections import Counter

import _common as C


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    args = p.parse_args()
    info = C.machine()

    import jaxcirc as jc
    from jaxcirc.tasks import python_source

    tok = jc.io.python_bpe()
    text = {i: tok.decode([i]) for i in range(tok.vocab_size)}
    change = {i: t.count("(") - t.count(")") for i, t in text.items()}
    (two,), (one,) = (tok.encode(s, add_special_tokens=False) for s in ("))", ")"))
    counts: Counter = Counter()
    start, files, tokens = time.perf_counter(), 0, 0
    for source in python_source(max_chars=200_000 if args.quick else None):
        depth = 0
        ids = [int(i) for i in tok.encode(source, add_special_tokens=False)]
        files, tokens = files + 1, tokens + len(ids)
        for i in ids:
            if text[i].startswith(")"):
                kind = "`))`" if i == two else "`)`" if i == one else "other (`),` `):` ...)"
                counts[min(depth, 3), kind] += 1
            depth = max(0, depth + change[i])
    wall = time.perf_counter() - start
    kinds = ["`)`", "`))`", "other (`),` `):` ...)"]
    rows = []
    for depth in range(4):
        n = [counts[depth, k] for k in kinds]
        share = n[1] / max(n[0] + n[1], 1)
        rows.append(["≥ 3" if depth == 3 else depth, *(f"{x:,}" for x in n), f"{share:.1%}"])
    d2 = counts[2, "`))`"] / max(counts[2, "`))`"] + counts[2, "`)`"], 1)
    body = "\n".join([
        "## What the Python corpus puts after an open parenthesis (`bench_bracket_corpus.py`)",
        "",
        f"Every token of the standard library's source ({files:,} files, {tokens:,} tokens of "
        "the 2048-token Python BPE) that begins with `)`, by the parenthesis depth before it.",
        "",
        C.table(["depth", "next `)`", "next `))`", "next other", "`))` of `)` or `))`"], rows),
        "",
        f"- At depth 2 the corpus continues with `))` in {d2:.1%} of the cases where it "
        "continues with `)` or `))`"
        + (": `)` alone (`f(g(x) + 1)`, `f(g(x).y)`, ...) is the more common, so a model that "
           "matched the corpus would answer `)` at both depths, 50 % on `bracket_task`'s raw "
           "accuracy (logit of `))` against `)`)." if d2 < 0.5 else ".")
        + " The bias between the two tokens that pruning fits (`jaxcirc.sparse.calibrate`) "
        "takes such a prior out, and pair accuracy (`jaxcirc.sparse.task_scores(..., "
        "pairs=True)`) says whether a model ranks the two depths right.",
        f"- Wall {wall:.0f} s.",
        C.machine_markdown(info),
    ])  # fmt: skip
    C.publish("bench_bracket_corpus", body, record=not args.quick)


if __name__ == "__main__":
    main()
