"""What this CPU computes natively: the `auto` dtype of the models on CPU.

bfloat16 is only a gain where the CPU has bf16 arithmetic (AMX-BF16 tiles or AVX512-BF16
dot products, Intel since Sapphire Rapids / Cooper Lake, AMD since Zen 4): there a prefill
runs about 3x faster than in float32. Elsewhere (AVX2, plain AVX512) torch emulates bf16 matmuls by
converting around them: on an AVX2 CPU a prefill measured 4.6x slower than in float32 (a decode step,
which mostly reads the weights, 1.24x faster), so `auto` stays float32. The flags are read, not
guessed from the CPU's name or torch's build: Linux lists them in /proc/cpuinfo; where that file is
missing (macOS, Windows) `auto` means float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

# The /proc/cpuinfo flags of native bf16 arithmetic (x86).
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags every CPU of a /proc/cpuinfo text lists (a flag one core lacks does not count)."""
    per_cpu = [frozenset(line.partition(":")[2].split()) for line in cpuinfo.splitlines() if line.startswith("flags")]
    return frozenset.intersection(*per_cpu) if per_cpu else frozenset()


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        return parse_cpu_flags(Path(path).read_text(errors="replace"))
    except OSError:
        return frozenset()


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU (these flags; default: this machine's) has native bf16 arithmetic."""
    return bool(BF16_FLAGS & frozenset(cpu_flags() if flags is None else flags))


def cpu_auto_dtype(flags: Iterable[str] | None = None) -> str:
    """`auto` on CPU: bfloat16 where the CPU computes it natively, else float32."""
    return "bfloat16" if native_bf16(flags) else "float32"
