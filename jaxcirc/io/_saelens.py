"""SAELens's on-disk format: a folder with `cfg.json` and `sae_weights.safetensors`.

SAELens (Bloom et al. 2024, github.com/decoderesearch/SAELens) writes an SAE as its config
(`SAEConfig.to_dict()`: `architecture`, `d_in`, `d_sae`, `dtype`, `apply_b_dec_to_input`,
`normalize_activations`, `reshape_activations`, `k` for TopK, and `metadata` with the
TransformerLens `hook_name`) and its tensors `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
`W_dec [d_sae, d_in]`, `b_dec [d_in]`, plus `threshold [d_sae]` for JumpReLU. The inference
forms match jaxcirc's: `standard` is `ReLUSAE`, `topk` is `TopKSAE`, `jumprelu` is
`JumpReLUSAE`; SAELens saves a trained BatchTopK SAE as a `jumprelu` one with one threshold for
every feature, which loads back as a `BatchTopKSAE` when its metadata says so. Configs written
before SAELens 6 (`hook_point`, `activation_fn_str`, `activation_fn: "topk"` with
`activation_fn_kwargs.k`, a boolean `normalize_activations`) are read too.

What jaxcirc cannot compute exactly is refused, naming the key: input normalisation other
than `"none"`, TopK's `rescale_acts_by_decoder_norm`, a `hook_head_index`, an unfolded
`scaling_factor`, and the architectures jaxcirc has no module for (gated, transcoders, ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._atomic import atomic_write
from .._checks import nearest_word
from .._finite import check_finite
from ..sae._sae import SAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

CONFIG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
EXTRA = "jaxcirc_extra.safetensors"
"""Beside a JumpReLU SAE: jaxcirc's own `log_threshold`, bit for bit (SAELens stores the
threshold, and `log(exp(l))` is not always `l` in float32); SAELens ignores the file."""
FORMAT_VERSION = "6.0.0"
"""The SAELens version whose format `save_saelens` writes (`metadata.sae_lens_version`):
SAELens reads a config without one as a pre-6 config."""

ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
"""SAELens architecture -> jaxcirc architecture (`batchtopk` arrives as `jumprelu`)."""

UNSUPPORTED = {
    "gated": "a separate gating path (Rajamanoharan et al. 2024a)",
    "abstopk": "TopK of absolute values (signed codes)",
    "matryoshka_batchtopk": "nested dictionaries (a training form)",
    "transcoder": "a transcoder (reads one site, writes another)",
    "skip_transcoder": "a transcoder (reads one site, writes another)",
    "jumprelu_transcoder": "a transcoder (reads one site, writes another)",
    "jumprelu_skip_transcoder": "a transcoder (reads one site, writes another)",
    "temporal": "a code that depends on earlier positions",
    "matching_pursuit": "an iterative (matching pursuit) encoder",
}

_DTYPES = {"float32", "float64", "float16", "bfloat16"}
_OLD_KEYS = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
             "activation_fn_str": "activation_fn"}  # fmt: skip


def _version(text) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def _normalise_config(cfg: dict, where: str) -> dict:
    """A SAELens config in the 6.x shape (`hook_name` etc. under `metadata`)."""
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: 'metadata' must be a JSON object; got {meta!r}")
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if version and _version(version) >= (6,):
        out = dict(cfg)
        out["metadata"] = dict(meta)
        for key in ("hook_name", "hook_head_index"):  # some 6.x writers kept them at top level
            if key in cfg and key not in meta:
                out["metadata"][key] = cfg[key]
        return out
    # before SAELens 6: flat keys, older spellings (SAELens's own `handle_pre_6_0_config`)
    out = {_OLD_KEYS.get(k, k): v for k, v in cfg.items()}
    out.setdefault("architecture", "standard")
    out.setdefault("apply_b_dec_to_input", True)
    activation = out.get("activation_fn", "relu")
    kwargs = out.get("activation_fn_kwargs") or {}
    if activation == "topk" and kwargs.get("k") is not None:
        out["architecture"] = "topk"
        out["k"] = kwargs["k"]
    elif activation not in ("relu", None):
        raise ValueError(
            f"{where}: activation_fn={activation!r} cannot be represented in jaxcirc (its SAEs "
            f"use ReLU, TopK or JumpReLU); this config predates SAELens 6"
        )
    norm = out.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        out["normalize_activations"] = "expected_average_only_in" if norm else "none"
    out["metadata"] = {**meta, **{k: out[k] for k in ("hook_name", "hook_head_index")
                                  if k in out}}  # fmt: skip
    return out


def _read_config(path: Path) -> dict:
    file = path / CONFIG
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is not a SAELens SAE folder: {CONFIG} is missing (it needs {CONFIG} and "
            f"{WEIGHTS})"
        ) from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} must hold a JSON object; got {type(cfg).__name__}")
    return _normalise_config(cfg, str(file))


def _int(cfg: dict, key: str, where: str, high: int | None = None) -> int:
    if key not in cfg:
        raise ValueError(f"{where}: the required key {key!r} is missing")
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {key} must be a positive integer; got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{where}: {key}={value} is larger than d_sae={high}")
    return value


def _dtype(name, where: str) -> str:
    name = str(name).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(
            f"{where}: dtype {name!r} is not one SAELens writes{nearest_word(name, _DTYPES)}; "
            f"choices: {sorted(_DTYPES)}"
        )
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{where}: dtype 'float64' needs jax_enable_x64 (jax.config.update("
            f"'jax_enable_x64', True)); or pass dtype='float32' to cast on load"
        )
    return name


def _check_representable(cfg: dict, where: str) -> str:
    arch = cfg.get("architecture")
    if arch in UNSUPPORTED:
        raise ValueError(
            f"{where}: architecture={arch!r} ({UNSUPPORTED[arch]}) has no jaxcirc module; "
            f"jaxcirc loads {sorted(ARCHITECTURES)} (and BatchTopK saved as 'jumprelu')"
        )
    if arch not in ARCHITECTURES:
        choices = [*ARCHITECTURES, *UNSUPPORTED]
        raise ValueError(
            f"{where}: unknown architecture {arch!r}{nearest_word(arch, choices)}; jaxcirc "
            f"loads {sorted(ARCHITECTURES)}"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm != "none":
        hint = (
            " (fold the scaling factor into the weights in SAELens first: "
            "sae.fold_activation_norm_scaling_factor(factor), then save_model)"
            if norm in ("expected_average_only_in", "covariance_whitening")
            else ""
        )
        raise ValueError(
            f"{where}: normalize_activations={norm!r} is not supported; jaxcirc encodes the "
            f"raw activation, as SAELens does with 'none'{hint}"
        )
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(
            f"{where}: rescale_acts_by_decoder_norm=True is not supported (TopK selection on "
            f"decoder-norm-scaled pre-activations); fold it in SAELens first: "
            f"sae.fold_W_dec_norm(), then save_model"
        )
    head = cfg["metadata"].get("hook_head_index")
    if head is not None:
        raise ValueError(
            f"{where}: hook_head_index={head!r} (an SAE on one head's slice) is not supported; "
            f"jaxcirc splices SAEs on a whole site"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", "hook_z"):
        raise ValueError(
            f"{where}: reshape_activations={reshape!r} is unknown; SAELens writes 'none' or "
            f"'hook_z'"
        )
    if not isinstance(cfg.get("apply_b_dec_to_input", True), bool):
        raise ValueError(
            f"{where}: apply_b_dec_to_input must be true or false; got "
            f"{cfg['apply_b_dec_to_input']!r}"
        )
    return ARCHITECTURES[arch]


def _read_weights(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict:
    from safetensors import SafetensorError, safe_open

    file = path / WEIGHTS
    if not file.exists():
        raise FileNotFoundError(
            f"{path} is not a complete SAELens SAE folder: {WEIGHTS} is missing"
        )
    try:
        handle = safe_open(str(file), framework="numpy")
        keys = set(handle.keys())
    except SafetensorError as e:
        raise ValueError(f"cannot read {file} (truncated or corrupt?): {e}") from None
    out = {}
    if "threshold" in shapes and "threshold" not in keys and "log_threshold" in keys:
        shapes = {("log_threshold" if k == "threshold" else k): v for k, v in shapes.items()}
    for name, shape in shapes.items():
        if name not in keys:
            raise ValueError(
                f"{file} has no tensor {name!r}{nearest_word(name, keys)}; it holds {sorted(keys)}"
            )
        value = handle.get_tensor(name)
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{file}: {name} has shape {list(value.shape)}; the config (d_in, d_sae) "
                f"implies {list(shape)}"
            )
        check_finite(np.asarray(value, np.float64), f"weight {name} in {file}")
        out[name] = value
    for extra in ("scaling_factor", "finetuning_scaling_factor"):
        if extra in keys:
            value = handle.get_tensor(extra)
            if not np.all(np.asarray(value, np.float64) == 1.0):
                raise ValueError(
                    f"{file}: {extra} is not all ones (a decoder scaling jaxcirc does not "
                    f"apply); fold it into W_dec in SAELens before saving"
                )
    left = sorted(keys - set(out) - {"scaling_factor", "finetuning_scaling_factor"})
    if left:
        raise ValueError(
            f"{file} holds tensors jaxcirc would ignore: {left}; expected only {sorted(shapes)}"
        )
    return out


def load_saelens(path: str | os.PathLike, site: str | None = None, *, dtype: str | None = None
                 ) -> SAE:  # fmt: skip
    """An SAE from a SAELens folder (`cfg.json` + `sae_weights.safetensors`).

    - `site`: the TransformerLens activation name it reads (default: the config's
      `hook_name`, which uses the same vocabulary as jaxcirc's sites).
    - `dtype`: cast the weights (default: the config's `dtype`, as SAELens loads them).

    `apply_b_dec_to_input` becomes `center`; a JumpReLU `threshold` becomes `log_threshold`
    (a threshold ≤ 0 gives `-inf`: the same code, as a JumpReLU that never cuts above 0).
    """
    path = Path(path)
    if path.name in (CONFIG, WEIGHTS):
        path = path.parent
    cfg = _read_config(path)
    where = str(path / CONFIG)
    arch = _check_representable(cfg, where)
    d_in = _int(cfg, "d_in", where)
    if "d_sae" not in cfg and "expansion_factor" in cfg:  # the earliest SAELens configs
        cfg = {**cfg, "d_sae": d_in * _int(cfg, "expansion_factor", where)}
    d_sae = _int(cfg, "d_sae", where)
    dtype = _dtype(dtype if dtype is not None else cfg.get("dtype", "float32"), where)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        shapes["threshold"] = (d_sae,)
    w = _read_weights(path, shapes)
    if site is None:
        site = cfg["metadata"].get("hook_name") or ""
    if not isinstance(site, str):
        raise ValueError(f"site must be a TransformerLens activation name (a str); got {site!r}")
    np_dtype = jnp.dtype(dtype)
    maps = {
        k: jnp.asarray(np.asarray(w[k]).astype(np_dtype))
        for k in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    common = dict(site=site, center=bool(cfg.get("apply_b_dec_to_input", True)))
    ours = cfg["metadata"].get("jaxcirc") or {}
    if arch == "relu":
        return ReLUSAE(**maps, **common)
    if arch == "topk":
        k = _int({"k": 100, **cfg}, "k", where, d_sae)  # 100: SAELens's TopKSAEConfig default
        return TopKSAE(**maps, **common, k=k)
    if "log_threshold" in w:
        log_threshold = np.asarray(w["log_threshold"], np.float64)
    elif (exact := _exact_log_threshold(path, w["threshold"])) is not None:
        log_threshold = exact
    else:
        threshold = np.asarray(w["threshold"], np.float64)
        batch_k = _batchtopk_k(cfg, threshold, d_sae, where)
        if batch_k is not None:
            value = np.asarray(w["threshold"])[0].astype(np_dtype)
            return BatchTopKSAE(**maps, **common, threshold=jnp.asarray(value), k=batch_k)
        with np.errstate(divide="ignore"):
            log_threshold = np.where(threshold > 0, np.log(np.maximum(threshold, 0)), -np.inf)
    bandwidth = ours.get("bandwidth", 1e-3)
    return JumpReLUSAE(**maps, **common, log_threshold=jnp.asarray(log_threshold.astype(np_dtype)),
                       bandwidth=float(bandwidth))  # fmt: skip


def _exact_log_threshold(path: Path, threshold: np.ndarray) -> np.ndarray | None:
    """jaxcirc's `log_threshold` from `EXTRA`, if present and still the log of `threshold`
    (within 4 float32 ulps; a threshold edited since is taken as it is)."""
    file = path / EXTRA
    if not file.exists():
        return None
    from safetensors.numpy import load_file

    log = load_file(str(file)).get("log_threshold")
    if log is None or log.shape != threshold.shape:
        return None
    theta = np.asarray(threshold, np.float64)
    close = np.abs(np.exp(log.astype(np.float64)) - theta) <= 4 * np.spacing(
        np.abs(theta).astype(threshold.dtype if threshold.dtype.itemsize >= 4 else np.float32)
    )
    return log if close.all() else None


def _batchtopk_k(cfg: dict, threshold: np.ndarray, d_sae: int, where: str) -> int | None:
    """`k` when a `jumprelu` folder is a BatchTopK SAE (its metadata says so and its one
    threshold is shared and ≥ 0, so `pre · (pre > θ)` equals SAELens's `relu(pre) · (pre > θ)`),
    else `None`."""
    meta = cfg["metadata"]
    ours = meta.get("jaxcirc") or {}
    if ours.get("architecture") == "batchtopk":
        k = ours.get("k")
    elif meta.get("training_architecture") == "batchtopk":
        k = (meta.get("training_architecture_details") or {}).get("k")
    else:
        return None
    if k is None or not np.all(threshold == threshold[0]) or threshold[0] < 0:
        return None
    if isinstance(k, float) and not k.is_integer():
        return None  # SAELens allows a fractional average k: keep it a JumpReLU SAE
    return _int({"k": k}, "k", where + " (metadata: BatchTopK k)", d_sae)


def save_saelens(path: str | os.PathLike, sae: SAE, *, model_name: str | None = None) -> Path:
    """Write `sae` as a SAELens folder that `SAE.load_from_disk(path)` and `load_saelens`
    read; returns the folder. Each file is written atomically.

    A `BatchTopKSAE` is written as SAELens writes one after training: a `jumprelu` SAE with its
    threshold repeated per feature (metadata `training_architecture: "batchtopk"`). jaxcirc's
    extras (JumpReLU `bandwidth`, BatchTopK `k`) go under `metadata.jaxcirc`.
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"save_saelens takes a jaxcirc SAE; got {type(sae).__name__}")
    path = Path(path)
    dtype = str(np.dtype(sae.W_enc.dtype))
    if dtype not in _DTYPES:
        raise ValueError(f"SAELens stores {sorted(_DTYPES)} weights; this SAE holds {dtype}")
    tensors = {k: np.asarray(getattr(sae, k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    ours: dict = {"architecture": sae.architecture}
    arch = {"relu": "standard", "topk": "topk"}.get(sae.architecture, "jumprelu")
    extra: dict = {}
    meta: dict = {}
    extra_tensors: dict = {}
    if isinstance(sae, TopKSAE):
        extra = {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    elif isinstance(sae, BatchTopKSAE):
        value = np.asarray(sae.threshold)
        if value.shape != () or not value >= 0:
            raise ValueError(
                f"a BatchTopKSAE threshold must be one number >= 0 to be written as SAELens's "
                f"JumpReLU (relu(pre)·(pre > θ)); got {value}"
            )
        tensors["threshold"] = np.full(sae.d_sae, value, value.dtype)
        ours["k"] = sae.k
        meta = {"training_architecture": "batchtopk",
                "training_architecture_details": {"k": sae.k}}  # fmt: skip
    elif isinstance(sae, JumpReLUSAE):
        log = np.asarray(sae.log_threshold)
        tensors["threshold"] = np.exp(log.astype(np.float64)).astype(log.dtype)
        extra_tensors = {"log_threshold": log}
        ours["bandwidth"] = sae.bandwidth
    elif not isinstance(sae, ReLUSAE):
        raise ValueError(f"no SAELens form for {type(sae).__name__}")
    for name, value in tensors.items():
        check_finite(np.asarray(value, np.float64), f"SAE weight {name}")
    cfg = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.center),
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if sae.site.endswith("hook_z") else "none",
        **extra,
        "metadata": {
            "sae_lens_version": FORMAT_VERSION,
            "sae_lens_training_version": None,
            "hook_name": sae.site or None,
            "model_name": model_name,
            **meta,
            "jaxcirc": ours,
        },
    }

    def writer(arrays):
        def write(tmp):
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp)

        return write

    atomic_write(path / WEIGHTS, writer(tensors))
    if extra_tensors:
        atomic_write(path / EXTRA, writer(extra_tensors))
    else:
        (path / EXTRA).unlink(missing_ok=True)
    text = json.dumps(cfg, indent=1, allow_nan=False) + "\n"
    atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return path
