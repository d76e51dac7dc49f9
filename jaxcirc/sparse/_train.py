"""Pretraining a (weight-sparse) transformer on next-token prediction (Gao et al. 2025,
arXiv 2511.13653).

`train_lm` trains a model on rows of tokens with the paper's optimizer (`sparse_adamw`:
RMS-normalised gradients, AdamW, warm-up and linear decay) and, with `fraction`, the weight
sparsity annealed by `l0_schedule` (dense until 1 % of training, the target from 50 % on);
without it the same optimizer trains a dense model. One compiled step (forward, backward,
optimizer) serves the whole run. The batches are a fixed function of the seed and the step
(each epoch a new permutation of the rows), so a run resumed from its checkpoint ends exactly
where the uninterrupted run would. `evaluate_lm` gives the held-out next-token loss and the
accuracy on binary tasks: `logit(answer) > logit(distractor)` at each clean prompt's last
position (`lengths - 1`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import recover as _recover
from .._checks import check_float, check_int
from .._finite import check_finite
from .._mesh import check_divides, check_mesh, replicate, split_along
from ..sae._checkpoint import _load_dir, _save_dir
from ._masked import default_include, l0_schedule
from ._optimizer import sparse_adamw, warmup_linear_decay
from ._prune import _check_task, _fit, _margins_jit, _scores, _side

MARKER = "JAXCIRC_LM_TRAIN"


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The settings of a run (a checkpoint resumes only with the same ones)."""

    steps: int
    batch: int
    seq: int
    lr: float
    fraction: float | None
    floor: int
    seed: int
    warmup: float
    anneal: tuple[float, float]

    def __post_init__(self):
        check_int(self.steps, "steps", 1)
        check_int(self.batch, "batch", 1)
        check_int(self.seq, "seq", 2)
        check_float(self.lr, "lr", 0.0, low_open=True)
        if self.fraction is not None:
            check_float(self.fraction, "fraction (the target nonzero fraction)", 0.0, 1.0,
                        low_open=True)  # fmt: skip
        check_int(self.floor, "floor", 0)
        check_float(self.warmup, "warmup (a fraction of training)", 0.0, 1.0, high_open=True)

    def json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _seed(key) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, jax.Array):
        return int(jax.random.randint(key, (), 0, 2**31 - 1))
    raise TypeError(f"key must be an int seed or a jax.random key; got {type(key).__name__}")


