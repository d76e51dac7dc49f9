"""Causal tracing: corrupt the subject's embeddings with noise, restore one clean state.

Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (ROME), section 2.1.
The corrupted run adds Gaussian noise to the subject tokens' embeddings (`hook_embed`); each
restoration puts back the clean value of one site kind (`resid_post`, `mlp_out` or
`attn_out`) at one position, on a window of consecutive layers, and reads the probability of
the answer at the prompt's last token. Prompts of different lengths are right-padded and given
`lengths`: in a causal model the padding cannot change the answer, and a cell at or beyond a
prompt's length counts its corrupted probability, so each prompt's part of the mean is its
trace alone. One compiled program per kind: the window is a layer mask,
the noise samples and prompts are vmapped, and (layer, position) run under `lax.map`, the
position in chunks. The corrupted residual stream is cached, so a restoration starting at
layer `l` skips the `l` blocks before it (a restored `resid_post` of layer `l` starts at layer
`l + 1`). In a causal model nothing before the first subject position differs between the
clean and the corrupted run, so those cells are the corrupted probability and are not run.
Every value is a mean over prompts, so prompts that do not fit `memory_budget` together run in
chunks of one compiled program (`jaxcirc.patching._budget`), their sums averaged; given
`mesh=`, the prompts are split over a mesh axis the same way, each device tracing its own
(`jaxcirc._mesh`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .. import _mesh
from .._checks import check_choices, check_int
from .._finite import finite_result
from .._progress import progress_bar, tick
from ..interventions import Noise, Patch, intervene
from ..models._site import SiteRef
from ..models._transformer import Transformer
from ..patching import _budget

# kind -> the site restored (ROME: the hidden state output of a layer, the MLP, the attention)
KINDS = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


class TraceResult(eqx.Module):
    """What `causal_trace` returns; probabilities are means over noise samples and prompts.

    - `clean_prob`, `corrupt_prob`: probability of the answer without / with the noise.
    - `indirect`: `{kind: [n_layers, seq]}` probability of the answer with the clean state of
      that kind restored at (layer, position).
    - `windows`: `{kind: window}` the number of consecutive layers restored per cell.
    - `subject_mask`: `[seq]` positions noised in any prompt; `token_labels`: optional.
    """

    clean_prob: Float[Array, ""]
    corrupt_prob: Float[Array, ""]
    indirect: dict[str, Float[Array, "n_layers seq"]]
    subject_mask: Bool[Array, " seq"]
    windows: dict[str, int] = eqx.field(static=True)
    token_labels: tuple[str, ...] | None = eqx.field(static=True, default=None)

    @property
    def total_effect(self) -> Float[Array, ""]:
        """`clean_prob - corrupt_prob`."""
        return self.clean_prob - self.corrupt_prob

    @property
    def indirect_effect(self) -> dict[str, Float[Array, "n_layers seq"]]:
        """`{kind: restored - corrupt_prob}`: the indirect effect of each state."""
        return {k: v - self.corrupt_prob for k, v in self.indirect.items()}


def window_bounds(layer, window: int, n_layers: int):
    """ROME's window: layers `[layer - window // 2, layer + ceil(window / 2))`, clipped."""
    return jnp.maximum(layer - window // 2, 0), jnp.minimum(layer - (-window // 2), n_layers)


def noise_keys(key: PRNGKeyArray, batch: int, n_samples: int) -> PRNGKeyArray:
    """The key of each (prompt, sample) noise draw: `split(key, batch * n_samples)`."""
    return jax.random.split(key, batch * n_samples).reshape(batch, n_samples)


def _keys(key, batch: int, n_samples: int) -> PRNGKeyArray:
    """`noise_keys` of one key, or the `[batch, n_samples]` keys as given."""
    key = jnp.asarray(key)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key
    if key.ndim == 0:
        return noise_keys(key, batch, n_samples)
    if key.shape != (batch, n_samples):
        raise ValueError(
            f"key must be one jax.random key or the keys of every draw, [batch, n_samples] = "
            f"[{batch}, {n_samples}] (see noise_keys); got keys of shape {list(key.shape)}"
        )
    return key


def _check_lengths(lengths, mask: np.ndarray):
    """Each prompt's token count, `[batch]` in `1..seq`, its subject inside it."""
    batch, seq = mask.shape
    if lengths is None:
        return np.full(batch, seq, np.int32)
    lengths = np.atleast_1d(np.asarray(lengths))
    if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(
            f"lengths must be one int token count per prompt, [batch] = [{batch}]; got shape "
            f"{list(lengths.shape)} and dtype {lengths.dtype}"
        )
    bad = np.flatnonzero((lengths < 1) | (lengths > seq))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"lengths[{i}] = {int(lengths[i])} is outside 1..seq = 1..{seq} (nearest valid: "
            f"{int(np.clip(lengths[i], 1, seq))})"
        )
    beyond = mask & (np.arange(seq)[None] >= lengths[:, None])
    if beyond.any():
        i, p = (int(v) for v in np.argwhere(beyond)[0])
        raise ValueError(
            f"subject_mask of prompt {i} marks position {p}, at or beyond its length "
            f"{int(lengths[i])} (padding is never noised; positions 0..{int(lengths[i]) - 1})"
        )
    return lengths.astype(np.int32)


