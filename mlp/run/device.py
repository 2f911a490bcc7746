"""Where and how a run computes: the device (a GPU per worker or parallel trial where there
are several), the precision (bf16 where the hardware has it) and the CPU's name (timings are
only comparable on one kind of machine)."""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from mlp.errors import ConfigError


def local_rank(slot: int | None, env: Mapping[str, str] = os.environ) -> int:
    """Which of this machine's workers or parallel trials this process is: the launcher's local
    rank (torchrun's LOCAL_RANK, SLURM's SLURM_LOCALID), else the trial's slot in its batch."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return slot or 0


def pick_device(name: str, slot: int | None = None, cuda_count: int | None = None) -> torch.device:
    """``auto``: CUDA when there is one; with several GPUs visible, each worker or parallel trial
    on the machine takes its own (rank modulo the GPU count), else the CPU."""
    if name == "auto":
        count = torch.cuda.device_count() if cuda_count is None else cuda_count
        if count == 0:
            return torch.device("cpu")
        return torch.device(f"cuda:{local_rank(slot) % count}" if count > 1 else "cuda")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: MPS is not available on this machine")
    return device


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (timings are only comparable on one kind of machine)."""
    found = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), flags=re.M)
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def native_bf16(device: torch.device, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or an x86
    CPU with AVX512-BF16 or AMX (elsewhere bf16 autocast is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = set(re.findall(r"[a-z0-9_]+", _cpuinfo() if cpu_flags is None else cpu_flags))
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 (2.6x faster epochs at the same test accuracy, benchmarks/epoch_speed.py
    --accuracy) where the hardware has it, else fp32."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return str(name)
