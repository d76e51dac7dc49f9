"""Training sparse autoencoders with optax on a stream of activation batches.

One stream feeds every SAE of a run. SAEs of the same class and shapes (different sites of a
model, or different sparsity coefficients, which are arrays) are stacked and trained by one
`eqx.filter_vmap`-ed step on accelerators (`_vmap_stacks`: on CPU each runs unbatched); the
others run one after another inside the same compiled step, which is traced once per run.

Each step, for every SAE (the conventions of SAELens, Bloom et al. 2024):

- activations are scaled so that `E‖x‖ = √d_in` (the factor is estimated on the first batch
  and folded back into the biases and thresholds at the end, so the returned SAEs read raw
  activations; the initial thresholds of the SAEs given are read in the scaled space);
  `b_dec` starts at the first batch's mean. With `pretrained=True` the SAEs given are trained
  ones that read raw activations: they are moved into the scaled space instead (biases and
  thresholds times the factor) and keep their `b_dec`, so training goes on from them;
- loss `= E‖x − x̂‖² + sparsity term`: the decoder-norm-weighted L1 for ReLU (its coefficient
  warmed up linearly over `sparsity_warmup_steps`), the straight-through L0 for JumpReLU
  (Rajamanoharan et al. 2024), none for TopK/BatchTopK, which get Gao et al. (2024)'s AuxK
  loss instead: the `k_aux` largest pre-activations among the dead latents reconstruct the
  residual `x − x̂`, weighted by `aux_coefficient · min(n_dead / k_aux, 1)`;
- the gradient's component parallel to each decoder row is removed, Adam steps (learning rate
  warmed up linearly over `warmup_steps`, then constant, then decayed linearly to zero over
  the last `decay_fraction` of the run), and the decoder rows are put back at unit norm;
- a latent is *dead* once it has not fired for `dead_tokens` tokens; ReLU and JumpReLU SAEs are
  not resampled (the tied initialisation and norm-weighted penalty of Conerly et al. 2024 keep
  most latents alive): their dead fraction is measured and reported;
- TopK's training step decodes from the `k` active decoder rows only and scatters its weight
  gradients into the active rows, without the gradient of each input row (`_SPARSE_TOPK`;
  the same steps as the dense form to rounding, `tests/test_sae_train.py`);
- BatchTopK's inference threshold is the running mean (rate `threshold_rate`) of the smallest
  activation kept in each batch (Bussmann et al. 2024).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_float, check_int
from .._finite import NonFiniteError, first_nonfinite
from .._mesh import check_mesh, replicate, split_along
from ._sae import SAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

_SPARSE_TOPK = True
DEFAULT_SPARSITY = {"relu": 5.0, "jumprelu": 1.0, "topk": 0.0, "batchtopk": 0.0}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters shared by every SAE of a run (see the module docstring)."""

    lr: float = 4e-4
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    sparsity_warmup_steps: int = 0
    aux_coefficient: float = 1 / 32
    k_aux: int | None = None  # default d_in // 2 (Gao et al.), at most d_sae
    dead_tokens: int = 1_000_000
    threshold_rate: float = 0.01
    normalize: bool = True
    init_b_dec: bool = True
    pretrained: bool = False
    b1: float = 0.9
    b2: float = 0.999
    log_every: int = 10

    def __post_init__(self):
        check_float(self.lr, "lr", 0.0, low_open=True)
        check_int(self.warmup_steps, "warmup_steps", 0)
        check_float(self.decay_fraction, "decay_fraction", 0.0, 1.0)
        check_int(self.sparsity_warmup_steps, "sparsity_warmup_steps", 0)
        check_float(self.aux_coefficient, "aux_coefficient", 0.0)
        if self.k_aux is not None:
            check_int(self.k_aux, "k_aux", 1)
        check_int(self.dead_tokens, "dead_tokens", 1)
        check_float(self.threshold_rate, "threshold_rate", 0.0, 1.0, low_open=True)
        check_int(self.log_every, "log_every", 1)


