"""Causal tracing: corrupt the subject's embeddings with noise, restore one clean state.

Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (ROME), section 2.1.
The corrupted run adds Gaussian noise to the subject tokens' embeddings (`hook_embed`); each
restoration puts back the clean value of one site kind (`resid_post`, `mlp_out` or
`attn_out`) at one position, on a window of consecutive layers, and reads the probability of
the answer at the last position. One compiled program per kind: the window is a layer mask,
the noise samples and prompts are vmapped, and (layer, position) run under `lax.map`, the
position in chunks. The corrupted residual stream is cached, so a restoration starting at
layer `l` skips the `l` blocks before it (a restored `resid_post` of layer `l` starts at layer
`l + 1`). In a causal model nothing before the first subject position differs between the
clean and the corrupted run, so those cells are the corrupted probability and are not run.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._progress import progress_bar, tick
from ..interventions import Noise, Patch, intervene
from ..models._site import SiteRef, nearest
from ..models._transformer import Transformer

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


def _check(model, tokens, subject_mask, answer, kinds, window, n_samples):
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"tokens must be a non-empty [batch, seq] array; got shape {tokens.shape}")
    for row in tokens:
        model.check_tokens(row)
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
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}{nearest(kind, KINDS)}; choices: {list(KINDS)}")
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


def causal_trace(
    model: Transformer,
    tokens: Int[Array, "batch seq"],
    subject_mask: Bool[Array, "batch seq"],
    answer: Int[Array, " batch"],
    *,
    noise_scale: float = 3.0,
    noise_std: float | None = None,
    n_samples: int = 10,
    key: PRNGKeyArray,
    kinds: tuple[str, ...] = ("resid", "mlp", "attn"),
    window: int = 10,
    chunk_size: int | None = None,
    progress: bool = False,
    token_labels=None,
) -> TraceResult:
    """Causal tracing (Meng et al. 2022): restored answer probability per layer and position.

    **Arguments:**

    - `tokens`: `[batch, seq]` (or `[seq]`) prompts; the answer is read at the last position.
    - `subject_mask`: `[batch, seq]` bool, the subject tokens to noise.
    - `answer`: `[batch]` answer token ids.
    - `noise_scale`: noise std as a multiple of the empirical std of `W_E` (ROME: 3);
      `noise_std` overrides it with an absolute std.
    - `n_samples`: noise draws per prompt (`noise_keys(key, batch, n_samples)`), averaged.
    - `kinds`: of `"resid"` (`resid_post`, window 1), `"mlp"` (`mlp_out`), `"attn"`
      (`attn_out`); `window`: consecutive layers restored for mlp and attn (ROME: 10).
    - `chunk_size`: positions evaluated at once; `progress`: a progress bar over layers.
    """
    tokens, mask, answer = _check(model, tokens, subject_mask, answer, kinds, window, n_samples)
    std = noise_std if noise_std is not None else noise_scale * jnp.std(model.embed.W_E)
    keys = noise_keys(key, tokens.shape[0], n_samples)
    n_layers = model.cfg.n_layers
    # positions before the first subject token are identical in the clean and corrupted runs
    start = int(np.asarray(mask).any(0).argmax()) if model.cfg.causal else 0
    with progress_bar(progress, total=n_layers * len(kinds), desc="causal tracing", unit="layer"):
        clean, corrupt, grids = _trace(
            model, tokens, mask, answer, jnp.asarray(std, jnp.float32), keys,
            tuple(kinds), int(window), chunk_size, bool(progress), start,
        )  # fmt: skip
        grids = jax.block_until_ready(grids)
    windows = {k: 1 if k == "resid" else int(window) for k in kinds}
    labels = tuple(str(t) for t in token_labels) if token_labels is not None else None
    return TraceResult(clean, corrupt, grids, mask.any(0), windows, labels)


def _prob(model, x, answer):
    logits = model.readout(x[-1:])[0][0]
    return jax.nn.softmax(logits.astype(jnp.float32))[answer]


def _default_chunk(model, n_examples: int, seq: int) -> int:
    cfg = model.cfg
    live = n_examples * (seq * (8 * cfg.d_model + 2 * cfg.d_mlp + 2 * cfg.n_heads * seq))
    return max(1, min(seq, (1 << 30) // (4 * live + 4 * n_examples * cfg.d_vocab)))


@eqx.filter_jit
def _trace(model, tokens, mask, answer, std, keys, kinds, window, chunk_size, progress, start=0):
    n_layers, seq = model.cfg.n_layers, tokens.shape[1]

    def corrupted(t, subject, key):
        noisy = intervene(model, {SiteRef("embed"): Noise(std, key, mask=subject[:, None])})
        _, acts = noisy.run(t)
        return acts.stack("resid_pre"), acts.stack("resid_post")

    def clean_run(t, a):
        logits, acts = model.run(t)
        sites = {k: acts.stack(KINDS[k]) for k in kinds}
        return jax.nn.softmax(logits[-1].astype(jnp.float32))[a], sites

    clean_prob, clean_sites = jax.vmap(clean_run)(tokens, answer)
    cache, post = jax.vmap(jax.vmap(corrupted, (None, None, 0)), (0, 0, 0))(tokens, mask, keys)
    corrupt_prob = jax.vmap(jax.vmap(lambda x, a: _prob(model, x, a), (0, None)))(
        post[:, :, -1], answer
    )
    n_examples = keys.shape[0] * keys.shape[1]
    chunk = chunk_size or _default_chunk(model, n_examples, seq)
    positions = jnp.arange(start, seq)

    def restored_resid(layer, position, clean_site, resid_post, a):
        # the clean resid_post of `layer` at `position` in the corrupted stream; layers after it
        x = jnp.where((jnp.arange(seq) == position)[:, None], clean_site[layer], resid_post[layer])
        for i, block in enumerate(model.blocks):
            x = jax.lax.cond(i > layer, lambda x, b=block: b(x)[0], lambda x: x, x)
        return _prob(model, x, a)

    grids = {}
    for kind in kinds:
        site, w = KINDS[kind], 1 if kind == "resid" else window

        def one(layer, position, clean_site, resid, a, site=site, w=w):
            lo, hi = window_bounds(layer, w, n_layers)
            onehot = (jnp.arange(seq) == position)[:, None]
            patches = {
                SiteRef(site, i): Patch(clean_site[i], mask=onehot & (lo <= i) & (i < hi))
                for i in range(n_layers)
            }
            patched = intervene(model, patches)
            x = resid[lo]
            for i, block in enumerate(patched.blocks):
                x = jax.lax.cond(i >= lo, lambda x, b=block: b(x)[0], lambda x: x, x)
            return _prob(patched, x, a)

        def one_cell(layer, position, clean_site=clean_sites[kind], one=one, kind=kind):
            fn, states = (restored_resid, post) if kind == "resid" else (one, cache)
            per_sample = jax.vmap(fn, (None, None, None, 0, None))
            per_prompt = jax.vmap(per_sample, (None, None, 0, 0, 0))
            return per_prompt(layer, position, clean_site, states, answer).mean()

        def one_layer(layer, one_cell=one_cell):
            row = jax.lax.map(lambda p: one_cell(layer, p), positions, batch_size=chunk)
            row = jnp.concatenate([jnp.full(start, corrupt_prob.mean(), row.dtype), row])
            if progress:
                jax.debug.callback(tick, layer)
            return row

        grids[kind] = jax.lax.map(one_layer, jnp.arange(n_layers))
    return clean_prob.mean(), corrupt_prob.mean(), grids
