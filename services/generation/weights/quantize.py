"""Quantization after the merge, for both engines.

transformers engine (`load_causal_lm(path, quantization=...)`):

* ``int8``: weight-only int8, symmetric, one fp32 scale per output channel
  (`Int8Linear`, written here). Every `nn.Linear` of the decoder is replaced;
  the LM head is kept in the model dtype on purpose: in tied-embedding models
  (SmolLM2, Llama 3.2, Qwen 2.5 small...) it *is* the input embedding, so an int8
  copy would add bytes instead of saving them, and it is the layer that decides
  the greedy token. `quantize_int8(..., include_lm_head=True)` quantizes an
  untied head too. Saved by `save_int8` (an `inferag_quantization.json` marker
  plus `model.int8.safetensors`) and reloaded by `load_int8`; the folder
  deliberately has no `model.safetensors`, so plain `from_pretrained` fails
  loudly instead of reading int8 codes as floats.
  Why not `torch.ao.quantization.quantize_dynamic`: it still runs in torch 2.13 but
  is deprecated (as are torch's quantized tensor dtypes), its modules can't be saved
  with safetensors, and it quantizes activations per tensor too: on SmolLM2-135M its
  greedy next token agreed with fp32 on only 48% of positions of a held-out text
  (weight-only int8 here: 98.7%). `torchao` is not installed.
* ``bnb-4bit`` (NF4) / ``bnb-8bit`` (LLM.int8): bitsandbytes through transformers'
  `BitsAndBytesConfig`; CUDA only, refused elsewhere.

vLLM engine: `check_vllm_quantization` validates (and names) the method vLLM gets,
refusing at startup what vLLM can't run on this device. In vLLM 0.32,
``fp8_per_channel`` is an *online* shorthand (per-output-channel fp8 weight scales,
dynamic per-token activation scales; `vllm/config/quantization.py`), which works on
any unquantized or merged checkpoint; ``fp8`` only loads fp8-serialized checkpoints
(online ``fp8`` was removed), so an unquantized model's ``fp8`` is mapped to
``fp8_per_tensor``; ``bitsandbytes`` no longer exists in vLLM 0.32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UnsupportedQuantization, WeightsError

log = logging.getLogger(__name__)

QUANT_MARKER = "inferag_quantization.json"
INT8_WEIGHTS = "model.int8.safetensors"

TRANSFORMERS_METHODS = ("int8", "bnb-4bit", "bnb-8bit")
# Online vLLM methods: quantize an unquantized checkpoint while loading it (vllm/config/quantization.py
# _ONLINE_SHORTHANDS; "online" takes a quantization_config). Only the fp8 ones have CPU kernels.
VLLM_ONLINE_METHODS = (
    "fp8_per_tensor",
    "fp8_per_channel",
    "fp8_per_block",
    "mxfp8",
    "mxfp4",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "online",
)
_VLLM_CPU_ONLINE = ("fp8_per_tensor", "fp8_per_channel", "fp8_per_block")
# vLLM methods that load checkpoints quantized beforehand (config.json's quantization_config).
VLLM_CHECKPOINT_METHODS = ("fp8", "awq", "gptq", "compressed-tensors", "bitsandbytes")
# What vLLM's CPU backend has linear kernels for (vllm/model_executor/kernels/linear/__init__.py:
# fp8 via CPU/torch scaled-mm kernels, AWQ/GPTQ via CPU WNA16 kernels, compressed-tensors
# W8A8 int8 / WNA16 / fp8). Everything else vLLM knows needs CUDA (Marlin, CUTLASS, FlashInfer...).
VLLM_CPU_METHODS = (*_VLLM_CPU_ONLINE, "fp8", "awq", "gptq", "compressed-tensors")

_ALIASES = {
    "none": None,
    "": None,
    "fp8-per-channel": "fp8_per_channel",
    "fp8-per-tensor": "fp8_per_tensor",
    "fp8-per-block": "fp8_per_block",
    "compressed_tensors": "compressed-tensors",
    "bnb": "bitsandbytes",
    "bnb4": "bnb-4bit",
    "bnb_4bit": "bnb-4bit",
    "bnb8": "bnb-8bit",
    "bnb_8bit": "bnb-8bit",
}
# Checkpoint quant_method values each vLLM method accepts.
_CHECKPOINT_TAGS = {
    "fp8": {"fp8"},
    "awq": {"awq"},
    "gptq": {"gptq"},
    "compressed-tensors": {"compressed-tensors"},
    "bitsandbytes": {"bitsandbytes"},
}


def normalize_method(method: str | None) -> str | None:
    if method is None:
        return None
    key = method.strip().lower()
    return _ALIASES.get(key, key)


# ------------------------------------------------------------ int8 weight-only

# Measured (1 thread, 1536x576): torch's CPU int8 weight-only kernel costs ~0.6 ms per row,
# dequantizing the layer ~2.4 ms whatever the rows; so the kernel for up to 4 rows (decode steps).
_PACK_MAX_ROWS = 4
_HAS_PACK_MM = hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights and one fp32 scale per output channel (weight-only, symmetric).

    `W ~= weight.float() * weight_scale[:, None]`. Decode steps (a few rows) on CPU use
    torch's int8 weight-only matmul kernel; larger inputs dequantize into the input
    dtype and run a normal matmul (the int8 codes are all that stays in memory).
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().to(torch.float32)
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device)
        module.weight.copy_(q)
        module.weight_scale.copy_(scale)
        if linear.bias is not None and module.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return module

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = self.weight * self.weight_scale[:, None]  # int8 * fp32 -> fp32 in one pass
        return w if w.dtype == dtype else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if (
            _HAS_PACK_MM
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and 0 < rows <= _PACK_MAX_ROWS
        ):
            out = torch._weight_int8pack_mm(
                x.reshape(rows, self.in_features).contiguous(), self.weight, self.weight_scale.to(x.dtype)
            ).reshape(*x.shape[:-1], self.out_features)
            return out + self.bias.to(x.dtype) if self.bias is not None else out
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantize(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _lm_head_names(model: nn.Module) -> set[str]:
    """Qualified names of the output projection (the LM head) of a causal LM."""
    get_head: Any = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return {"lm_head"}
    return {name for name, module in model.named_modules() if module is head}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_int8(model: nn.Module, *, include_lm_head: bool = False) -> list[str]:
    """Replace the model's `nn.Linear` layers by `Int8Linear` in place; returns their names.

    The LM head stays as is unless `include_lm_head` (and never when tied to the embeddings).
    """
    heads = _lm_head_names(model)
    tied = False
    get_in: Any = getattr(model, "get_input_embeddings", None)
    get_out: Any = getattr(model, "get_output_embeddings", None)
    if callable(get_in) and callable(get_out):
        inp, out = get_in(), get_out()
        tied = inp is not None and out is not None and getattr(out, "weight", None) is getattr(inp, "weight", None)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (name not in heads or (include_lm_head and not tied))
    ]
    for name in names:
        linear: Any = model.get_submodule(name)
        _set_module(model, name, Int8Linear.from_linear(linear))
    return names


def _fp32_bytes(module: nn.Module) -> int:
    n = int(getattr(module, "in_features", 0)) * int(getattr(module, "out_features", 0))
    bias = getattr(module, "bias", None)
    return 4 * (n + (int(bias.numel()) if isinstance(bias, torch.Tensor) else 0))


def _bytes(module: nn.Module) -> int:
    if isinstance(module, Int8Linear):
        tensors = [module.weight, module.weight_scale, module.bias]
    else:
        tensors = [getattr(module, "weight", None), getattr(module, "bias", None)]
        # bitsandbytes keeps its scales in a quant_state next to the packed weight
        state = getattr(tensors[0], "quant_state", None)
        if state is not None and getattr(state, "absmax", None) is not None:
            tensors.append(state.absmax)
    return sum(int(t.numel() * t.element_size()) for t in tensors if isinstance(t, torch.Tensor))


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear | Int8Linear):
        return True
    return type(module).__name__ in {"Linear4bit", "Linear8bitLt"}  # bitsandbytes


def linear_layers(model: nn.Module, *, include_lm_head: bool = False) -> dict[str, nn.Module]:
    heads = _lm_head_names(model)
    return {
        name: module
        for name, module in model.named_modules()
        if _is_linear(module) and (include_lm_head or name not in heads)
    }


def linear_weight_bytes(model: nn.Module, *, include_lm_head: bool = False) -> int:
    """Bytes held by the linear layers' weights, scales and biases (LM head excluded by default)."""
    return sum(_bytes(m) for m in linear_layers(model, include_lm_head=include_lm_head).values())


