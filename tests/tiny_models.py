"""Tiny offline models for tests.

`build_tiny_llama` writes a randomly initialised (but deterministic) LlamaForCausalLM
with the real SmolLM2 tokenizer next to it, so engines load it exactly like the
served model while every forward pass stays in the millisecond range.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from services.generation.weights.merge import TOKENIZER_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER_SRC = str(REPO_ROOT / "data" / "models" / "smollm2-135m-instruct")



def data_dir() -> Path:
    return Path(os.environ.get("INFERAG_DATA_DIR") or REPO_ROOT / "data")


def smollm2_path() -> str:
    """The converted packaged default model (converted once into the data folder)."""
    from services.generation.models import resolve_model

    return resolve_model("smollm2-135m-instruct", data_dir())


def _copy_tokenizer(path: Path, tokenizer_src: str | None) -> Any:
    """The real SmolLM2 tokenizer (or `tokenizer_src`'s) copied into `path`, loaded."""
    from transformers import AutoTokenizer

    if tokenizer_src is None:
        tokenizer_src = DEFAULT_TOKENIZER_SRC
        if not (Path(tokenizer_src) / "tokenizer.json").is_file():
            tokenizer_src = smollm2_path()
    path.mkdir(parents=True, exist_ok=True)
    src = Path(tokenizer_src)
    copied = False
    for name in TOKENIZER_FILES:  # generation_config.json is rewritten by the builders
        if (src / name).is_file():
            shutil.copy2(src / name, path / name)
            copied = True
    if not copied:  # not a folder of files: let transformers resolve and save it
        AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _save_random(path: Path, model_class: Any, config: Any, seed: int) -> Path:
    import torch
    from transformers import GenerationConfig

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_class(config)
        # Wider random weights than the default init, so logits are spread out and
        # greedy argmax is never a near-tie (batched and single runs then agree).
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, 0.2 if "embed" in name else 0.1)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(path, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(path)
    return path


def _tiny_dims(tokenizer: Any) -> dict[str, Any]:
    eos_id = tokenizer.eos_token_id
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
    }


def build_tiny_llama(path: Path, tokenizer_src: str | None = None, *, seed: int = 0) -> Path:
    """Build a tiny random Llama with a real tokenizer into `path` (created if needed).

    Works offline: the tokenizer comes from a local folder (`tokenizer_src`, by default
    the converted SmolLM2 copy, which is converted from the packaged GGUF on demand).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    config = LlamaConfig(**_tiny_dims(_copy_tokenizer(path, tokenizer_src)))
    return _save_random(path, LlamaForCausalLM, config, seed)


def build_tiny_windowed(path: Path, kind: str, *, window: int = 8) -> Path:
    """A tiny random model whose attention is not full everywhere, which the transformers engine refuses.

    `kind`: "sliding" (Mistral: every layer sees the last `window` tokens) or "hybrid" (Qwen2 with
    `layer_types`: one full layer, one sliding layer, as Gemma 2/3 and Qwen 2.5 long-context configs do).
    """
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    dims = _tiny_dims(_copy_tokenizer(path, None))
    if kind == "sliding":
        return _save_random(path, MistralForCausalLM, MistralConfig(**dims, sliding_window=window), 0)
    if kind == "hybrid":
        layers = ["full_attention", "sliding_attention"]
        config = Qwen2Config(**dims, use_sliding_window=True, sliding_window=window, layer_types=layers)
        return _save_random(path, Qwen2ForCausalLM, config, 0)
    raise ValueError(f"unknown kind {kind!r}")
