"""Train the shipped weight-sparse and dense Python-code models (Gao et al. 2025, arXiv
2511.13653): the `jaxcirc.models.weight_sparse()` shape (2 layers, d_model 128, 8 heads, 512
MLP neurons, the 2048-token Python BPE, AbsTopK 1/4 activations, attention sink), pretrained on
the Python standard library's source with `jaxcirc.sparse.train_lm`, once dense and once with
every weight matrix annealed to `--fraction` nonzeros (L0 schedule over 1 %..50 % of training,
at least `--floor` per row and column), same seeds, same data, same optimizer.

Data: `jaxcirc.tasks.python_source()` (the standard library's `.py` files in sorted path
order), rows of `--seq` tokens opened by BOS (`token_sequences`). Held out for the pretraining
loss: every 25th file of `jaxcirc.tasks._corpus.stdlib_files()` (the list goes into the
record); the model trains on the others. Task accuracies (`quote`, `bracket`, `set_or_string`:
`logit(answer) > logit(distractor)` at each clean prompt's last position) are checked every
`--eval-every` steps (10 % of training by default) on 128 prompts per task (seed 0) and at
the end on 512 fresh prompts (seed 1).

Writes `jaxcirc/data/python_sparse_2l.{json,safetensors}` and
`jaxcirc/data/python_dense_2l.{json,safetensors}` (float32, the format of the zoo's shipped
models), dense snapshots at every evaluation to `--work`, the one whose held-out loss is nearest
the sparse model's as `jaxcirc/data/python_dense_matched_2l.*` ("matched pretraining loss"),
and the record
`jaxcirc/data/python_models.json` (settings, held-out files, curves, snapshot losses, final
accuracies). Checkpoints in `--work` make a killed run resumable: run the same command again.

    python benchmarks/train_sparse_python.py            # both models, ~45 min on 2 CPU cores
    python benchmarks/train_sparse_python.py --quick    # a smoke run, writes to --work only

On 2 shared CPU cores one step of batch 32 × 128 tokens takes about 0.65 s dense and 0.75 s
sparse, hence the CPU defaults (1500 steps, ~6 M tokens, under two epochs of the 3.5 M-token
corpus). On a GPU the larger setting would be `--steps 20000 --batch 64` (~160 M tokens) with
the same learning rate and schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # run from a checkout without installing jaxcirc

DATA = HERE.parent / "jaxcirc" / "data"
TASKS = ("quote", "bracket", "set_or_string", "square_bracket")
HOLD_OUT_EVERY = 25


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.28e-2)
    p.add_argument("--fraction", type=float, default=1 / 16)
    p.add_argument("--floor", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=150, help="also the dense snapshots")
    p.add_argument("--eval-rows", type=int, default=256)
    p.add_argument("--only", choices=("dense", "sparse"), default=None)
    p.add_argument("--work", type=Path, default=HERE / "out" / "sparse_python")
    p.add_argument("--out", type=Path, default=DATA, help="where the models and record go")
    p.add_argument("--quick", action="store_true", help="40 steps of batch 8, nothing shipped")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.eval_every, args.eval_rows = 40, 8, 20, 32
        args.out = args.work / "quick"
        args.work = args.work / "quick"
    return args


def data(args):
    """`(tokenizer, train rows, held-out rows, held-out file names)`."""
    from jaxcirc.io import python_bpe
    from jaxcirc.tasks import python_rows

    tok = python_bpe()
    train, held, names = python_rows(tok, args.seq, args.steps * args.batch, args.eval_rows,
                                     hold_out_every=HOLD_OUT_EVERY)  # fmt: skip
    return tok, train, held, names


def tasks(tok, n: int, seed: int) -> dict:
    from jaxcirc.tasks import python_tasks

    return python_tasks(tok, n, seed, TASKS)


def run(args, kind: str, tok, train, held, record: dict) -> None:
    import jax

    from jaxcirc.models import weight_sparse
    from jaxcirc.sparse._train import evaluate_lm, lm_loss, train_lm
    from jaxcirc.zoo._induction import save

    model = weight_sparse(key=jax.random.key(args.seed))
    fraction = args.fraction if kind == "sparse" else None

    def on_eval(step, current, rec):
        line = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step")
        print(f"[{kind}] step {step}: {line}", flush=True)
        if kind == "dense":  # a snapshot at every evaluation (each --eval-every steps)
            save(args.work / f"dense_step{step:06d}", current)

    def on_step(step, rec):
        if step % 25 == 0:
            print(f"[{kind}] step {step}: loss {rec['loss']:.4f} nonzero {rec['nonzero']:.4f} "
                  f"lr {rec['lr']:.3g}", flush=True)  # fmt: skip

    t0 = time.time()
    trained, history = train_lm(
        model, train, steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr,
        fraction=fraction, floor=args.floor, key=args.seed, eval_tokens=held,
        tasks=tasks(tok, 128, 0), eval_every=args.eval_every,
        checkpoint=args.work / f"{kind}_checkpoint", checkpoint_every=100, progress=False,
        callback=on_step, on_eval=on_eval,
    )  # fmt: skip
    final = evaluate_lm(trained, tokens=held, tasks=tasks(tok, 512, 1))
    name = f"python_{kind}_2l"
    save(args.out / name, trained)
    size = (args.out / f"{name}.safetensors").stat().st_size
    record[kind] = {
        "file": f"{name}.safetensors",
        "bytes": size,
        "fraction": fraction,
        "final": final,
        "seconds": history["seconds"],
        "wall_seconds": time.time() - t0,
        "curve": {k: history[k][:: max(args.steps // 200, 1)] for k in
                  ("step", "loss", "fraction", "nonzero", "lr")},
        "eval": history["eval"],
    }  # fmt: skip
    if kind == "dense":  # from the files, so a resumed run lists the earlier ones too
        from jaxcirc.zoo._induction import _load

        snapshots = []
        for file in sorted(args.work.glob("dense_step*.safetensors")):
            path = file.with_suffix("")
            step = int(path.name.removeprefix("dense_step"))
            if step <= args.steps:
                snapshots.append({"step": step, "path": str(path),
                                  "loss": lm_loss(_load(path), held)})  # fmt: skip
        record["dense"]["snapshots"] = snapshots
    print(f"[{kind}] final: {final} ({size / 2**20:.2f} MiB)", flush=True)


def ship_matched(snapshot: Path, out: Path) -> None:
    """Copy the dense snapshot at matched pretraining loss to `out/python_dense_matched_2l.*`."""
    from jaxcirc._atomic import atomic_write

    for suffix in (".json", ".safetensors"):
        data = snapshot.with_name(snapshot.name + suffix).read_bytes()
        target = out / f"python_dense_matched_2l{suffix}"
        atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data))


def main(argv=None) -> int:
    args = _args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    tok, train, held, names = data(args)
    print(f"train rows {train.shape}, held-out rows {held.shape} from {len(names)} files",
          flush=True)  # fmt: skip
    path = args.out / "python_models.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["settings"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        if k not in ("work", "out")
    }  # fmt: skip
    record["data"] = {
        "corpus": "jaxcirc.tasks.python_source() (Python standard library .py files)",
        "train_rows": list(train.shape),
        "held_out": f"every {HOLD_OUT_EVERY}th file of stdlib_files(): {len(names)} files",
        "held_out_files": names,
        "python": sys.version.split()[0],
    }
    from jaxcirc._atomic import atomic_write

    for kind in ("dense", "sparse"):
        if args.only not in (None, kind):
            continue
        run(args, kind, tok, train, held, record)
        if "dense" in record and "sparse" in record:
            target = record["sparse"]["final"]["loss"]
            snaps = record["dense"]["snapshots"]
            best = min(snaps, key=lambda s: abs(s["loss"] - target))
            record["matched"] = {"sparse_loss": target, **best}
            ship_matched(Path(best["path"]), args.out)
        text = json.dumps(record, indent=1) + "\n"
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
