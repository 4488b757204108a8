"""How much memory a device has left, and a check that a planned allocation fits before it is made.

XLA reports an allocation that does not fit as a RESOURCE_EXHAUSTED traceback from deep inside a
compiled call; sizes computed from shapes can be checked up front and refused in one sentence.
"""
from __future__ import annotations

import os

import jax

from svlm_jax.errors import ConfigError


def _host_available() -> int | None:
    """MemAvailable of this machine in bytes (Linux), else free physical pages, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Bytes `device` (default: the first) can still allocate: its allocator's limit minus what is in use
    on an accelerator, the host's available memory on CPU; None when the platform does not say."""
    device = device if device is not None else jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if device.platform == "cpu":
        return _host_available()
    return None


def check_fits(nbytes: int, what: str, hint: str, device: jax.Device | None = None) -> None:
    """Raise ConfigError when `nbytes` exceed what `device` has left. `what` names the allocation
    ("The streaming cache for ..."), `hint` says which setting to lower."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        device = device if device is not None else jax.devices()[0]
        raise ConfigError(f"{what} needs {nbytes / 2**30:.2f} GiB but {device.platform}:{device.id} has "
                          f"{free / 2**30:.2f} GiB free; {hint}")