class _Member(eqx.Module):
    """One SAE's training state (the SAE in the scaled space of its inputs)."""

    sae: SAE
    opt_state: optax.OptState
    since_fired: jax.Array  # tokens since each latent last fired, [d_sae] int32
    scale: jax.Array  # x is multiplied by this before the SAE sees it


@dataclasses.dataclass
class TrainResult:
    """`saes` (trained, in the order given, reading raw activations); `history` (one dict per
    logged step: per-SAE `loss`, `mse`, `fvu`, `l0`, `aux`, `dead_fraction` of the batch);
    `dead_fraction` (per SAE: latents silent for `dead_tokens` tokens at the end); `steps`,
    `tokens`, `seconds` (this process's training time)."""

    saes: tuple[SAE, ...]
    history: list[dict]
    dead_fraction: tuple[float, ...]
    steps: int
    tokens: int
    seconds: float


# ------------------------------------------------------------------------- groups


def with_site(sae: SAE, site: str) -> SAE:
    """`sae` reading `site` (a static field, so a new module)."""
    return sae if sae.site == site else dataclasses.replace(sae, site=site)


def _group_key(sae: SAE):
    bare = with_site(sae, "")
    leaves, treedef = jax.tree_util.tree_flatten(bare)
    return treedef, tuple((x.shape, str(x.dtype)) for x in leaves)


def _groups(saes: Sequence[SAE], stack: bool = True) -> list[list[int]]:
    """Indices of the SAEs that can be stacked (same class, static fields and shapes); each
    alone without `stack`."""
    if not stack:
        return [[i] for i in range(len(saes))]
    groups: dict = {}
    for i, sae in enumerate(saes):
        groups.setdefault(_group_key(sae), []).append(i)
    return list(groups.values())


# stacking, unstacking and initialising happen on the host (NumPy): no small programs to compile
def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _unstack(tree, n):
    host = jax.tree.map(np.asarray, tree)
    return [jax.tree.map(lambda x: x[i], host) for i in range(n)]


def _opt_init(opt, params):
    """Adam's initial state (zero moments and counts), built on the host."""
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(opt.init, params))


# ------------------------------------------------------------------------- one step


def _optimizer(config: TrainConfig, steps: int):
    warm = min(config.warmup_steps, steps)
    decay = int(config.decay_fraction * steps)
    flat = max(steps - warm - decay, 0)
    parts, bounds = [], []
    if warm:
        parts.append(optax.linear_schedule(config.lr / max(warm, 1), config.lr, warm))
        bounds.append(warm)
    parts.append(optax.constant_schedule(config.lr))
    if decay:
        bounds.append(warm + flat)
        parts.append(optax.linear_schedule(config.lr, 0.0, decay))
    schedule = optax.join_schedules(parts, bounds) if bounds else parts[0]
    return optax.adam(schedule, b1=config.b1, b2=config.b2)


def _params(sae):
    """The trained arrays (BatchTopK's threshold is estimated, not learned)."""
    spec = jax.tree.map(eqx.is_array, sae)
    if isinstance(sae, BatchTopKSAE):
        spec = eqx.tree_at(lambda s: s.threshold, spec, False)
    return spec