def linear_fp32_bytes(model: nn.Module, *, include_lm_head: bool = False) -> int:
    """What the same linear layers take in fp32 (the reference for the size ratio)."""
    return sum(_fp32_bytes(m) for m in linear_layers(model, include_lm_head=include_lm_head).values())


def model_bytes(model: nn.Module) -> int:
    """Parameters plus buffers, each shared tensor counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += int(t.numel() * t.element_size())
    return total


# ------------------------------------------------------------- save / reload


def save_int8(model: nn.Module, out_dir: str | Path, modules: list[str]) -> Path:
    """Write an `int8`-quantized model: config, int8 safetensors, marker (tokenizer files: the caller)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    seen: dict[int, str] = {}
    aliases: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        ptr = tensor.data_ptr()
        if ptr in seen and tensor.numel() > 0:
            aliases[name] = seen[ptr]  # tied weights are stored once
            continue
        seen[ptr] = name
        tensors[name] = tensor.detach().contiguous()
    hf_model: Any = model
    hf_model.config.save_pretrained(out)
    if getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(out)
    save_file(tensors, str(out / INT8_WEIGHTS), metadata={"format": "pt", "inferag": "int8"})
    meta = {
        "method": "int8",
        "scheme": "weight-only, symmetric, per-output-channel",
        "modules": modules,
        "aliases": aliases,
        "weights": INT8_WEIGHTS,
    }
    (out / QUANT_MARKER).write_text(json.dumps(meta, indent=2))  # last: marks the folder complete
    return out