def _check(model, tokens, subject_mask, answer, kinds, window, n_samples):
    tokens = model.check_tokens(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"tokens must be a non-empty [batch, seq] array; got shape {tokens.shape}")
    mask = np.asarray(subject_mask)
    if mask.ndim == 1 and tokens.shape[0] == 1:
        mask = mask[None]
    if mask.dtype != bool:
        raise ValueError(
            f"subject_mask must be a boolean [batch, seq] = {list(tokens.shape)} array; got "
            f"dtype {mask.dtype} (positions? use jaxcirc.methods.subject_mask(seq, positions))"
        )
    if mask.shape != tokens.shape:
        raise ValueError(
            f"subject_mask has shape {list(mask.shape)}; expected the tokens' shape "
            f"[batch, seq] = {list(tokens.shape)}"
        )
    empty = np.flatnonzero(~mask.any(-1))
    if empty.size:
        raise ValueError(
            f"subject_mask of prompt {int(empty[0])} is empty: mark at least one subject "
            f"position in 0..{tokens.shape[1] - 1}"
        )
    answer = jnp.atleast_1d(jnp.asarray(answer))
    if answer.shape != tokens.shape[:1]:
        raise ValueError(
            f"answer has shape {list(answer.shape)}; expected one token id per prompt, "
            f"[batch] = [{tokens.shape[0]}]"
        )
    bad = np.flatnonzero((np.asarray(answer) < 0) | (np.asarray(answer) >= model.cfg.d_vocab))
    if bad.size:
        raise ValueError(
            f"answer id {int(answer[bad[0]])} of prompt {int(bad[0])} is outside "
            f"[0, d_vocab={model.cfg.d_vocab})"
        )
    check_choices(kinds, KINDS, "kinds", one="kind")
    if int(window) < 1 or int(n_samples) < 1:
        raise ValueError(f"window and n_samples must be >= 1; got {window} and {n_samples}")
    return tokens, jnp.asarray(mask), answer


def subject_mask(seq: int, positions) -> Bool[Array, " seq"]:
    """A `[seq]` boolean mask from subject positions; raises if one lies outside the prompt."""
    positions = np.atleast_1d(np.asarray(positions))
    bad = positions[(positions >= seq) | (positions < -seq)]
    if bad.size:
        raise ValueError(
            f"subject position {int(bad[0])} is outside the prompt of {seq} tokens "
            f"(positions 0..{seq - 1}; nearest valid: {int(np.clip(bad[0], 0, seq - 1))})"
        )
    if positions.size == 0:
        raise ValueError(f"no subject positions given; need at least one in 0..{seq - 1}")
    return jnp.zeros(seq, bool).at[positions].set(True)