def _member_step(
    member: _Member, x, coef, step, *, opt, config: TrainConfig, k_aux, aux: bool, scatter: bool
):
    sae = member.sae
    x = x * member.scale
    batch = x.shape[0]
    dead = member.since_fired >= config.dead_tokens

    def loss_fn(params, static):
        sae = eqx.combine(params, static)
        if type(sae) is TopKSAE and _SPARSE_TOPK:  # sparse products: the k active rows only
            data = jax.lax.stop_gradient(x)
            values, index = _topk_pre(
                data, sae.b_dec, sae.W_enc, sae.b_enc, sae.k, sae.center, scatter
            )
            values = jax.nn.relu(values)
            f = (values, index)
            if scatter:
                x_hat = _topk_decode(values, index, sae.W_dec)
            else:  # vmapped: autodiff's gather-transpose batches better than the scatter
                x_hat = jnp.einsum("bk,bkd->bd", values, sae.W_dec[index])
            err = x - (x_hat + sae.b_dec)
        elif isinstance(sae, JumpReLUSAE):
            f = sae.encode(x)
            err = x - (f @ sae.W_dec + sae.b_dec)
        else:
            f = sae.encode_batch(x)
            err = x - (f @ sae.W_dec + sae.b_dec)
        mse = jnp.mean(jnp.sum(err**2, axis=-1))
        sparse = jnp.zeros(())
        auxk = jnp.zeros(())
        if isinstance(sae, ReLUSAE):
            ramp = jnp.minimum(1.0, (step + 1) / max(config.sparsity_warmup_steps, 1))
            sparse = coef * ramp * sae.penalty(f)
        elif isinstance(sae, JumpReLUSAE):
            sparse = coef * sae.l0_penalty(x)
        elif aux:  # TopK, BatchTopK: AuxK on the dead latents (Gao et al. 2024, A.2)
            residual = jax.lax.stop_gradient(err)
            pre = jnp.where(dead, sae.pre(x), -jnp.inf)
            values, index = jax.lax.top_k(pre, k_aux)
            values = jnp.where(jnp.isfinite(values), jax.nn.relu(values), 0.0)
            rows = jnp.arange(batch)[:, None]
            f_aux = jnp.zeros_like(pre, shape=pre.shape).at[rows, index].set(values)
            f_aux = jnp.where(jnp.isfinite(f_aux), f_aux, 0.0)
            weight = jnp.minimum(dead.sum() / k_aux, 1.0)
            auxk = weight * jnp.mean(jnp.sum((residual - f_aux @ sae.W_dec) ** 2, axis=-1))
        loss = mse + sparse + config.aux_coefficient * auxk
        return loss, (f, err, mse, auxk)

    params, static = eqx.partition(sae, _params(sae))
    (loss, (f, err, mse, auxk)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, static)
    # the decoder rows stay on the unit sphere: drop the radial part of their gradient
    W = sae.W_dec
    g = grads.W_dec
    grads = eqx.tree_at(lambda s: s.W_dec, grads, g - jnp.sum(g * W, -1, keepdims=True) * W)
    updates, opt_state = opt.update(grads, member.opt_state, params)
    params = eqx.apply_updates(params, updates)
    W = params.W_dec
    params = eqx.tree_at(lambda s: s.W_dec, params, W / jnp.linalg.norm(W, axis=-1, keepdims=True))
    new = eqx.combine(params, static)
    if isinstance(new, BatchTopKSAE):
        smallest = jnp.min(jnp.where(f > 0, f, jnp.inf))
        smallest = jnp.where(jnp.isfinite(smallest), smallest, new.threshold)
        first = step == 0 if not config.pretrained else False  # a trained threshold goes on
        rate = jnp.where(first, 1.0, config.threshold_rate)
        new = eqx.tree_at(lambda s: s.threshold, new, (1 - rate) * new.threshold + rate * smallest)
    if isinstance(f, tuple):  # TopK: (values, index)
        values, index = f
        fired = jnp.zeros(new.d_sae, bool).at[index.reshape(-1)].max(values.reshape(-1) > 0)
        active = jnp.mean(jnp.sum(values > 0, axis=-1))
    else:
        fired = jnp.any(f > 0, axis=0)
        active = jnp.mean(jnp.sum(f > 0, axis=-1))
    since = jnp.where(fired, 0, jnp.minimum(member.since_fired + batch, 2**30)).astype(jnp.int32)
    centred = x - jnp.mean(x, axis=0)
    stats = dict(
        loss=loss,
        mse=mse,
        fvu=jnp.sum(err**2) / jnp.maximum(jnp.sum(centred**2), 1e-30),
        l0=active,
        aux=auxk,
        dead_fraction=jnp.mean(since >= config.dead_tokens),
    )
    return _Member(new, opt_state, since, member.scale), stats


# TopK's sparse products (Gao et al. 2024, §5: the k active latents only, here in XLA). Unbatched
# (`scatter`), they run one slot `j` of the k at a time: a gather (or scatter-add) of `batch` rows
# each, which XLA:CPU runs over 10× faster than one gather of all `batch·k` rows (the
# `[batch, k, d]` intermediate) and 4× faster than one scatter of the outer products (SmolLM2
# width: decode 1.2 ms vs 25, a weight gradient 5.6 ms vs 22; the whole step 85-100 ms vs
# 117-135, and 170-195 with autodiff's gather-transpose). Vmapped (accelerators), the encoder's
# gradient is one dense product with the scattered `[batch, d_sae]` gradient; the decoder's is
# autodiff's.


