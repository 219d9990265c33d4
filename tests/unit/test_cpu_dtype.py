"""`auto` on CPU: bfloat16 exactly where the CPU lists native bf16 arithmetic, float32 elsewhere; and what
bfloat16 costs in quality on the packaged models (agreement with float32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import services.common.cpu
from services.common.cpu import cpu_auto_dtype, native_bf16, parse_cpu_flags
from services.common.cpu import cpu_flags as read_cpu_flags  # the real reader (conftest pins the flags)
from services.embeddings.engines.base import resolve_dtype
from services.generation.engines.transformers_engine import _torch_dtype

# The flags lines of real CPUs (shortened to the vector/matrix flags and a few around them).
AVX2 = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 adx"  # this kind of 2-core VM
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"  # Ice Lake / Cascade Lake
SAPPHIRE_RAPIDS = AVX512 + " avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"
ZEN4 = AVX512 + " avx512_bf16 avx512_vbmi2"


def cpuinfo(*flag_lines: str) -> str:
    return "".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n"
        for i, flags in enumerate(flag_lines)
    )


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [(AVX2, "float32"), (AVX512, "float32"), (SAPPHIRE_RAPIDS, "bfloat16"), (ZEN4, "bfloat16"), ("", "float32")],
)
def test_auto_is_bfloat16_only_with_native_bf16(flags: str, dtype: str) -> None:
    parsed = parse_cpu_flags(cpuinfo(flags, flags))
    assert parsed == frozenset(flags.split())
    assert cpu_auto_dtype(parsed) == dtype
    assert native_bf16(parsed) is (dtype == "bfloat16")


def test_a_flag_one_cpu_lacks_does_not_count() -> None:
    assert parse_cpu_flags(cpuinfo(SAPPHIRE_RAPIDS, AVX2)) == frozenset(AVX2.split())
    assert parse_cpu_flags("processor : 0\n") == frozenset()


def test_the_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo(ZEN4))
    assert "avx512_bf16" in read_cpu_flags(str(tmp_path / "cpuinfo"))
    assert read_cpu_flags(str(tmp_path / "missing")) == frozenset()  # no /proc (macOS, Windows): float32


def test_this_machine_agrees_with_torch() -> None:
    """torch's own CPU dispatch level bounds the flags: a CPU torch runs at AVX2 or below has no AVX512 at
    all, so no avx512_bf16 nor AMX (every AMX CPU has AVX512)."""
    flags = read_cpu_flags()
    if Path("/proc/cpuinfo").exists():
        assert "sse2" in flags or "fp" in flags or "asimd" in flags  # the file was read and parsed
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        assert not native_bf16(flags)


@pytest.mark.parametrize(("flags", "dtype"), [(SAPPHIRE_RAPIDS, "bfloat16"), (AVX2, "float32")])
def test_the_services_follow_the_flags(monkeypatch: pytest.MonkeyPatch, flags: str, dtype: str) -> None:
    monkeypatch.setattr(services.common.cpu, "cpu_flags", lambda path="/proc/cpuinfo": frozenset(flags.split()))
    assert resolve_dtype("auto", "cpu") == dtype  # embeddings, rerank, sparse
    assert _torch_dtype("auto", torch.device("cpu"), None) == getattr(torch, dtype)  # generation
    # GPUs and explicit choices are not the flags' business
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("float32", "cpu") == "float32"
    assert _torch_dtype("float32", torch.device("cpu"), None) == torch.float32


COURSE = Path(__file__).resolve().parents[2] / "datasets" / "course" / "course.txt"  # held out: our own text


def test_bfloat16_generation_agrees_with_float32() -> None:
    """Greedy next-token agreement of the packaged SmolLM2 in bfloat16 with float32, loaded as the engine
    loads it, on text it was not trained on (the course set). README: 'bfloat16 on CPU'."""
    from transformers import AutoTokenizer

    from services.generation.weights.quantize import load_causal_lm
    from tests.tiny_models import smollm2_path

    path = smollm2_path()
    ids = AutoTokenizer.from_pretrained(path)(COURSE.read_text()[:2000], return_tensors="pt")["input_ids"][:, :128]
    with torch.inference_mode():
        preds = [load_causal_lm(path, dtype=d)(ids).logits[0].argmax(-1) for d in (torch.float32, torch.bfloat16)]
    agreement = float((preds[0] == preds[1]).float().mean())
    assert agreement >= 0.95, agreement  # 0.98 measured (README)


def test_bfloat16_embeddings_agree_with_float32() -> None:
    """Cosine of MiniLM's bfloat16 vectors to its float32 ones, through the service's encoder."""
    from services.embeddings.engines.dense import DenseEncoder
    from tests.embedding_models import cosine, minilm_path

    f32, bf16 = (DenseEncoder(minilm_path(), dtype=d) for d in ("float32", "bfloat16"))
    batch = f32.tokens.texts([line for line in COURSE.read_text().splitlines() if line][:32], truncate=True)
    cosines = [cosine(a, b) for a, b in zip(f32.embed(batch), bf16.embed(batch), strict=True)]
    assert min(cosines) >= 0.99, min(cosines)
