"""LoRA adapters merged into the base weights once, cached on disk by content.

`prepare_weights(base, adapters, cache_dir)` returns the folder the engine loads:

* no adapters: the base, untouched;
* otherwise a merged copy, `W' = W + sum_i w_i * (alpha_i / r_i) * B_i @ A_i` for
  every targeted layer, built with peft's own merge and cached in
  `cache_dir/<key>` where `key` hashes the base identity, the adapter files'
  contents and the weights. A second start with the same inputs finds the cache
  and merges nothing; an adapter file that changes gives a new key.

Crash safety: the merged model is written into `cache_dir/.tmp-<key>-*`, the
completion marker (`inferag_weights.json`) is written last, and only then is the
folder renamed to `cache_dir/<key>` (`os.replace`, atomic on one filesystem). A
folder counts as a cache entry only if the marker is there, so a merge that dies
halfway is never loaded; its leftovers are removed by the next build of that key.
Concurrent starts are serialized per key with an advisory file lock.

Base identity (a design choice): the sha256 of `config.json` plus the name, size
and mtime of every weight file, not a hash of the weights' bytes. Hashing
gigabytes at every start would cost about as much as loading them, and base
folders are written once (downloaded or converted); rewriting one changes its
mtimes. `base_hash="content"` hashes the bytes for those who want it. Adapters are
small, so their files are always hashed by content.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import WeightsError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = "inferag_weights.json"
COMBINED_ADAPTER = "inferag_combined"

# Files that make up a tokenizer / chat template / generation defaults.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")

# How many merges this process ran (tests assert that a cache hit ran none).
merges_run = 0


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter (a peft folder) and the weight its delta is scaled by."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """`path` or `path:weight` (the weight is whatever follows the last ':' if it is a number)."""
        text = text.strip()
        if not text:
            raise WeightsError("An adapter entry is empty.", param="adapters")
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(head, float(tail))
            except ValueError:
                pass
        return cls(text)


def parse_adapters(value: str | Sequence[str | AdapterSpec] | None) -> list[AdapterSpec]:
    """`"a:0.7,b"` (the `INFERAG_GEN_ADAPTERS` form) or a list of entries, as AdapterSpecs."""
    if value is None:
        return []
    items: Sequence[str | AdapterSpec] = value.split(",") if isinstance(value, str) else value
    specs: list[AdapterSpec] = []
    for item in items:
        if isinstance(item, AdapterSpec):
            specs.append(item)
        elif item.strip():
            specs.append(AdapterSpec.parse(item))
    return specs


@dataclass
class PreparedWeights:
    """Where the engine loads from, and what went into it (reported by `/v1/models`)."""

    path: str
    base: str
    adapters: list[dict[str, Any]] = field(default_factory=list)
    cache_hit: bool = False
    key: str | None = None

    def details(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "adapters": [{"path": a["path"], "weight": a["weight"]} for a in self.adapters],
            "merged_path": self.path if self.adapters else None,
        }


# --------------------------------------------------------------------- identity


def _sha256_file(path: Path, h: Any | None = None) -> str:
    digest = h if h is not None else hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return str(digest.hexdigest())


def local_base_dir(base: str) -> Path:
    """The local folder of `base`: the folder itself, or a hub id's snapshot in the local hub cache."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path.resolve()
    try:  # hosts with a hub: the snapshot (downloaded if needed and allowed)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]))
    except Exception as exc:
        raise WeightsError(
            f"The base model '{base}' is neither a local folder nor a hub id that can be fetched here: {exc}",
            param="model",
        ) from exc


def check_mergeable_base(base_dir: Path) -> None:
    """LoRA deltas merge into unquantized weights only."""
    if (base_dir / "inferag_quantization.json").is_file():
        raise WeightsError(
            f"{base_dir} holds int8-quantized weights; merge the adapters into the unquantized model, then quantize.",
            param="adapters",
        )
    try:
        config = json.loads((base_dir / "config.json").read_text())
    except (OSError, ValueError):
        return
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        raise WeightsError(
            f"{base_dir} is a {qc.get('quant_method', 'quantized')} checkpoint; LoRA adapters merge into unquantized "
            "weights only. Merge into the unquantized base, then quantize the merged model.",
            param="adapters",
        )


def base_identity(base_dir: Path, how: Literal["stat", "content"] = "stat") -> dict[str, Any]:
    config = base_dir / "config.json"
    if not config.is_file():
        raise WeightsError(f"{base_dir} has no config.json; it is not a transformers model folder.", param="model")
    files = []
    for f in sorted(base_dir.iterdir()):
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name.endswith(".index.json")):
            st = f.stat()
            entry: list[Any] = [f.name, st.st_size]
            entry.append(_sha256_file(f) if how == "content" else st.st_mtime_ns)
            files.append(entry)
    if not files:
        raise WeightsError(f"{base_dir} holds no weight files.", param="model")
    return {"config_sha256": _sha256_file(config), "files": files, "how": how}


