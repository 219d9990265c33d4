"""`weights`: prepare served weights offline (merge, quantize, inspect) and fine-tune LoRA adapters.

    python -m services.generation.weights.cli merge BASE --adapter PATH[:WEIGHT] ... --out DIR
    python -m services.generation.weights.cli quantize MODEL --method int8 --out DIR
    python -m services.generation.weights.cli inspect PATH [--json]
    python -m services.generation.weights.cli finetune DATASET.jsonl --base MODEL --out ADAPTER_DIR

BASE / MODEL: a local folder, a hub id (hosts with a hub) or the packaged default
`smollm2-135m-instruct`. Meant to be mounted as `inferag weights ...`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import WeightsError

app = typer.Typer(
    name="weights",
    help="Prepare served weights offline (merge LoRA adapters, quantize, inspect) and fine-tune LoRA adapters.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # never break paths across lines

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="INFERAG_DATA_DIR", help="Where the packaged model is converted.")
]


def _resolve(model: str, data_dir: Path) -> str:
    from services.generation.models import resolve_model

    return resolve_model(model, data_dir)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=1)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")


@app.command()
def merge(
    base: Annotated[str, typer.Argument(help="Base model: folder, hub id or the packaged default.")],
    adapter: Annotated[list[str], typer.Option("--adapter", "-a", help="PATH[:WEIGHT] of a peft LoRA adapter.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the merged model to.")],
    dtype: Annotated[str, typer.Option(help="auto (the base's dtype), float32, bfloat16, float16.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    data_dir: DataDir = Path("data"),
) -> None:
    """Merge LoRA adapters (weighted) into BASE and save a standalone model folder (written atomically)."""
    from .merge import parse_adapters, write_merged

    try:
        prepared = write_merged(_resolve(base, data_dir), parse_adapters(adapter), out, dtype=dtype, overwrite=force)
    except WeightsError as exc:
        raise _fail(exc) from exc
    for a in prepared.adapters:
        console.print(f"merged {a['path']} (weight {a['weight']}, r={a['r']}, alpha={a['lora_alpha']})")
    console.print(f"[green]wrote[/green] {prepared.path}")


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="Model folder (e.g. a merged one), hub id or the packaged default.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the quantized model to.")],
    method: Annotated[str, typer.Option(help="int8 (weight-only, per-channel; transformers engine).")] = "int8",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    data_dir: DataDir = Path("data"),
) -> None:
    """Quantize offline. Only `int8` is written to disk; the other methods apply when the engine loads."""
    import torch
    from transformers import AutoModelForCausalLM

    from .merge import copy_tokenizer_files, local_base_dir
    from .quantize import linear_fp32_bytes, linear_weight_bytes, normalize_method, quantize_int8, save_int8

    m = normalize_method(method)
    if m != "int8":
        raise _fail(
            WeightsError(
                f"'{method}' is applied at load time, not written here: serve the unquantized (or merged) folder with "
                f"INFERAG_GEN_QUANTIZATION={method} (bnb-4bit/bnb-8bit: transformers engine on CUDA; "
                "fp8_per_channel and friends: vLLM engine)."
            )
        )
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(WeightsError(f"{out} exists and is not empty (overwrite it with --force)."))
    src = local_base_dir(_resolve(model, data_dir))
    net = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    before = linear_fp32_bytes(net)
    names = quantize_int8(net)
    after = linear_weight_bytes(net)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        save_int8(net, tmp, names)
        copy_tokenizer_files([src], tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(
        f"int8: {len(names)} linear layers, {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
        f"({after / before:.1%} of fp32; LM head kept)"
    )
    console.print(f"[green]wrote[/green] {out}  (serve it with the transformers engine)")


def describe(path: str | Path) -> dict[str, Any]:
    """Config, parameter counts, linear bytes, merged adapters and quantization of a folder, from file headers."""
    from safetensors import safe_open

    from .merge import read_manifest
    from .quantize import read_quantization_marker

    folder = Path(path)
    info: dict[str, Any] = {"path": str(folder.resolve())}
    if (folder / "adapter_config.json").is_file():
        cfg = json.loads((folder / "adapter_config.json").read_text())
        info["kind"] = "lora-adapter"
        info["adapter"] = {
            k: cfg.get(k)
            for k in ("base_model_name_or_path", "r", "lora_alpha", "target_modules", "use_dora", "use_rslora")
        }
        result = folder / "train_result.json"
        if result.is_file():
            tr = json.loads(result.read_text())
            info["training"] = {
                k: tr.get(k)
                for k in ("initial_val_loss", "best_val_loss", "steps", "epochs", "stopped_early", "seconds")
            }
    if (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
        info["kind"] = "model"
        info["config"] = {
            k: cfg.get(k)
            for k in (
                "architectures",
                "model_type",
                "hidden_size",
                "num_hidden_layers",
                "vocab_size",
                "dtype",
                "torch_dtype",
                "tie_word_embeddings",
            )
            if cfg.get(k) is not None
        }
        qc = cfg.get("quantization_config")
        marker = read_quantization_marker(folder)
        if marker is not None:
            info["quantization"] = marker.get("method")
        elif isinstance(qc, dict):
            info["quantization"] = qc.get("quant_method")
        else:
            info["quantization"] = None
    params = 0
    total_bytes = 0
    linear_bytes = 0
    by_dtype: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                sl = f.get_slice(name)
                shape = sl.get_shape()
                dtype = str(sl.get_dtype())
                n = 1
                for d in shape:
                    n *= int(d)
                size = n * _DTYPE_BYTES.get(dtype, 4)
                params += n
                total_bytes += size
                by_dtype[dtype] = by_dtype.get(dtype, 0) + n
                if _is_linear_tensor(name, shape):
                    linear_bytes += size
    if params:
        info["parameters"] = params
        info["tensor_bytes"] = total_bytes
        if info.get("kind") == "model":
            info["linear_bytes"] = linear_bytes
        info["parameters_by_dtype"] = by_dtype
    manifest = read_manifest(folder)
    if manifest is not None:
        info["merged"] = {
            "base": manifest.get("base"),
            "key": manifest.get("key"),
            "adapters": [
                {"path": a["path"], "weight": a["weight"], "r": a.get("r"), "lora_alpha": a.get("lora_alpha")}
                for a in manifest.get("adapters", [])
            ],
        }
    return info


_DTYPE_BYTES = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I8": 1,
    "U8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I32": 4,
    "I64": 8,
    "F64": 8,
    "BOOL": 1,
}
_NOT_LINEAR = ("embed", "lm_head", "wte", "wpe", "norm", "ln_")


def _is_linear_tensor(name: str, shape: list[int]) -> bool:
    """Weights (and per-channel scales, biases) of linear layers, judged by name and rank."""
    if any(part in name for part in _NOT_LINEAR):
        return False
    return (name.endswith(".weight") and len(shape) == 2) or name.endswith((".weight_scale", ".bias"))


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="A model folder, merged folder, quantized folder or adapter folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = Path("data"),
) -> None:
    """Print config, parameter counts, linear-layer bytes, merged adapters and quantization (reads headers only)."""
    folder = Path(path) if Path(path).is_dir() else Path(_resolve(path, data_dir))
    if not folder.is_dir():
        raise _fail(WeightsError(f"{path} is not a folder."))
    info = describe(folder)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(show_header=False, title=str(folder))
    for key, value in info.items():
        if key == "path":
            continue
        if isinstance(value, int) and key.endswith("bytes"):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        elif isinstance(value, int):
            value = f"{value:,}"
        elif isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def finetune(
    dataset: Annotated[Path, typer.Argument(help='JSONL chat dataset: {"messages": [...]} per line.')],
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapter folder to write.")],
    base: Annotated[str, typer.Option(help="Base model to adapt.")] = "smollm2-135m-instruct",
    epochs: Annotated[float, typer.Option(help="Passes over the training split (upper bound).")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scaling = alpha / r).")] = 32,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
    target_modules: Annotated[str, typer.Option(help="Comma list of module names to adapt.")] = (
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    ),
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 8,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = 1.0,
    val_fraction: Annotated[float, typer.Option(help="Held-out share when the dataset has no split fields.")] = 0.15,
    patience: Annotated[int, typer.Option(help="Evaluations without improvement before stopping.")] = 2,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Steps of linear learning-rate warmup.")] = 0,
    eval_every: Annotated[
        int | None, typer.Option(help="Steps between held-out evaluations; default: each epoch.")
    ] = None,
    max_length: Annotated[int, typer.Option(help="Tokens kept of each example (longer ones are cut).")] = 1024,
    init_adapter: Annotated[
        Path | None, typer.Option(help="Continue training this adapter (its rank, alpha and modules).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and LoRA init.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    mixed_precision: Annotated[
        str,
        typer.Option(help="auto (bfloat16 matmuls where the GPU or CPU computes bf16 natively), bfloat16, off."),
    ] = "auto",
    data_dir: DataDir = Path("data"),
    perplexity: Annotated[
        bool, typer.Option(help="Then report the held-out perplexity before and after, through /v1/perplexity's code.")
    ] = True,
) -> None:
    """Train a LoRA adapter by supervised fine-tuning; the best (lowest held-out loss) adapter lands in OUT."""
    from .finetune import train_lora

    def show(rec: dict[str, Any]) -> None:
        console.print(" ".join(f"{k}={v}" for k, v in rec.items()))

    try:
        result = train_lora(
            _resolve(base, data_dir),
            dataset,
            out,
            r=r,
            alpha=alpha,
            dropout=dropout,
            target_modules=[t.strip() for t in target_modules.split(",") if t.strip()],
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            max_grad_norm=max_grad_norm,
            val_fraction=val_fraction,
            patience=patience,
            max_steps=max_steps,
            warmup_steps=warmup_steps,
            eval_every=eval_every,
            max_length=max_length,
            init_adapter=init_adapter,
            seed=seed,
            device=device,
            mixed_precision=mixed_precision,
            num_threads=threads,
            on_log=show,
        )
    except WeightsError as exc:
        raise _fail(exc) from exc
    console.print(
        f"[green]adapter[/green] {result.adapter_path}: held-out loss {result.initial_val_loss:.4f} -> "
        f"{result.best_val_loss:.4f} in {result.steps} steps ({result.epochs} epochs, {result.seconds:.0f}s"
        f"{', stopped early' if result.stopped_early else ''})"
    )
    if perplexity and result.val_examples:
        from .heldout import heldout_perplexity

        try:
            ppl = heldout_perplexity(
                _resolve(base, data_dir), result.adapter_path, dataset, cache_dir=data_dir / "weights",
                val_fraction=val_fraction, seed=seed, num_threads=threads,
            )  # fmt: skip
        except WeightsError as exc:
            raise _fail(exc) from exc
        console.print(
            f"held-out perplexity {ppl.before:.3f} -> {ppl.after:.3f} ({ppl.texts} conversations, {ppl.tokens} tokens"
            f"{f', {ppl.skipped} longer than the context window skipped' if ppl.skipped else ''})"
        )
    console.print(f"serve it: INFERAG_GEN_ADAPTERS={result.adapter_path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