@finite_result("causal_trace", axes=("layer", "position"), tokens=("tokens",))
def causal_trace(
    model: Transformer,
    tokens: Int[Array, "batch seq"],
    subject_mask: Bool[Array, "batch seq"],
    answer: Int[Array, " batch"],
    *,
    lengths: Int[Array, " batch"] | None = None,
    noise_scale: float = 3.0,
    noise_std: float | None = None,
    n_samples: int = 10,
    key: PRNGKeyArray,
    kinds: tuple[str, ...] = ("resid", "mlp", "attn"),
    window: int = 10,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool = False,
    token_labels=None,
    mesh: jax.sharding.Mesh | None = None,
    batch_axis: str | tuple[str, ...] | None = None,
) -> TraceResult:
    """Causal tracing (Meng et al. 2022): restored answer probability per layer and position.

    **Arguments:**

    - `tokens`: `[batch, seq]` (or `[seq]`) prompts, right-padded if of different lengths.
    - `subject_mask`: `[batch, seq]` bool, the subject tokens to noise (`False` on padding,
      e.g. a `jaxcirc.tasks.factual` task's `positions["subject_mask"]`).
    - `answer`: `[batch]` answer token ids.
    - `lengths`: `[batch]` each prompt's token count (a `Task`'s `lengths`); the answer is read
      at `lengths - 1`, and a cell at a position `>= lengths[i]` counts prompt `i`'s corrupted
      probability. Default: every prompt is `seq` tokens.
    - `noise_scale`: noise std as a multiple of the empirical std of `W_E` (ROME: 3);
      `noise_std` overrides it with an absolute std.
    - `n_samples`: noise draws per prompt, averaged; `key`: one key, split by
      `noise_keys(key, batch, n_samples)`, or those `[batch, n_samples]` keys themselves.
      Position `p` of a draw uses `fold_in(draw key, p)` (see `Noise`), so padding does not
      change a prompt's noise.
    - `kinds`: of `"resid"` (`resid_post`, window 1), `"mlp"` (`mlp_out`), `"attn"`
      (`attn_out`); `window`: consecutive layers restored for mlp and attn (ROME: 10).
    - `chunk_size`: positions evaluated at once; `progress`: a progress bar over layers.
    - `memory_budget`: bytes of activations to keep live (default 1 GiB): positions are
      chunked, and prompts when their cached runs do not fit.
    - `mesh`, `batch_axis`: split the prompts over the devices of this `jax.sharding.Mesh`
      along `batch_axis` (default its first axis; a tuple of names splits over all of them);
      a batch that does not divide the axis size is padded and masked (see `jaxcirc._mesh`).
    """
    tokens, mask, answer = _check(model, tokens, subject_mask, answer, kinds, window, n_samples)
    check_int(chunk_size, "causal_trace chunk_size", 1, allow_none=True)
    limit = _budget.budget(memory_budget)
    lengths = _check_lengths(lengths, np.asarray(mask))
    if not model.cfg.causal and (lengths < tokens.shape[1]).any():
        raise ValueError(
            "lengths shorter than seq need a causal model (right padding is then never read); "
            "this model attends to later positions: trace prompts of different lengths apart"
        )
    std = noise_std if noise_std is not None else noise_scale * jnp.std(model.embed.W_E)
    keys = _keys(key, tokens.shape[0], int(n_samples))
    n_layers = model.cfg.n_layers
    # positions before the first subject token are identical in the clean and corrupted runs;
    # positions past every prompt's end are not read
    start = int(np.asarray(mask).any(0).argmax()) if model.cfg.causal else 0
    stop = int(lengths.max()) if model.cfg.causal else tokens.shape[1]
    batch, seq = tokens.shape
    axes = None if mesh is None else _mesh.check_mesh(mesh, batch_axis)
    per_device = batch if mesh is None else -(-batch // _mesh.axis_size(mesh, axes))
    per_prompt = _prompt_bytes(model, seq, int(n_samples), kinds)
    size = _budget.prompts_per_chunk(per_device, per_prompt, limit)
    rows = (tokens, mask, answer, jnp.asarray(lengths), keys)
    static = (tuple(kinds), jnp.int32(window), chunk_size, bool(progress), start, stop, limit)
    std = jnp.asarray(std, jnp.float32)
    total = n_layers * len(kinds) * -(-per_device // size) * (1 if mesh is None else mesh.size)
    with progress_bar(progress, total=total, desc="causal tracing", unit="layer"):
        if mesh is not None:
            args = (model, std, static)
            out = _mesh.mean_over_mesh(_trace_rows, args, rows, batch, size, mesh, axes)
            clean, corrupt, grids = out
        elif size == batch:
            clean, corrupt, grids = _trace(model, *rows, std, *static)
        else:  # chunks of prompts, each the sums over its prompts
            chunk = lambda r, valid: _trace(model, *_budget.take(rows, r), std, *static, valid)
            clean, corrupt, grids = _budget.mean_over_prompts(chunk, batch, size)
        grids = jax.block_until_ready(grids)
    windows = {k: 1 if k == "resid" else int(window) for k in kinds}
    labels = tuple(str(t) for t in token_labels) if token_labels is not None else None
    return TraceResult(clean, corrupt, grids, mask.any(0), windows, labels)


def _prob(model, x, answer, length):
    """The probability of `answer` read from the residual stream `x` at position `length - 1`."""
    logits = model.readout(jax.lax.dynamic_slice_in_dim(x, length - 1, 1))[0][0]
    return jax.nn.softmax(logits.astype(jnp.float32))[answer]


def _position_bytes(model, n_examples: int, seq: int) -> int:
    """Bytes `n_examples` restored runs at one position keep live."""
    cfg = model.cfg
    live = n_examples * (seq * (8 * cfg.d_model + 2 * cfg.d_mlp + 2 * cfg.n_heads * seq))
    return 4 * live + 4 * n_examples * cfg.d_vocab


def _default_chunk(model, n_examples: int, seq: int, budget: int) -> int:
    return max(1, min(seq, budget // _position_bytes(model, n_examples, seq)))


def _prompt_bytes(model, seq: int, n_samples: int, kinds) -> int:
    """Bytes one prompt keeps live: its cached corrupted and clean runs, and one position's
    restored runs of its noise samples."""
    cfg = model.cfg
    cached = 4 * cfg.n_layers * seq * cfg.d_model * (2 * n_samples + len(kinds))
    return cached + _position_bytes(model, n_samples, seq)


def _trace_rows(args, prompts, rows, valid):
    """`_trace`'s sums over the `valid` prompts of a device's chunk (`jaxcirc._mesh`)."""
    model, std, static = args
    return _trace(model, *prompts, std, *static, valid)


@eqx.filter_jit
def _trace(
    model, tokens, mask, answer, lengths, keys, std, kinds, window, chunk_size, progress, start,
    stop, budget, valid=None,
):  # fmt: skip
    """The means over prompts (and samples); given `valid` (which prompts count), the sums
    over the valid prompts of each prompt's mean over samples."""
    n_layers, seq = model.cfg.n_layers, tokens.shape[1]
    if valid is None:
        total = jnp.mean
    else:  # [prompt] or [prompt, sample] -> the sum over valid prompts of the sample means
        total = lambda x: jnp.where(valid.reshape(-1, *[1] * (x.ndim - 1)), x, 0).mean(
            axis=tuple(range(1, x.ndim))
        ).sum()  # fmt: skip

    def corrupted(t, subject, key):
        noisy = intervene(model, {SiteRef("embed"): Noise(std, key, mask=subject[:, None])})
        _, acts = noisy.run(t)
        return acts.stack("resid_pre"), acts.stack("resid_post")

    def clean_run(t, a, n):
        logits, acts = model.run(t)
        sites = {k: acts.stack(KINDS[k]) for k in kinds}
        return jax.nn.softmax(logits[n - 1].astype(jnp.float32))[a], sites

    clean_prob, clean_sites = jax.vmap(clean_run)(tokens, answer, lengths)
    cache, post = jax.vmap(jax.vmap(corrupted, (None, None, 0)), (0, 0, 0))(tokens, mask, keys)
    corrupt_prob = jax.vmap(jax.vmap(lambda x, a, n: _prob(model, x, a, n), (0, None, None)))(
        post[:, :, -1], answer, lengths
    )  # [batch, n_samples]
    n_examples = keys.shape[0] * keys.shape[1]
    chunk = chunk_size or _default_chunk(model, n_examples, seq, budget)
    positions = jnp.arange(start, stop)

    def restored_resid(layer, position, clean_site, resid_post, a, n):
        # the clean resid_post of `layer` at `position` in the corrupted stream; layers after it
        x = jnp.where((jnp.arange(seq) == position)[:, None], clean_site[layer], resid_post[layer])
        return _prob(model, model.resume(x, layer + 1), a, n)

    grids = {}
    for kind in kinds:
        site, w = KINDS[kind], 1 if kind == "resid" else window

        def one(layer, position, clean_site, resid, a, n, site=site, w=w):
            lo, hi = window_bounds(layer, w, n_layers)
            onehot = (jnp.arange(seq) == position)[:, None]
            patches = {
                SiteRef(site, i): Patch(clean_site[i], mask=onehot & (lo <= i) & (i < hi))
                for i in range(n_layers)
            }
            patched = intervene(model, patches)
            return _prob(patched, patched.resume(resid[lo], lo), a, n)

        def one_cell(layer, position, clean_site=clean_sites[kind], one=one, kind=kind):
            fn, states = (restored_resid, post) if kind == "resid" else (one, cache)
            per_sample = jax.vmap(fn, (None, None, None, 0, None, None))
            per_prompt = jax.vmap(per_sample, (None, None, 0, 0, 0, 0))
            probs = per_prompt(layer, position, clean_site, states, answer, lengths)
            # a position past a prompt's end is not part of it: its corrupted probability
            return total(jnp.where((position < lengths)[:, None], probs, corrupt_prob))

        def one_layer(layer, one_cell=one_cell):
            row = jax.lax.map(lambda p: one_cell(layer, p), positions, batch_size=chunk)
            fill = lambda size: jnp.full(size, total(corrupt_prob), row.dtype)
            row = jnp.concatenate([fill(start), row, fill(seq - stop)])
            if progress:
                jax.debug.callback(tick, layer)
            return row

        grids[kind] = jax.lax.map(one_layer, jnp.arange(n_layers))
    return total(clean_prob), total(corrupt_prob), grids
