"""CircuitLasso vs EAP-IG, end to end, on a GPT-2-small-shaped random model (CPU).

CircuitLasso (Yin et al. 2026, arXiv 2606.16939) needs forward passes only: activation
collection (`source_outputs` plus one forward for the q/k/v/MLP/logit reads), the block
upper-triangular Lasso over every graph target (a λ path chosen on held-out examples, then a
refit), and the circuit. EAP-IG (`jaxcirc.methods.eap_ig`, `steps=5`, input interpolation)
needs 5 forward+backward passes through the edge-masked model plus the clean and corrupted
runs. Both see the same prompt pairs; each runs in its own process (peak memory is that
process's `VmHWM`). The paper reports CircuitLasso 3.0× faster than EAP-IG on InterpBench.

    python benchmarks/bench_circuit_lasso.py            # writes its section of RESULTS.md
    python benchmarks/bench_circuit_lasso.py --quick    # tiny model, prints only
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import _common as C

SIDES = ("circuit_lasso", "eap_ig")


def main() -> None:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="prompt pairs")
    p.add_argument("--seq", type=int, default=16, help="tokens per prompt")
    p.add_argument(
        "--ranks", type=int, nargs="+", default=[4, 1],
        help="CircuitLasso: principal components kept per source and per target (one run each)",
    )  # fmt: skip
    p.add_argument("--n-alphas", type=int, default=10, help="CircuitLasso: λ path length")
    p.set_defaults(repeat=1, rounds=1)
    args = p.parse_args()
    if args.side:
        return side(args)
    info = C.machine()
    sides = [
        side
        for b in args.batches
        for side in [*(f"circuit_lasso@{b}@{r}" for r in args.ranks), f"eap_ig@{b}"]
    ]
    with tempfile.TemporaryDirectory() as tmp:
        reports = C.run_sides(__file__, Path(tmp), sides, args.rounds)
    rows, verdicts = [], []
    for b in args.batches:
        ig = reports[f"eap_ig@{b}"]
        runs = [(f"CircuitLasso, rank {r}", reports[f"circuit_lasso@{b}@{r}"]) for r in args.ranks]
        for name, r in [*runs, ("EAP-IG (inputs, steps=5)", ig)]:
            rows.append(
                [
                    str(b), f"{2 * b * args.seq}", name, f"{r['first_s']:.1f}",
                    f"{r['steady_median_s']:.1f}", f"{r['peak_rss_mib']:.0f}",
                    r.get("detail", ""),
                ]
            )  # fmt: skip
        for name, r in runs:
            ratio = ig["steady_median_s"] / r["steady_median_s"]
            first = ig["first_s"] / r["first_s"]
            verdicts.append(
                f"- {b} pairs, {name}: EAP-IG / CircuitLasso time {ratio:.2f}× steady state, "
                f"{first:.2f}× first call (target ≥ 2×: {'met' if ratio >= 2 else 'missed'})."
            )
    sz = C.sizes(args.quick)
    body = "\n".join(
        [
            "## CircuitLasso vs EAP-IG, GPT-2-small-shaped random model (CPU)",
            "",
            C.machine_markdown(info),
            f"- Model: {sz['n_layers']} layers, d_model {sz['d_model']}, {sz['n_heads']} heads "
            f"(random weights); prompt pairs × {args.seq} tokens; CircuitLasso samples = every "
            f"(prompt, position) of clean and corrupted prompts, sources and targets reduced to "
            f"their top principal components (rank {' or '.join(map(str, args.ranks))}), λ path of "
            f"{args.n_alphas} chosen on held-out prompts, then a refit (FISTA, duality gap ≤ "
            f"1e-3 of the objective).",
            "",
            C.table(
                [
                    "pairs",
                    "CircuitLasso rows",
                    "method",
                    "first call s (compile + run)",
                    "steady s",
                    "peak RSS MiB",
                    "detail",
                ],
                rows,
            ),  # fmt: skip
            "",
            *verdicts,
        ]
    )
    print(body)
    if not args.quick:
        C.write_section("circuit_lasso", body)


def side(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcirc as jc
    from jaxcirc.methods import eap_ig
    from jaxcirc.methods._circuit_lasso import circuit_lasso

    sz = C.sizes(args.quick)
    name, batch, *rank = args.side.split("@")
    model = jc.models.gpt2(key=jax.random.key(0), **sz)
    clean = jnp.asarray(C.tokens(int(batch), args.seq, sz["d_vocab"], seed=1))
    corrupt = jnp.asarray(C.tokens(int(batch), args.seq, sz["d_vocab"], seed=2))
    answer, wrong = 11, 12

    def metric(logits):
        return (logits[:, -1, answer] - logits[:, -1, wrong]).mean()

    if name == "circuit_lasso":

        def run():
            res = circuit_lasso(
                model, clean, corrupt, rank=int(rank[0]), target_rank=int(rank[0]),
                n_alphas=args.n_alphas,
            )  # fmt: skip
            return jax.block_until_ready(res.scores.values), res

    else:

        def run():
            scores = eap_ig(model, clean, corrupt, metric, steps=5)
            return jax.block_until_ready(scores.values), None

    t = time.perf_counter()
    _, res = run()
    first = time.perf_counter() - t
    times, (_, res) = C.timed(run, args.repeat)
    detail = ""
    if res is not None:
        detail = (
            f"collect {res.seconds['collect']:.1f} s + regress {res.seconds['regress']:.1f} s; "
            f"{int(np.asarray(res.circuit.values).sum())} edges at λ={res.alpha:.3g}"
        )
    print(
        json.dumps(
            {
                "first_s": first,
                "steady_s": times,
                "steady_median_s": float(np.median(times)),
                "peak_rss_mib": C.peak_rss_mib(),
                "detail": detail,
            }
        )
    )


if __name__ == "__main__":
    main()
