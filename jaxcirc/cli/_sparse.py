"""`jaxcirc sparse train|prune`: weight-sparse transformers on Python code and their task
circuits (Gao et al. 2025, arXiv 2511.13653).

`train` pretrains a model (default the `weight_sparse` preset) on the Python standard library's
source with the shipped 2048-token BPE: dense, or with `--fraction` the weight sparsity annealed
to that nonzero fraction (`jaxcirc.sparse.train_lm`). Every 25th source file is held out for the
pretraining loss. Writes `OUT/checkpoint/` (rerunning the same command resumes there),
`OUT/model.safetensors` + `OUT/model.json` and `OUT/metrics.json` (settings, held-out loss,
accuracy on the quote / bracket / set_or_string tasks, nonzero fraction, the loss curve).

`prune` finds the smallest node circuit of a model on one task (`jaxcirc.sparse.prune`; default
the shipped weight-sparse model): node means over held-out pretraining rows, the circuit at
`--target-loss`, then evaluated on fresh prompts with the rest mean-ablated (sufficiency) and
with the circuit mean-ablated (necessity). Writes `OUT/circuit.json` (nodes, edges, losses,
accuracies) and `OUT/circuit.png` (`plot_circuit`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._patch import choice
from ._prune import keep_fraction

TASKS = ("quote", "bracket", "set_or_string")
PRESETS = ("weight_sparse", "gpt2", "llama", "neox", "attn_only")
SHIPPED_SPARSE = "python_sparse_2l"  # jaxcirc.zoo.python_model("sparse")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sparse",
        help="weight-sparse transformers: pretrain one on Python code, prune a task circuit",
        description=__doc__.split("\n\n")[0],
    )
    commands = parser.add_subparsers(
        title="sparse commands", dest="sparse_command", metavar="SPARSE_COMMAND"
    )
    parser.set_defaults(run=lambda args: _usage(parser))
    _add_train(commands)
    _add_prune(commands)
    return parser


def _usage(parser) -> int:
    import sys

    parser.print_help(sys.stderr)
    return 2


def positive(kind: str, low: int = 1):
    """An argparse `type`: an int `>= low`."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} ({kind}); got {n}")
        return n

    parse.__name__ = kind
    return parse


def _add_train(commands) -> None:
    p = commands.add_parser(
        "train",
        help="pretrain a dense or weight-sparse model on the Python standard library",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("sparse-out"), help="output folder")
    p.add_argument("--steps", type=positive("steps"), default=1500, help="training steps")
    p.add_argument("--batch", type=positive("batch"), default=32, help="rows per step")
    p.add_argument("--seq", type=positive("seq", 2), default=128, help="tokens per row")
    p.add_argument(
        "--fraction",
        type=keep_fraction,
        default=None,
        help="target nonzero fraction of every weight matrix (omit: dense)",
    )
    p.add_argument("--floor", type=positive("floor", 0), default=4,
                   help="nonzeros kept in every row and column at least")  # fmt: skip
    p.add_argument("--lr", type=float, default=1.28e-2, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the row order")
    p.add_argument(
        "--preset",
        type=choice("preset", PRESETS),
        default="weight_sparse",
        help="model preset (jaxcirc.models); d_vocab is the BPE's 2048",
    )
    p.add_argument("--d-model", type=positive("d_model"), default=None)
    p.add_argument("--n-layers", type=positive("n_layers"), default=None)
    p.add_argument(
        "--eval-every",
        type=positive("eval_every"),
        default=None,
        help="steps between evaluations (default 10 %% of training)",
    )
    p.add_argument(
        "--eval-rows",
        type=positive("eval_rows"),
        default=64,
        help="held-out rows for the pretraining loss",
    )
    p.add_argument(
        "--task-prompts",
        type=positive("task_prompts", 2),
        default=128,
        help="prompts per task for the accuracies (even)",
    )
    p.add_argument("--checkpoint-every", type=positive("checkpoint_every"), default=100)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run_train, parser=p)  # fmt: skip