def _active_rows_grad(rows, g, index, d_sae):
    """`Σ_b Σ_j g[b, j] rows[b]` added into row `index[b, j]` of a `[d_sae, d]` matrix."""

    def slot(j, acc):
        return acc.at[index[:, j]].add(g[:, j, None] * rows)

    zeros = jnp.zeros((d_sae, rows.shape[1]), jnp.result_type(rows, g))
    return jax.lax.fori_loop(0, index.shape[1], slot, zeros)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _topk_pre(x, b_dec, W_enc, b_enc, k, center, scatter):
    """The `k` largest pre-activations of each row of the data `x`, and their indices. `b_dec`'s
    gradient (through the centring) is `−W_enc` times `b_enc`'s, so no per-row input gradient
    is formed: `x` is data, its cotangent is zeros (callers pass it through `stop_gradient`).
    `scatter` picks the form of `W_enc`'s gradient (above)."""
    xc = x - b_dec if center else x
    return jax.lax.top_k(xc @ W_enc + b_enc, k)


def _topk_pre_fwd(x, b_dec, W_enc, b_enc, k, center, scatter):
    values, index = _topk_pre(x, b_dec, W_enc, b_enc, k, center, scatter)
    return (values, index), (x, b_dec, W_enc, index)


def _topk_pre_bwd(k, center, scatter, residuals, grads):
    x, b_dec, W_enc, index = residuals
    g = grads[0]  # [batch, k]; the indices carry no gradient
    d_sae = W_enc.shape[1]
    db = jnp.zeros(d_sae, g.dtype).at[index.reshape(-1)].add(g.reshape(-1))
    d_b_dec = -(W_enc @ db) if center else jnp.zeros_like(b_dec)
    xc = x - b_dec if center else x
    if scatter:
        dW = _active_rows_grad(xc, g, index, d_sae).T
    else:
        rows = jnp.arange(x.shape[0])[:, None]
        dW = xc.T @ jnp.zeros((x.shape[0], d_sae), g.dtype).at[rows, index].add(g)
    return jnp.zeros_like(x), d_b_dec, dW, db


_topk_pre.defvjp(_topk_pre_fwd, _topk_pre_bwd)


@jax.custom_vjp
def _topk_decode(values, index, W_dec):
    """`Σ_j values[b, j] W_dec[index[b, j]]`: the reconstruction from the `k` active rows."""

    def slot(j, acc):
        return acc + values[:, j, None] * W_dec[index[:, j]]

    zeros = jnp.zeros((values.shape[0], W_dec.shape[1]), jnp.result_type(values, W_dec))
    return jax.lax.fori_loop(0, index.shape[1], slot, zeros)


def _topk_decode_fwd(values, index, W_dec):
    return _topk_decode(values, index, W_dec), (values, index, W_dec)


def _topk_decode_bwd(residuals, g):
    values, index, W_dec = residuals

    def slot(j, d_values):
        return d_values.at[:, j].set(jnp.sum(g * W_dec[index[:, j]], axis=-1))

    d_values = jax.lax.fori_loop(0, index.shape[1], slot, jnp.zeros_like(values))
    d_index = np.zeros(index.shape, jax.dtypes.float0)
    return d_values, d_index, _active_rows_grad(g, values, index, W_dec.shape[0])


_topk_decode.defvjp(_topk_decode_fwd, _topk_decode_bwd)


def _vmap_stacks() -> bool:
    """Whether SAEs of one shape are stacked and vmapped: on accelerators. On CPU one SAE's
    products already use every core, and stacking costs copies of the state and batched
    gathers and scatters that XLA:CPU runs slower than unbatched ones (four SmolLM2-width TopK
    steps: 430-450 ms stacked, 340 ms one after another in the same program)."""
    return jax.default_backend() != "cpu"


