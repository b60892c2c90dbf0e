"""What machine a benchmark ran on: the CPU model and the instruction-set flags that pick kernels."""

import os

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; ("unknown CPU", empty) where it cannot be read."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_line() -> str:
    """'model, N logical CPUs; flags: avx2 avx512f ...' (only the flags in :data:`FLAGS`)."""
    model, flags = cpu_flags()
    shown = " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)
    return f"{model}, {os.cpu_count()} logical CPUs; flags: {shown}"