def read_quantization_marker(path: str | Path) -> dict[str, Any] | None:
    marker = Path(path) / QUANT_MARKER
    if not marker.is_file():
        return None
    return dict(json.loads(marker.read_text()))


def load_int8(path: str | Path) -> Any:
    """Rebuild a model written by `save_int8` (on the CPU, without ever materializing fp32 linears)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    meta = read_quantization_marker(folder)
    if meta is None or meta.get("method") != "int8":
        raise WeightsError(f"{folder} holds no int8 weights written by `weights quantize`.")
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):  # parameters on "meta", buffers (rotary...) real
        model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for name in meta["modules"]:
        old = model.get_submodule(name)
        _set_module(model, name, Int8Linear(old.in_features, old.out_features, bias=old.bias is not None))
    state = load_file(str(folder / meta.get("weights", INT8_WEIGHTS)))
    for alias, source in meta.get("aliases", {}).items():
        state.setdefault(alias, state[source])
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left or unexpected:
        raise WeightsError(f"{folder}: int8 checkpoint does not match the model (missing {left}, extra {unexpected}).")
    for module in model.modules():  # biases loaded as plain tensors: keep them frozen parameters
        if isinstance(module, Int8Linear) and module.bias is not None:
            module.bias.requires_grad_(False)
    model.eval()
    return model


# ------------------------------------------------------- transformers engine


def check_transformers_quantization(method: str | None, *, has_cuda: bool | None = None) -> str | None:
    """Validate a transformers-engine method before loading anything; returns its canonical name."""
    m = normalize_method(method)
    if m is None:
        return None
    if has_cuda is None:
        has_cuda = torch.cuda.is_available()
    if m not in TRANSFORMERS_METHODS:
        hint = (
            " (a vLLM method: set INFERAG_GEN_ENGINE=vllm)"
            if m in (*VLLM_ONLINE_METHODS, *VLLM_CHECKPOINT_METHODS)
            else ""
        )
        raise UnsupportedQuantization(
            f"The transformers engine can't quantize with '{method}'{hint}. "
            f"It supports: {', '.join(TRANSFORMERS_METHODS)}."
        )
    if m.startswith("bnb-"):
        if not has_cuda:
            raise UnsupportedQuantization(
                f"'{m}' (bitsandbytes) needs a CUDA GPU and this host has none; on the CPU use 'int8'."
            )
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UnsupportedQuantization(f"'{m}' needs the bitsandbytes package: pip install bitsandbytes")
    return m


def bnb_config(method: str, compute_dtype: torch.dtype = torch.float16) -> Any:
    from transformers import BitsAndBytesConfig

    if method == "bnb-4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(
    path: str, *, dtype: Any = torch.float32, device: Any = "cpu", quantization: str | None = None
) -> Any:
    """What the transformers engine loads: `from_pretrained` + the quantization, on `device`, in eval mode.

    A folder written by `weights quantize --method int8` loads as int8 whatever
    `quantization` says (it must be None or "int8").
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    saved = read_quantization_marker(path) if Path(path).is_dir() else None
    if saved is not None:
        method = normalize_method(quantization)
        if method not in (None, saved.get("method")):
            raise UnsupportedQuantization(f"{path} is already quantized with '{saved.get('method')}', not '{method}'.")
        return load_int8(path).to(device)
    method = check_transformers_quantization(quantization, has_cuda=torch.cuda.is_available())
    if method in ("bnb-4bit", "bnb-8bit"):
        compute = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=bnb_config(method, compute), dtype=compute, device_map={"": device.index or 0}
        )
        return model.eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if method == "int8":
        names = quantize_int8(model)
        log.info("int8 weight-only quantization of %d linear layers (LM head kept)", len(names))
    model.to(device)
    return model.eval()