def _group_step(members, xs, coefs, step, *, opt, config, k_aux, shared_input):
    """One step of a stack of SAEs (vmapped; a stack of one is a single SAE's unbatched step).
    AuxK runs only when a latent is dead."""
    single = members.scale.shape[0] == 1

    def vmapped(aux, members):
        def one(m, x, c):
            return _member_step(
                m, x, c, step, opt=opt, config=config, k_aux=k_aux, aux=aux, scatter=single
            )

        in_axes = (0, None if shared_input else 0, 0)
        return eqx.filter_vmap(one, in_axes=in_axes)(members, xs, coefs)

    if not isinstance(members.sae, (TopKSAE, BatchTopKSAE)) or config.aux_coefficient == 0:
        return vmapped(False, members)
    # outside the vmap, so only the branch taken runs
    dyn, static = eqx.partition(members, eqx.is_array)

    def branch(aux):
        def go(dyn):
            out, stats = vmapped(aux, eqx.combine(dyn, static))
            return eqx.filter(out, eqx.is_array), stats

        return go

    any_dead = jnp.any(members.since_fired >= config.dead_tokens)
    new_dyn, stats = jax.lax.cond(any_dead, branch(True), branch(False), dyn)
    return eqx.combine(new_dyn, static), stats


# ------------------------------------------------------------------------- the loop


def _as_tuple(saes) -> tuple[SAE, ...]:
    if isinstance(saes, SAE):
        return (saes,)
    saes = tuple(saes)
    if not saes:
        raise ValueError("train needs at least one SAE")
    for i, sae in enumerate(saes):
        if not isinstance(sae, SAE):
            raise TypeError(f"saes[{i}] is a {type(sae).__name__}, not a jaxcirc.sae.SAE")
    return saes


def _coefficients(saes, sparsity) -> np.ndarray:
    if sparsity is None:
        return np.asarray([DEFAULT_SPARSITY[s.architecture] for s in saes], np.float32)
    values = (
        np.broadcast_to(np.asarray(sparsity, np.float32), (len(saes),))
        if np.ndim(sparsity) == 0
        else np.asarray(sparsity, np.float32)
    )
    if values.shape != (len(saes),):
        raise ValueError(
            f"sparsity has {values.shape[0]} coefficients for {len(saes)} SAEs; give one "
            "number, or one per SAE"
        )
    for i, (sae, c) in enumerate(zip(saes, values)):
        if not np.isfinite(c) or c < 0:
            raise ValueError(f"sparsity[{i}] = {c}: a sparsity coefficient must be >= 0")
        if sae.architecture in ("topk", "batchtopk") and c != 0:
            raise ValueError(
                f"sparsity[{i}] = {c} for a {sae.architecture!r} SAE: its sparsity is k; give "
                "0 (or None) for it"
            )
    return values


def _batch_arrays(batch, saes, step: int) -> dict[str, np.ndarray]:
    """The batch as `{site: [batch, d_in] float32}`, checked for width and finiteness."""
    sites = sorted({s.site for s in saes})
    if isinstance(batch, Mapping):
        arrays = {}
        for site in sites:
            if site not in batch:
                from .._checks import nearest_word

                raise KeyError(
                    f"the activation batch at step {step} has no site {site!r}"
                    f"{nearest_word(site, batch)}; it holds {sorted(batch)}"
                )
            arrays[site] = batch[site]
    else:
        if len(sites) > 1:
            raise ValueError(
                f"the SAEs read {len(sites)} sites {sites}; feed batches as a dict "
                "{site: activations}"
            )
        arrays = {sites[0]: batch}
    out = {}
    for site, x in arrays.items():
        x = np.asarray(x, np.float32)
        if x.ndim != 2:
            raise ValueError(
                f"activations for site {site or '(none)'} must be [batch, d_in]; got shape "
                f"{x.shape} at step {step}"
            )
        for sae in saes:
            if sae.site == site:
                sae.check_width(x)
        if not np.isfinite(x).all():
            index = first_nonfinite(x)
            raise NonFiniteError(
                f"non-finite activation at site {site or '(none)'}: row {index[0]} of the "
                f"batch at step {step}, unit {index[1]} is {x[index]}"
            )
        out[site] = x
    return out