def batch_rows(seed: int, step: int, batch: int, n: int) -> np.ndarray:
    """The rows of step `step`: positions `step·batch ..` of the concatenated epochs, each epoch
    a permutation of `0..n-1` drawn from `(seed, epoch)`."""
    pos = step * batch + np.arange(batch)
    epochs = pos // n
    out = np.empty(batch, np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng((seed, int(e))).permutation(n)
        out[epochs == e] = perm[pos[epochs == e] % n]
    return out


def next_token_loss(model, tokens):
    """Mean cross-entropy of `tokens[:, 1:]` given the prefixes (`tokens [batch, seq]`)."""
    logits = jax.vmap(model)(tokens).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


def _included(params) -> list:
    return [x for p, x in jax.tree_util.tree_leaves_with_path(params) if default_include(p, x)]


def _step_fn(static, opt):
    """The compiled step `(params, opt_state, tokens) -> (params, opt_state, loss, nonzeros)`."""

    @eqx.debug.assert_max_traces(max_traces=1)
    def step(params, opt_state, tokens):
        loss_fn = lambda p: next_token_loss(eqx.combine(p, static), tokens)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        nonzero = sum(jnp.count_nonzero(x) for x in _included(params))
        return params, opt_state, loss, nonzero

    return eqx.filter_jit(step)


@eqx.filter_jit
def _loss_sum(model, tokens):
    return next_token_loss(model, tokens) * tokens.shape[0]


def lm_loss(model, tokens, *, batch_size: int = 64) -> float:
    """Held-out next-token loss of `model` on `tokens [n, seq]` (mean over rows and positions)."""
    tokens = model.check_tokens(tokens, name="tokens", ndim=2)
    check_int(batch_size, "batch_size", 1)
    total = 0.0
    for start in range(0, tokens.shape[0], batch_size):
        total += float(_loss_sum(model, tokens[start : start + batch_size]))
    value = total / tokens.shape[0]
    if not math.isfinite(value):
        raise FloatingPointError(f"the held-out loss is {value}: the model gives non-finite logits")
    return value


def _task_margins(model, task, tokens, data):
    """`logit(answer) − logit(distractor)` at each prompt's last position, checked finite."""
    delta = _margins_jit(model, {}, {}, tokens, *data[1:])
    which = "contrast" if tokens is not data[0] else "clean"
    check_finite(np.asarray(delta), f"task {task.name!r} margin on the {which} prompts",
                 axes=("row",))  # fmt: skip
    return delta


def task_scores(model, task, *, calibration=None, pairs: bool = False) -> dict[str, float]:
    """`accuracy` (rows with `logit(answer) > logit(distractor)` at the last clean position) and
    `loss` (the binary cross-entropy of answer vs distractor) of `model` on `task`; with
    `calibration=(scale, bias)` (from `calibrate` on other prompts) both read the calibrated
    margins `scale·Δ ± bias` (`jaxcirc.sparse.prune`'s module docstring). With `pairs`, also
    `pair_accuracy`: rows whose margin on the clean prompt beats the same margin on its contrast
    prompt (the model ranks the two contexts right, whatever its prior between the tokens)."""
    data = _check_task(model, task)
    delta = _task_margins(model, task, data[0], data)
    if calibration is None:
        loss, acc = _scores(delta)
    else:
        scale, bias = (float(v) for v in calibration)
        loss, acc = _scores(delta, scale, bias, _side(*data[2:]))
    out = {"accuracy": float(acc), "loss": float(loss)}
    if pairs:
        model.check_tokens(task.corrupt, name="task.corrupt", ndim=2)
        contrast = _task_margins(model, task, task.corrupt, data)
        out["pair_accuracy"] = float((delta > contrast).mean())
    return out


def calibrate(model, task) -> tuple[float, float]:
    """The logit scale and the bias between a binary task's two tokens that minimise `model`'s
    task loss on `task` (what `prune` fits for a circuit): `(scale, bias)`."""
    data = _check_task(model, task)
    delta = _task_margins(model, task, data[0], data)
    scale, bias = _fit(delta, _side(*data[2:]))
    return float(scale), float(bias)


def evaluate_lm(model, *, tokens=None, tasks: Mapping | None = None) -> dict:
    """`{"loss": held-out loss on tokens, "<task>": accuracy, "<task>_loss": task loss, ...}`."""
    out: dict = {}
    if tokens is not None:
        out["loss"] = lm_loss(model, tokens)
    for name, task in (tasks or {}).items():
        s = task_scores(model, task)
        out[name] = s["accuracy"]
        out[f"{name}_loss"] = s["loss"]
    return out


def _check_tokens(model, tokens, seq):
    if not hasattr(tokens, "shape") or len(tokens.shape) != 2:
        raise ValueError(
            f"tokens must be an int array [rows, seq]; got {type(tokens).__name__} of shape "
            f"{getattr(tokens, 'shape', None)}"
        )
    width = tokens.shape[1]
    seq = width if seq is None else check_int(seq, "seq", 2)
    if seq > width:
        raise ValueError(f"seq = {seq} is longer than the token rows ({width}); seq must be in "
                         f"2..{width}")  # fmt: skip
    if seq > model.cfg.n_ctx:
        raise ValueError(f"seq = {seq} is longer than the model's context (n_ctx = "
                         f"{model.cfg.n_ctx}); seq must be in 2..{model.cfg.n_ctx}")  # fmt: skip
    tokens = np.asarray(tokens)[:, :seq]
    model.check_tokens(tokens, name="tokens", ndim=2)
    return tokens.astype(np.int32), seq


def train_lm(
    model,
    tokens,
    *,
    steps: int,
    batch: int = 32,
    seq: int | None = None,
    lr: float = 1.28e-2,
    fraction: float | None = None,
    floor: int = 4,
    key=0,
    warmup: float = 0.01,
    anneal: tuple[float, float] = (0.01, 0.5),
    eval_tokens=None,
    tasks: Mapping | None = None,
    eval_every: int | None = None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable | None = None,
    on_eval: Callable | None = None,
    mesh=None,
    batch_axis=None,
):
    """Train `model` on next-token prediction over the rows of `tokens [n, ≥ seq]` (their first
    `seq` columns); returns `(model, history)`.

    - `fraction=None`: dense; a float in (0, 1]: every weight matrix keeps that fraction of
      nonzeros at the end (at least `floor` per row and column), annealed from dense over
      `anneal` (fractions of training; Gao et al. 2025: 1 %..50 %).
    - `lr`: the peak learning rate of `sparse_adamw` (warm-up over `warmup`, linear decay to 0).
    - `key`: an int seed (or a jax key) for the order of the rows.
    - `eval_tokens`, `tasks` (`{name: Task}`): evaluated (`evaluate_lm`) every `eval_every`
      steps and at the end.
    - `checkpoint`: a folder; the state is saved every `checkpoint_every` steps and at the end
      (atomically), and with `resume=True` a run on a folder holding a checkpoint of the same
      settings continues from it (bitwise the uninterrupted run).
    - `callback(step, record)` after each step (`record`: that step's history values);
      `on_eval(step, model, record)` at each evaluation (e.g. to keep snapshots).
    - `mesh` (a `jax.sharding.Mesh`): data parallelism. Each batch of rows is split over the
      mesh axis `batch_axis` (default: its first; `batch` must divide evenly), the weights
      and optimizer state are replicated, and the compiled step runs as one SPMD program
      whose gradients are all-reduced (GSPMD); the same run as without a mesh, to float32
      round-off.

    `history`: `step`, `loss` (the batch loss before the update), `fraction` (the scheduled
    nonzero fraction), `nonzero` (the nonzero fraction of the sparsified matrices after the
    update), `lr` (per step, lists), `eval` (a list of `{"step", ...evaluate_lm}`), `seconds`.
    """
    from .._progress import progress_bar

    tokens, seq = _check_tokens(model, tokens, seq)
    config = LMConfig(steps, batch, seq, float(lr), None if fraction is None else float(fraction),
                      floor, _seed(key), float(warmup), tuple(anneal))  # fmt: skip
    if batch > tokens.shape[0]:
        raise ValueError(f"batch = {batch} is larger than the {tokens.shape[0]} token rows; "
                         f"batch must be in 1..{tokens.shape[0]}")  # fmt: skip
    if eval_every is not None:
        check_int(eval_every, "eval_every", 1)
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every", 1)
    if eval_tokens is not None:
        eval_tokens = model.check_tokens(np.asarray(eval_tokens)[:, :seq], name="eval_tokens",
                                         ndim=2)  # fmt: skip
    for name, task in (tasks or {}).items():
        _check_task(model, task)

    target = 1.0 if fraction is None else config.fraction
    opt = sparse_adamw(steps, target=target, learning_rate=config.lr, warmup=config.warmup,
                       anneal=config.anneal, floor=floor)  # fmt: skip
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = opt.init(params)
    history = {"step": [], "loss": [], "fraction": [], "nonzero": [], "lr": [], "eval": [],
               "seconds": 0.0}  # fmt: skip
    start = 0
    if checkpoint is not None and resume:
        loaded = load_lm_checkpoint(checkpoint, config, model, (params, opt_state))
        if loaded is not None:
            (params, opt_state), start, history = loaded

    if mesh is not None:
        axes = check_mesh(mesh, batch_axis)
        check_divides(mesh, axes, batch)  # refused before any training
        params, opt_state = replicate(mesh, (params, opt_state))
    sizes = sum(x.size for x in _included(params))
    lr_at = warmup_linear_decay(config.lr, steps, config.warmup)
    frac_at = (lambda s: 1.0) if fraction is None else l0_schedule(
        config.fraction, steps, start=config.anneal[0], end=config.anneal[1])  # fmt: skip
    step_fn = _step_fn(static, opt)

    def evaluate(step):
        current = eqx.combine(params, static)
        record = {"step": step, **evaluate_lm(current, tokens=eval_tokens, tasks=tasks)}
        history["eval"].append(record)
        if on_eval is not None:
            on_eval(step, current, record)

    t0 = time.perf_counter() - history["seconds"]
    with progress_bar(progress and start < steps, total=steps, initial=start, desc="train LM",
                      unit="step") as _:  # fmt: skip
        from .._progress import tick

        for step in range(start, steps):
            rows = tokens[batch_rows(config.seed, step, batch, tokens.shape[0])]
            rows = jnp.asarray(rows) if mesh is None else split_along(mesh, axes, rows)
            params, opt_state, loss, nonzero = step_fn(params, opt_state, rows)
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"train_lm: the loss is {loss} at step {step}; lower lr (now {config.lr})"
                )
            record = {"step": step + 1, "loss": loss, "fraction": float(frac_at(step)),
                      "nonzero": int(nonzero) / sizes, "lr": float(lr_at(step))}  # fmt: skip
            for k, v in record.items():
                history[k].append(v)
            if callback is not None:
                callback(step + 1, record)
            done = step + 1
            if (eval_every is not None and done % eval_every == 0) or done == steps:
                evaluate(done)
            tick()
            if checkpoint is not None and (
                done == steps or (checkpoint_every is not None and done % checkpoint_every == 0)
            ):
                history["seconds"] = time.perf_counter() - t0
                save_lm_checkpoint(checkpoint, config, model, (params, opt_state), done, history)
    history["seconds"] = time.perf_counter() - t0
    return eqx.combine(params, static), history


