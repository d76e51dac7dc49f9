"""SAE folders of either format: jaxcirc's (`sae.json`) or SAELens's (`cfg.json` +
`sae_weights.safetensors`), one at a time (`load_sae`) or a set covering several sites
(`load_saes`), as `jaxcirc sae`, `jaxcirc shift` and the benchmarks read them."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def _is_sae_folder(path: Path) -> bool:
    return (path / "sae.json").exists() or (path / "cfg.json").exists()


def load_sae(path, site: str | None = None):
    """The SAE saved in the folder `path` (SAELens's `cfg.json` or jaxcirc's `sae.json`), read
    at `site` if given (else the site it was saved with)."""
    path = Path(path)
    if (path / "cfg.json").exists() or path.name == "cfg.json":
        from ._saelens import load_saelens

        return load_saelens(path, site)
    if (path / "sae.json").exists():
        from ..sae import load

        sae = load(path)
        return sae if site is None else dataclasses.replace(sae, site=site)
    raise FileNotFoundError(
        f"{path} is not an SAE folder: expected cfg.json + sae_weights.safetensors (SAELens) "
        f"or sae.json (jaxcirc)"
    )


def load_saes(paths, *, sites=None, what: str = "SAE path") -> list:
    """The SAEs of SAE folders, or of folders of SAE folders, ordered by site; `paths` is one
    path or several. Two SAEs at one site are an error naming both folders. With `sites`, the
    SAEs of those sites in their order (a site without one is an error). `what` names the
    argument in the errors (e.g. a command-line flag)."""
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    found = {}
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{what} {path} is not a folder")
        if _is_sae_folder(path):
            folders = [path]
        else:
            folders = sorted(p for p in path.iterdir() if _is_sae_folder(p))
        if not folders:
            raise FileNotFoundError(
                f"{what} {path} holds no SAE folder (a folder with sae.json or cfg.json)"
            )
        for folder in folders:
            sae = load_sae(folder)
            if not sae.site:
                raise ValueError(f"the SAE at {folder} names no site")
            if sae.site in found:
                raise ValueError(
                    f"two SAEs read {sae.site}: {found[sae.site][0]} and {folder}; pass one"
                )
            found[sae.site] = (folder, sae)
    if sites is None:
        return [found[site][1] for site in sorted(found)]
    for site in sites:
        if site not in found:
            shown = ", ".join(str(p) for p in paths)
            raise ValueError(f"{what}: no SAE in {shown} reads {site}; they read {sorted(found)}")
    return [found[site][1] for site in sites]