def adapter_files(adapter_dir: Path) -> list[Path]:
    files = [adapter_dir / name for name in _ADAPTER_FILES if (adapter_dir / name).is_file()]
    if not (adapter_dir / "adapter_config.json").is_file() or len(files) < 2:
        raise WeightsError(
            f"{adapter_dir} is not a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors).",
            param="adapters",
        )
    return files


def adapter_sha256(adapter_dir: Path) -> str:
    h = hashlib.sha256()
    for f in adapter_files(adapter_dir):
        h.update(f.name.encode() + b"\0")
        _sha256_file(f, h)
        h.update(b"\0")
    return h.hexdigest()


def _adapter_record(spec: AdapterSpec) -> dict[str, Any]:
    path = Path(spec.path).expanduser()
    if not path.is_dir():
        raise WeightsError(f"The adapter folder {spec.path} does not exist.", param="adapters")
    config = json.loads((path / "adapter_config.json").read_text()) if (path / "adapter_config.json").is_file() else {}
    if config and config.get("peft_type", "LORA") != "LORA":
        raise WeightsError(f"{spec.path} is a {config.get('peft_type')} adapter; only LoRA adapters merge.")
    targets = config.get("target_modules")
    return {
        "path": str(path.resolve()),
        "weight": float(spec.weight),
        "sha256": adapter_sha256(path),
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "use_dora": bool(config.get("use_dora")),
        "use_rslora": bool(config.get("use_rslora")),
    }


def cache_key(base_id: dict[str, Any], adapters: list[dict[str, Any]], dtype: str) -> str:
    """sha256 of everything that changes the merged weights (first 24 hex digits)."""
    payload = {
        "format": FORMAT_VERSION,
        "base": base_id,
        "adapters": [[a["sha256"], repr(float(a["weight"]))] for a in adapters],
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------ merge


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return "auto"
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise WeightsError(f"Unknown dtype '{dtype}'.", param="dtype")
    return value


def merge_adapters(base: str | Path, adapters: Sequence[AdapterSpec], *, dtype: str = "auto") -> Any:
    """Load `base`, apply the adapters with their weights and merge them (peft); returns the plain model.

    One adapter: its LoRA scaling is multiplied by the weight, then `merge_and_unload`.
    Several: `add_weighted_adapter(combination_type="cat")`, which stacks
    `[w_i * s_i * A_i]` and `[B_i]` so that `B_cat @ A_cat = sum_i w_i * s_i * B_i @ A_i`
    exactly (`"linear"` would combine A and B separately, which is *not* the weighted
    sum of the products, and needs equal ranks), then merges that adapter.
    """
    global merges_run
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    if not adapters:
        raise WeightsError("merge_adapters needs at least one adapter.", param="adapters")
    merges_run += 1
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=_torch_dtype(dtype))
    names = [f"adapter_{i}" for i in range(len(adapters))]
    try:
        peft_model = PeftModel.from_pretrained(model, adapters[0].path, adapter_name=names[0])
        for name, spec in zip(names[1:], adapters[1:], strict=True):
            peft_model.load_adapter(spec.path, adapter_name=name)
    except Exception as exc:
        raise WeightsError(f"Loading the LoRA adapters onto {base} failed: {type(exc).__name__}: {exc}") from exc

    lora_layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    if len(adapters) == 1:
        weight = float(adapters[0].weight)
        if weight != 1.0:
            for layer in lora_layers:
                if names[0] in layer.scaling:
                    layer.scaling[names[0]] *= weight
        merged = peft_model.merge_and_unload(adapter_names=[names[0]])
    else:
        if any(getattr(peft_model.peft_config[n], "use_dora", False) for n in names):
            raise WeightsError("DoRA adapters can't be combined with weights; serve one DoRA adapter alone.")
        peft_model.add_weighted_adapter(
            names, [float(a.weight) for a in adapters], COMBINED_ADAPTER, combination_type="cat"
        )
        # The combined adapter is created with r = lora_alpha = sum of ranks, i.e. a scaling
        # of 1 -- unless the first adapter used rsLoRA (alpha / sqrt(r)). The per-adapter
        # scalings are already folded into A_cat, so pin it to exactly 1.
        for layer in lora_layers:
            if COMBINED_ADAPTER in layer.scaling:
                layer.scaling[COMBINED_ADAPTER] = 1.0
        merged = peft_model.merge_and_unload(adapter_names=[COMBINED_ADAPTER])
    log.info("merged %d LoRA adapter(s) into %s in %.1fs", len(adapters), base, time.perf_counter() - t0)
    return merged