# ------------------------------------------------------------------ vLLM engine


def _checkpoint_quant_method(model_path: str | None) -> str | None:
    if not model_path or not (Path(model_path) / "config.json").is_file():
        return None
    config = json.loads((Path(model_path) / "config.json").read_text())
    qc = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(qc, dict):
        return None
    return str(qc.get("quant_method") or qc.get("format") or "unknown").lower()


def vllm_known_methods() -> tuple[str | None, list[str] | None]:
    """(vLLM version, its quantization method names), or (None, None) where vLLM is not installed."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None, None
    import vllm
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return str(vllm.__version__), list(QUANTIZATION_METHODS)


def check_vllm_quantization(
    method: str | None,
    *,
    has_cuda: bool,
    model_path: str | None = None,
    has_adapters: bool = False,
    known_methods: list[str] | None = None,
    vllm_version: str | None = None,
) -> str | None:
    """The `quantization` to hand vLLM for `method`, or UnsupportedQuantization with the reason.

    Refuses: transformers-only methods, names this vLLM doesn't know (bitsandbytes
    in 0.32), checkpoint methods on a folder that isn't quantized that way (a merged
    model never is), and, without CUDA, the methods vLLM's CPU backend has no
    kernels for.
    """
    m = normalize_method(method)
    if m is None:
        return None
    if m in TRANSFORMERS_METHODS:
        raise UnsupportedQuantization(
            f"'{m}' is a transformers-engine method. On vLLM use 'fp8_per_channel' (quantizes any checkpoint "
            "while loading) or a pre-quantized AWQ/GPTQ/compressed-tensors checkpoint."
        )
    if model_path and read_quantization_marker(model_path) is not None:
        raise UnsupportedQuantization(
            f"{model_path} holds inferag int8 weights, which only the transformers engine loads."
        )
    if known_methods is None:
        vllm_version, known_methods = vllm_known_methods()
    version = f"vLLM {vllm_version}" if vllm_version else "vLLM"
    if known_methods is not None and m not in known_methods:
        hint = ""
        if m == "bitsandbytes":
            hint = (
                " (bitsandbytes was removed from vLLM). Use the transformers engine with 'bnb-4bit'/'bnb-8bit' "
                "on a GPU, or 'fp8_per_channel' / an AWQ or GPTQ checkpoint on vLLM"
            )
        raise UnsupportedQuantization(f"{version} has no quantization method '{m}'{hint}.")

    if not has_cuda and m not in VLLM_CPU_METHODS:
        raise UnsupportedQuantization(
            f"'{m}' needs a CUDA GPU; {version} on this CPU runs: {', '.join(VLLM_CPU_METHODS)} "
            "(the last four as pre-quantized checkpoints)."
        )
    checkpoint_method = _checkpoint_quant_method(model_path)
    if m not in VLLM_ONLINE_METHODS:
        if has_adapters and checkpoint_method is not None:
            raise UnsupportedQuantization(
                f"LoRA adapters can't be merged into a {checkpoint_method}-quantized base. Merge them into the "
                "unquantized base and quantize the merged folder, or use 'fp8_per_channel'."
            )
        if m == "fp8" and checkpoint_method != "fp8":
            # vLLM >= 0.2x only loads fp8-serialized checkpoints with "fp8"; its old online
            # meaning (dynamic per-tensor) is now the "fp8_per_tensor" shorthand.
            log.info("quantization 'fp8' on an unquantized checkpoint: using vLLM's online 'fp8_per_tensor'")
            m = "fp8_per_tensor"
        elif model_path is not None and checkpoint_method not in _CHECKPOINT_TAGS.get(m, {m}):
            what = "a LoRA-merged model" if has_adapters else model_path
            raise UnsupportedQuantization(
                f"'{m}' loads {m}-quantized checkpoints, and {what} is "
                + (f"quantized with '{checkpoint_method}'." if checkpoint_method else "not quantized.")
                + " To quantize an unquantized (or merged) model while loading it, use 'fp8_per_channel'."
            )
    if not has_cuda and m == "fp8_per_channel":
        # vLLM 0.32 picks ChannelWiseTorchFP8ScaledMMLinearKernel here: torch._scaled_mm's CPU
        # reference path, about 8 s per token for SmolLM2-135M on 2 cores (measured).
        log.warning(
            "vLLM fp8_per_channel on the CPU answers, but its fp8 matmuls take torch's slow reference "
            "path: expect seconds per token. Serve unquantized weights or int8 on the transformers "
            "engine for speed."
        )
    return m
