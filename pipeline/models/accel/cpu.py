"""What the CPU can do fast: native bf16 matrix units (AVX-512 BF16 or AMX), read once per process."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

# /proc/cpuinfo flags of x86 CPUs that multiply bf16 matrices natively (oneDNN uses them for bf16 GEMMs and
# convolutions); without them torch emulates bf16 through fp32 and it is slower than fp32.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first processor in `/proc/cpuinfo` (or the given text); empty elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_flags(flags: frozenset[str]) -> bool:
    return bool(flags & BF16_FLAGS)


@functools.cache
def has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively: AVX-512 BF16 / AMX in its flags, or (where there is no
    /proc/cpuinfo) oneDNN saying it supports bf16 on this CPU."""
    flags = cpu_flags()
    if flags:
        return native_bf16_flags(flags)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # noqa: BLE001 - an old torch without the probe: be conservative
        return False


def describe() -> str:
    """One log line's worth: the ISA torch dispatches to and whether bf16 is native."""
    cap = torch.backends.cpu.get_cpu_capability()
    return f"CPU {cap}, native bf16 {'yes' if has_native_bf16() else 'no'}, {torch.get_num_threads()} threads"