def copy_tokenizer_files(src_dirs: Sequence[Path], dst: Path) -> list[str]:
    """Copy the tokenizer, chat template and generation config from the first folder that has them."""
    copied: list[str] = []
    for name in TOKENIZER_FILES:
        if (dst / name).exists() and name == "generation_config.json":
            continue  # save_pretrained already wrote the model's own
        for src in src_dirs:
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
                copied.append(name)
                break
    return copied


def is_valid_cache(folder: Path, key: str | None = None) -> bool:
    """A cache entry is valid only once its completion marker (written last) is there."""
    marker = folder / MARKER
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return key is None or manifest.get("key") == key


@contextlib.contextmanager
def _key_lock(cache_dir: Path, key: str) -> Iterator[None]:
    with (cache_dir / f".{key}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_stale(cache_dir: Path, key: str) -> None:
    """Under the key's lock: leftovers of a crashed build of this key, and an unmarked final folder."""
    for stale in cache_dir.glob(f".tmp-{key}-*"):
        log.warning("removing the leftovers of an interrupted merge: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    final = cache_dir / key
    if final.exists() and not is_valid_cache(final, key):
        log.warning("removing an incomplete merged-weights folder: %s", final)
        shutil.rmtree(final, ignore_errors=True)


def _write_model(model: Any, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)


def _build(base_dir: Path, adapters: list[AdapterSpec], dtype: str, tmp: Path, manifest: dict[str, Any]) -> None:
    model = merge_adapters(base_dir, adapters, dtype=dtype)
    _write_model(model, tmp)
    del model
    copied = copy_tokenizer_files([base_dir, *(Path(a.path) for a in adapters)], tmp)
    if "tokenizer_config.json" not in copied:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(tmp)
    # Written last: its presence is what makes the folder a complete merge.
    (tmp / MARKER).write_text(json.dumps(manifest, indent=2))


def _manifest(key: str, base: str, base_dir: Path, records: list[dict[str, Any]], dtype: str) -> dict[str, Any]:
    import peft
    import transformers

    return {
        "format": FORMAT_VERSION,
        "key": key,
        "base": base,
        "base_dir": str(base_dir),
        "adapters": records,
        "dtype": dtype,
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_merged(
    base: str, adapters: Sequence[AdapterSpec], out_dir: Path, *, dtype: str = "auto", overwrite: bool = False
) -> PreparedWeights:
    """Merge into `out_dir` (the offline CLI): written beside it, then renamed into place."""
    specs = list(adapters)
    base_dir = local_base_dir(base)
    check_mergeable_base(base_dir)
    records = [_adapter_record(spec) for spec in specs]
    key = cache_key(base_identity(base_dir), records, dtype)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise WeightsError(f"{out_dir} exists and is not empty (overwrite it with --force).")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        _build(base_dir, specs, dtype, tmp, _manifest(key, base, base_dir, records, dtype))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedWeights(path=str(out_dir), base=base, adapters=records, cache_hit=False, key=key)


def prepare_weights(
    base: str,
    adapters: Sequence[AdapterSpec],
    cache_dir: Path,
    *,
    dtype: str = "auto",
    base_hash: Literal["stat", "content"] = "stat",
) -> PreparedWeights:
    """The folder to serve: `base` itself without adapters, else the cached merge (built on a miss)."""
    specs = list(adapters)
    if not specs:
        return PreparedWeights(path=base, base=base)
    base_dir = local_base_dir(base)
    check_mergeable_base(base_dir)
    records = [_adapter_record(spec) for spec in specs]
    key = cache_key(base_identity(base_dir, base_hash), records, dtype)
    cache_dir = Path(cache_dir)
    final = cache_dir / key
    if is_valid_cache(final, key):
        log.info("merged weights cache hit: %s", final)
        return PreparedWeights(path=str(final), base=base, adapters=records, cache_hit=True, key=key)

    cache_dir.mkdir(parents=True, exist_ok=True)
    with _key_lock(cache_dir, key):
        if is_valid_cache(final, key):  # another process built it while we waited
            return PreparedWeights(path=str(final), base=base, adapters=records, cache_hit=True, key=key)
        _clean_stale(cache_dir, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
        try:
            _build(base_dir, specs, dtype, tmp, _manifest(key, base, base_dir, records, dtype))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("merged weights written to %s", final)
    return PreparedWeights(path=str(final), base=base, adapters=records, cache_hit=False, key=key)


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        return dict(json.loads(marker.read_text()))
    except (OSError, ValueError):
        return None