def _add_prune(commands) -> None:
    p = commands.add_parser(
        "prune",
        help="the smallest task circuit of a (weight-sparse) model",
        description=__doc__.split("\n\n")[2],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="PATH of PATH.safetensors + PATH.json (what `sparse train` writes as "
        "OUT/model) or a jaxcirc.save folder (default: the shipped sparse model)",
    )
    p.add_argument("--task", type=choice("task", TASKS), default="quote")
    p.add_argument(
        "--target-loss",
        type=float,
        default=0.15,
        help="task loss (binary cross-entropy) the circuit must reach",
    )
    p.add_argument("--steps", type=positive("steps"), default=2000,
                   help="mask training steps (Gao et al.: 2000)")  # fmt: skip
    p.add_argument("--k-coef", type=float, default=1e-4, help="cost per kept node")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate of the node logits")
    p.add_argument(
        "--prompts",
        type=positive("prompts", 2),
        default=256,
        help="task prompts for training the mask (even); as many fresh ones evaluate",
    )
    p.add_argument(
        "--mean-rows",
        type=positive("mean_rows"),
        default=64,
        help="held-out pretraining rows for the node means",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("sparse-prune-out"), help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run_prune, parser=p)  # fmt: skip


def _write_json(path: Path, record: dict) -> Path:
    from .._atomic import atomic_write

    text = json.dumps(record, indent=1) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ------------------------------------------------------------------------------ train


def run_train(args) -> int:
    import jax

    from .. import models
    from ..io import python_bpe
    from ..sparse import evaluate_lm, train_lm
    from ..tasks import python_rows, python_tasks
    from ..zoo._induction import save

    p = args.parser
    if not (args.lr > 0 and args.lr < float("inf")):
        p.error(f"argument --lr: must be a positive number; got {args.lr}")
    if args.task_prompts % 2:
        p.error(f"argument --task-prompts: must be even (clean/contrast pairs); got "
                f"{args.task_prompts}")  # fmt: skip
    tokenizer = python_bpe()
    overrides = {"d_vocab": tokenizer.vocab_size}
    if args.d_model is not None:
        overrides["d_model"] = args.d_model
    if args.n_layers is not None:
        overrides["n_layers"] = args.n_layers
    preset = getattr(models, args.preset)
    cfg = preset(**overrides)
    if args.seq > cfg.n_ctx:
        overrides["n_ctx"] = args.seq
    model = preset(key=jax.random.key(args.seed), **overrides)
    train, held, held_files = python_rows(tokenizer, args.seq, args.steps * args.batch,
                                          args.eval_rows)  # fmt: skip
    if args.batch > train.shape[0]:
        p.error(f"argument --batch: the corpus gives {train.shape[0]} rows of {args.seq} tokens; "
                f"batch must be in 1..{train.shape[0]}")  # fmt: skip
    tasks = python_tasks(tokenizer, args.task_prompts, 0)
    eval_every = args.eval_every or max(args.steps // 10, 1)
    kind = "dense" if args.fraction is None else f"sparse (fraction {args.fraction:g})"

    def report(step, model, record):
        text = ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                         if k != "step" and not k.endswith("_loss"))  # fmt: skip
        print(f"step {step}: {text}", flush=True)

    trained, history = train_lm(
        model, train, steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr,
        fraction=args.fraction, floor=args.floor, key=args.seed, eval_tokens=held, tasks=tasks,
        eval_every=eval_every, checkpoint=args.out / "checkpoint",
        checkpoint_every=args.checkpoint_every, progress=not args.no_progress, on_eval=report,
    )  # fmt: skip
    final = evaluate_lm(trained, tokens=held, tasks=python_tasks(tokenizer, args.task_prompts, 1))
    save(args.out / "model", trained)
    record = {
        "kind": kind,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("run", "parser", "command", "sparse_command")},
        "model": json.loads(trained.cfg.to_json()),
        "data": {"train_rows": list(train.shape), "held_out_rows": list(held.shape),
                 "held_out_files": held_files},
        "final": {**final, "nonzero": history["nonzero"][-1], "train_loss": history["loss"][-1]},
        "eval": history["eval"],
        "curve": {k: history[k] for k in ("step", "loss", "fraction", "nonzero", "lr")},
        "seconds": history["seconds"],
        "model_path": str(args.out / "model"),
    }  # fmt: skip
    path = _write_json(args.out / "metrics.json", record)
    acc = ", ".join(f"{t} {final[t]:.1%}" for t in TASKS)
    print(f"{kind}: held-out loss {final['loss']:.4f}, accuracy {acc}; nonzero fraction "
          f"{history['nonzero'][-1]:.4f}")  # fmt: skip
    print(f"wrote {args.out / 'model'}.safetensors, {path}")
    return 0


# ------------------------------------------------------------------------------ prune