# ------------------------------------------------------------------------------ checkpoints


def save_lm_checkpoint(path, config: LMConfig, model, state, step: int, history: dict) -> Path:
    """Write the training state (parameters and optimizer state), the step and the history to
    the folder `path` atomically (the SAE checkpoints' format: orbax arrays, JSON, hashes)."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    meta = {"settings": config.json(), "model": json.loads(model.cfg.to_json()), "step": step,
            "history": history}  # fmt: skip
    return _save_dir(Path(path), "state.json", meta, arrays, MARKER)


def load_lm_checkpoint(path, config: LMConfig, model, template):
    """`(state, step, history)` from the checkpoint at `path`, or `None` when it holds none; a
    checkpoint of another model or other settings is an error naming the difference."""
    path = Path(path)
    _recover(path)
    if not (path / MARKER).is_file():
        if path.is_dir() and any(path.iterdir()):
            raise FileExistsError(
                f"{path} holds files but no language-model training "
                f"checkpoint ({MARKER} missing); choose an empty folder"
            )
        return None
    meta, arrays = _load_dir(path, "state.json", MARKER)
    mine = {"model": json.loads(model.cfg.to_json()), **config.json()}
    theirs = {"model": meta["model"], **meta["settings"]}
    for k in mine:
        if mine[k] != theirs.get(k):
            raise ValueError(
                f"the checkpoint at {path} was written with {k}={theirs.get(k)}; this run has "
                f"{k}={mine[k]}: resume with the same settings, or pass resume=False (or use "
                "another folder) to start over"
            )
    leaves, treedef = jax.tree_util.tree_flatten(template)
    stored = [arrays[f"leaf_{i:05d}"] for i in range(len(arrays))]
    if [(x.shape, np.dtype(x.dtype)) for x in leaves] != [(x.shape, x.dtype) for x in stored]:
        raise ValueError(f"the checkpoint at {path} holds arrays of other shapes or dtypes "
                         "than this run's state")  # fmt: skip
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in stored])
    return state, int(meta["step"]), meta["history"]
