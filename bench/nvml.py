"""NVML's view of a GPU (device memory in use, board power): "n/a" wherever there is no driver.

The CUDA allocator's peak says what PyTorch asked for; NVML says what the device actually has in
use (allocator cache, CUDA context, other processes included) and what the board draws. Without
an NVIDIA driver ``nvmlInit`` raises (NVMLError_LibraryNotFound); these readings then say "n/a"
and nothing else changes.
"""

from __future__ import annotations

import torch

NA = "n/a"


def readings(device: torch.device) -> dict[str, float | str]:
    """Device memory used (MiB) and power draw (W) of ``device`` now; "n/a" when unavailable."""
    out: dict[str, float | str] = {"nvml_memory_used_mb": NA, "nvml_power_w": NA}
    if device.type != "cuda":
        return out
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: NVML simply is not there
        return out
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        out["nvml_memory_used_mb"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        out["nvml_power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3  # mW -> W
    except Exception:  # a reading this board does not support stays "n/a"
        pass
    finally:
        pynvml.nvmlShutdown()
    return out