def load_model(path: Path | None):
    """The model at `path`: `PATH.safetensors` + `PATH.json`, or a `jaxcirc.save` folder;
    `None`: the shipped weight-sparse Python model."""
    from ..zoo._induction import _load

    if path is None:
        from ..zoo import python_model

        try:
            return python_model("sparse")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"the shipped weight-sparse model is missing ({e}); train "
                                    "one with `jaxcirc sparse train --fraction 0.0625` and pass "
                                    "--model OUT/model") from None  # fmt: skip
    if path.is_dir():
        from .. import load

        return load(path)
    if Path(f"{path}.safetensors").is_file() or Path(f"{path}.json").is_file():
        return _load(path)
    raise FileNotFoundError(f"no model at {path}: expected {path}.safetensors and {path}.json "
                            "(what `jaxcirc sparse train` writes as OUT/model) or a jaxcirc.save "
                            "folder")  # fmt: skip


def run_prune(args) -> int:
    import numpy as np

    from ..io import python_bpe
    from ..sparse import _prune as P
    from ..tasks import python_rows, python_tasks

    p = args.parser
    for name in ("target_loss", "lr"):
        value = getattr(args, name)
        if not (value > 0 and value < float("inf")):
            p.error(f"argument --{name.replace('_', '-')}: must be a positive number; got {value}")
    if not (args.k_coef >= 0 and args.k_coef < float("inf")):
        p.error(f"argument --k-coef: must be a number >= 0; got {args.k_coef}")
    if args.prompts % 2:
        p.error(f"argument --prompts: must be even (clean/contrast pairs); got {args.prompts}")
    model = load_model(args.model)
    tokenizer = python_bpe()
    if model.cfg.d_vocab != tokenizer.vocab_size:
        raise ValueError(f"the model reads {model.cfg.d_vocab} token ids but the Python BPE has "
                         f"{tokenizer.vocab_size}; prune needs a model trained on it")  # fmt: skip
    seq = min(model.cfg.n_ctx, 128)
    _, held, _ = python_rows(tokenizer, seq, 1, args.mean_rows)
    means = P.node_means(model, held)
    train_task = python_tasks(tokenizer, args.prompts, args.seed, (args.task,))[args.task]
    test_task = python_tasks(tokenizer, args.prompts, args.seed + 1, (args.task,))[args.task]
    circuit = P.prune(model, train_task, means, target_loss=args.target_loss, steps=args.steps,
                      k_coef=args.k_coef, lr=args.lr, key=args.seed,
                      progress=not args.no_progress)  # fmt: skip
    full = {n: np.ones(np.shape(m), bool) for n, m in circuit.masks.items()}
    evaluation = {
        "full_model": P.evaluate(model, test_task, full, means),
        "circuit_only": P.evaluate(model, test_task, circuit, means, ablate="complement"),
        "circuit_ablated": P.evaluate(model, test_task, circuit, means, ablate="circuit"),
    }
    nodes = {n: np.flatnonzero(np.ravel(np.asarray(m))).tolist()
             for n, m in circuit.masks.items()}  # fmt: skip
    edges = P.edges(model, circuit.masks)
    record = {
        "task": args.task,
        "model": str(args.model) if args.model is not None else f"shipped {SHIPPED_SPARSE}",
        "target_loss": args.target_loss,
        "loss": circuit.loss,
        "accuracy": circuit.accuracy,
        "scale": circuit.scale,
        "shift": circuit.shift,
        "n_nodes": circuit.n_nodes,
        "n_edges": circuit.n_edges,
        "total_nodes": int(sum(np.size(m) for m in circuit.masks.values())),
        "evaluation_fresh_prompts": evaluation,
        "nodes": {n: ids for n, ids in nodes.items() if ids},
        "edges": [{"src": s, "dst": d, "weight": w} for s, d, w in edges],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("run", "parser", "command", "sparse_command")},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = _write_json(args.out / "circuit.json", record)
    from .._atomic import atomic_write

    fig_path = args.out / "circuit.png"
    atomic_write(fig_path, lambda tmp: _plot(P, model, circuit, tmp))
    print(f"{args.task}: {circuit.n_nodes} of {record['total_nodes']} nodes, {circuit.n_edges} "
          f"edges; task loss {circuit.loss:.4f}, accuracy {circuit.accuracy:.1%} (fresh prompts: "
          f"circuit only {evaluation['circuit_only']['accuracy']:.1%}, circuit ablated "
          f"{evaluation['circuit_ablated']['accuracy']:.1%})")  # fmt: skip
    print(f"wrote {path}, {fig_path}")
    return 0


def _plot(P, model, circuit, tmp: str) -> None:
    import matplotlib.pyplot as plt

    fig = P.plot_circuit(model, circuit)
    fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
