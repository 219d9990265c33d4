"""Several generation models behind one gateway: which generation service answers which `model`.

The default model is the in-process one (or `INFERAG_GENERATION_URL`'s). More models come from
`INFERAG_GENERATION_URLS` / `INFERAG_MODELS_FILE` (model name → URL of the generation service
serving it, one service per model) and, in-process, from `INFERAG_GEN_EXTRA_MODELS`
(`name=model` pairs, each loaded in this process like the default one). A request goes to the
service of its `model`; a request without one (`/tokenize`) to the default; an unknown model is
a 404 listing them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# POST routes whose body names the model that answers.
MODEL_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/chat", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize",
     "/v1/perplexity"}
)  # fmt: skip
# The routes where a `rag:<collection>` model goes to the RAG service (it has them too).
RAG_MODEL_PATHS = {"/v1/chat/completions": "/v1/chat/completions", "/v1/chat": "/v1/chat/completions",
                   "/v1/responses": "/v1/responses"}  # fmt: skip
DEFAULT = "generation"


def _pairs(value: str, what: str) -> dict[str, str]:
    """`a=x,b=y` (or a JSON object) as a dict."""
    value = value.strip()
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{what}: not valid JSON ({exc})") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ValueError(f"{what}: a JSON object of name: string")
        return {str(k): v for k, v in parsed.items()}
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, target = part.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"{what}: '{part}' is not name=value")
        out[name.strip()] = target.strip()
    return out


def parse_model_urls(value: str | dict[str, str] | None) -> dict[str, str]:
    """`INFERAG_GENERATION_URLS`: `name=url,name=url` or a JSON object."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    return _pairs(value, "INFERAG_GENERATION_URLS")


def parse_extra_models(value: str | dict[str, str] | None) -> dict[str, str]:
    """`INFERAG_GEN_EXTRA_MODELS`: `name=model,…` (model: a folder, a .gguf, a hub id or the packaged default)."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    return _pairs(value, "INFERAG_GEN_EXTRA_MODELS")


def load_models_file(path: Path) -> dict[str, str]:
    """A models file (YAML or JSON): `{name: url}`, or `{"models": {name: url}}`, or a list of `{name, url}`."""
    import yaml

    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"INFERAG_MODELS_FILE {path}: {exc}") from None
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    if isinstance(data, list) and all(isinstance(e, dict) and "name" in e for e in data):
        data = {str(e["name"]): e.get("url") for e in data}
    if not isinstance(data, dict) or not data or not all(isinstance(v, str) and v for v in data.values()):
        raise ValueError(f"INFERAG_MODELS_FILE {path}: expected a mapping of model name to URL")
    return {str(k): str(v) for k, v in data.items()}


def request_model(body: bytes) -> str | None:
    """The `model` of a JSON body, if it names one."""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


class ModelRouter:
    """Served model name → the gateway's key of the generation service serving it."""

    def __init__(self, names: dict[str, str]):
        bad = [name for name in names if not name or name.startswith("rag:")]
        if bad:
            raise ValueError(f"{bad[0]!r} cannot name a generation model (rag: models are the RAG service's)")
        self.names = dict(names)

    @property
    def services(self) -> list[str]:
        return list(dict.fromkeys([DEFAULT, *self.names.values()]))

    def service_for(self, model: str | None) -> str | None:
        """The service of `model`; the default for no model (or when there is only one service,
        which answers unknown models itself); None for a model no service serves."""
        if model is None:
            return DEFAULT
        if model in self.names:
            return self.names[model]
        return DEFAULT if len(self.services) == 1 else None