def _init_member(sae, x, opt, config):
    scale = 1.0
    if config.normalize:
        scale = math.sqrt(sae.d_in) / max(float(np.mean(np.linalg.norm(x, axis=-1))), 1e-30)
    if config.pretrained:  # a trained SAE of raw activations, into the scaled space
        sae = fold_scale(sae, 1.0 / scale)
    elif config.init_b_dec:
        sae = eqx.tree_at(lambda s: s.b_dec, sae, (np.mean(x, 0) * scale).astype(x.dtype))
    sae = with_site(sae, "")
    params = eqx.filter(sae, _params(sae))
    since = np.zeros(sae.d_sae, np.int32)
    return _Member(sae, _opt_init(opt, params), since, np.asarray(scale, np.float32))


def fold_scale(sae: SAE, scale) -> SAE:
    """The SAE of the scaled inputs `scale · x` as an SAE of `x` (decoder rows unchanged)."""
    sae = jax.tree.map(np.asarray, sae)
    scale = np.asarray(scale, sae.b_enc.dtype)
    sae = eqx.tree_at(lambda s: (s.b_enc, s.b_dec), sae, (sae.b_enc / scale, sae.b_dec / scale))
    if isinstance(sae, BatchTopKSAE):
        sae = eqx.tree_at(lambda s: s.threshold, sae, sae.threshold / scale)
    if isinstance(sae, JumpReLUSAE):
        sae = eqx.tree_at(lambda s: s.log_threshold, sae, sae.log_threshold - np.log(scale))
    return jax.tree.map(jnp.asarray, sae)


class Trainer:
    """The state of a training run: use `train`, which drives it; exposed for checkpoints."""

    def __init__(self, saes, *, steps: int, sparsity=None, config: TrainConfig | None = None,
                 mesh=None, batch_axis=None):  # fmt: skip
        self.saes = _as_tuple(saes)
        self.mesh = mesh
        self.axes = None if mesh is None else check_mesh(mesh, batch_axis)
        self.config = config or TrainConfig()
        self.steps = check_int(steps, "steps", 1)
        self.coefs = _coefficients(self.saes, sparsity)
        self.groups = _groups(self.saes, stack=_vmap_stacks())
        self.opt = _optimizer(self.config, self.steps)
        self.members: list | None = None  # stacked _Member per group, after the first batch
        self.step = 0
        self.tokens = 0
        self.history: list[dict] = []
        self._step_fn = None

    # the compiled step: all groups in one program, traced once per run
    def _build(self):
        plans = []
        for idx in self.groups:
            first = self.saes[idx[0]]
            shared = len({self.saes[i].site for i in idx}) == 1
            k_aux = min(self.config.k_aux or max(first.d_in // 2, 1), first.d_sae)
            plans.append((shared, k_aux))
        # the SAEs' structure is part of the key: another structure is another program
        shapes = tuple((_group_key(self.saes[idx[0]]), len(idx)) for idx in self.groups)
        self._step_fn = _compiled_step(tuple(plans), shapes, self.config, self.steps, self.mesh)

    def start(self, batch) -> None:
        arrays = _batch_arrays(batch, self.saes, 0)
        members = [_init_member(s, arrays[s.site], self.opt, self.config) for s in self.saes]
        self.members = self._place([_stack([members[i] for i in idx]) for idx in self.groups])

    def _place(self, members):
        """The state replicated on every device of the mesh (unchanged without one)."""
        return members if self.mesh is None else replicate(self.mesh, members)

    def update(self, batch) -> list[dict]:
        arrays = _batch_arrays(batch, self.saes, self.step)
        if self.members is None:
            self.start(batch)
        if self._step_fn is None:
            self._build()
        xs = []
        for idx in self.groups:
            sites = [self.saes[i].site for i in idx]
            shared = len(set(sites)) == 1
            x = arrays[sites[0]] if shared else np.stack([arrays[s] for s in sites])
            if self.mesh is not None:  # the batch split over the mesh: data parallel
                x = split_along(self.mesh, self.axes, x, 0 if shared else 1, what="batch")
            xs.append(x)
        coefs = [self.coefs[idx] for idx in self.groups]
        step = np.asarray(self.step, np.int32)
        self.members, stats = self._step_fn(self.members, xs, coefs, step)
        self.step += 1
        self.tokens += next(iter(arrays.values())).shape[0]
        return stats

    def record(self, stats) -> dict:
        per = [None] * len(self.saes)
        for idx, st in zip(self.groups, stats):
            st = {k: np.asarray(v) for k, v in st.items()}
            for j, i in enumerate(idx):
                per[i] = {k: float(v[j]) for k, v in st.items()}
        entry = {"step": self.step, "tokens": self.tokens, "saes": per}
        self.history.append(entry)
        return entry

    def result_saes(self) -> tuple[SAE, ...]:
        out: list = [None] * len(self.saes)
        for idx, stacked in zip(self.groups, self.members):
            for j, member in enumerate(_unstack(stacked, len(idx))):
                sae = fold_scale(member.sae, member.scale)
                out[idx[j]] = with_site(sae, self.saes[idx[j]].site)
        return tuple(out)

    def dead_fraction(self) -> tuple[float, ...]:
        out = [0.0] * len(self.saes)
        for idx, stacked in zip(self.groups, self.members):
            dead = np.asarray(stacked.since_fired >= self.config.dead_tokens).mean(-1)
            for j, i in enumerate(idx):
                out[i] = float(dead[j])
        return tuple(out)

    # checkpoint plumbing: the arrays (SAE by SAE, however they are stacked) and the JSON-able rest
    def state_arrays(self) -> list:
        per_sae: list = [None] * len(self.saes)
        for idx, stacked in zip(self.groups, self.members):
            for i, member in zip(idx, _unstack(stacked, len(idx))):
                per_sae[i] = member
        return jax.tree_util.tree_leaves(eqx.filter(per_sae, eqx.is_array))

    def describe(self) -> list[dict]:
        return [
            {"architecture": s.architecture, "d_in": s.d_in, "d_sae": s.d_sae, "site": s.site,
             "k": getattr(s, "k", None)}
            for s in self.saes
        ]  # fmt: skip

    def restore_arrays(self, leaves: list) -> None:
        """Put checkpointed arrays (SAE by SAE) into the state; shapes are checked here."""
        template = []
        for sae in self.saes:
            sae = with_site(sae, "")
            params = eqx.filter(sae, _params(sae))
            opt_state = _opt_init(self.opt, params)
            template.append(_Member(sae, opt_state, np.zeros(sae.d_sae, np.int32), np.ones(())))
        dyn, static = eqx.partition(template, eqx.is_array)
        mine = [tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(dyn)]
        if mine != [tuple(np.shape(x)) for x in leaves]:
            raise ValueError(
                f"the checkpoint's state has {len(leaves)} arrays of other shapes than this "
                f"run's {len(mine)}; it was written for other SAEs"
            )
        treedef = jax.tree_util.tree_structure(dyn)
        per_sae = eqx.combine(jax.tree_util.tree_unflatten(treedef, list(leaves)), static)
        self.members = self._place([_stack([per_sae[i] for i in idx]) for idx in self.groups])


@functools.lru_cache(maxsize=8)
def _compiled_step(plans, shapes, config: TrainConfig, steps: int, mesh=None):
    """The step of every group, one program (runs with the same SAE shapes, configuration,
    length and mesh share it; each traces once). On a mesh the new state stays replicated."""
    opt = _optimizer(config, steps)

    @eqx.debug.assert_max_traces(max_traces=1)
    def step_all(members, xs, coefs, step):
        out, stats = [], []
        for m, x, c, (shared, k_aux) in zip(members, xs, coefs, plans):
            new, st = _group_step(m, x, c, step, opt=opt, config=config, k_aux=k_aux,
                                  shared_input=shared)  # fmt: skip
            out.append(new)
            stats.append(st)
        if mesh is not None:
            where = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            pin = lambda a: jax.lax.with_sharding_constraint(a, where) if eqx.is_array(a) else a
            out = jax.tree_util.tree_map(pin, out)
        return out, stats

    return eqx.filter_jit(step_all)


def _stream_position(batches):
    return batches.position() if hasattr(batches, "position") and hasattr(batches, "seek") else None


def train(
    saes: SAE | Sequence[SAE],
    batches: Iterable,
    *,
    steps: int | None = None,
    sparsity=None,
    config: TrainConfig | None = None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    progress: bool = False,
    callback=None,
    retarget: bool = False,
    mesh=None,
    batch_axis=None,
) -> TrainResult:
    """Train `saes` together on one stream of activation batches; returns a `TrainResult`.

    `batches` yields `[batch, d_in]` arrays (all SAEs reading one site) or `{site: [batch,
    d_in]}` dicts (an `ActivationBuffer` does). `steps` defaults to `len(batches)`.
    `sparsity`: the coefficient of the sparsity penalty, one number or one per SAE (ReLU: L1,
    default 5; JumpReLU: L0, default 1; TopK/BatchTopK: 0). With `checkpoint` (a folder), the
    run saves its state every `checkpoint_every` steps and at the end, and a run started on a
    folder that holds a checkpoint resumes from it (optimizer, step, stream position) and
    ends where the uninterrupted run would. `retarget=True` resumes a checkpoint written for
    another number of steps (the learning-rate schedule follows the new length from there).
    `callback(entry)` sees each logged history entry.

    `mesh` (a `jax.sharding.Mesh`): data parallelism. Each batch is split over the mesh axis
    `batch_axis` (default: its first; a tuple of names splits over their product; the batch
    must divide evenly), the SAEs and optimizer state are replicated, and the one compiled
    step runs as an SPMD program whose gradients are all-reduced (GSPMD). Same results as
    without a mesh, to float32 round-off.
    """
    from ._checkpoint import load_training, save_training

    saes = _as_tuple(saes)
    if steps is None:
        if not hasattr(batches, "__len__"):
            raise ValueError("give steps= (the stream has no length)")
        steps = len(batches)
    trainer = Trainer(saes, steps=steps, sparsity=sparsity, config=config, mesh=mesh,
                      batch_axis=batch_axis)  # fmt: skip
    if checkpoint_every is not None:
        check_int(checkpoint_every, "checkpoint_every", 1)
    resumed = None
    if checkpoint is not None:
        resumed = load_training(checkpoint, trainer, retarget=retarget)
    iterator: Iterator
    if resumed is not None and resumed.get("stream") is not None and hasattr(batches, "seek"):
        batches.seek(resumed["stream"])
        iterator = iter(batches)
    else:
        iterator = iter(batches)
        for _ in range(trainer.step):  # a plain iterable: skip what was consumed
            next(iterator)
    t0 = time.perf_counter()
    from .._progress import progress_bar, tick

    with progress_bar(progress, total=steps, initial=trainer.step, desc="train SAE", unit="step"):
        while trainer.step < steps:
            try:
                batch = next(iterator)
            except StopIteration:
                raise ValueError(
                    f"the activation stream ended after {trainer.step} of {steps} steps; give "
                    "more tokens or fewer steps"
                ) from None
            stats = trainer.update(batch)
            if trainer.step % trainer.config.log_every == 0 or trainer.step == steps:
                entry = trainer.record(stats)
                if callback is not None:
                    callback(entry)
            tick()
            if checkpoint is not None and (
                trainer.step == steps
                or (checkpoint_every is not None and trainer.step % checkpoint_every == 0)
            ):
                save_training(checkpoint, trainer, stream=_stream_position(batches))
    seconds = time.perf_counter() - t0
    out = trainer.result_saes()
    for i, sae in enumerate(out):
        where = f" at {sae.site}" if sae.site else ""
        for name, value in vars(sae).items():
            if isinstance(value, jax.Array) and not np.isfinite(np.asarray(value)).all():
                index = first_nonfinite(np.asarray(value))
                raise NonFiniteError(
                    f"trained SAE {i} ({sae.architecture}{where}) has a non-finite {name} at "
                    f"{list(index)}: lower the learning rate, or check the activations"
                )
    return TrainResult(out, trainer.history, trainer.dead_fraction(), trainer.step,
                       trainer.tokens, seconds)  # fmt: skip
