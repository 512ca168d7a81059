"""The accelerators the toolkit knows: peak dense bf16 FLOP/s (MFU's denominator) and, for planning, memory per
device, default compute dtype and attention kernel. One table each, read by the benchmark, the training loop's MFU,
the memory planner and ``sweep plan --device``."""

from __future__ import annotations

GB = 1e9

# Peak dense bf16 FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


# device: (memory in bytes, default compute dtype bytes, attention kernel)
DEVICES: dict[str, tuple[float, int, str]] = {
    "h100": (80 * GB, 2, "fused"),
    "h200": (141 * GB, 2, "fused"),
    "a100": (80 * GB, 2, "fused"),
    "a100-40": (40 * GB, 2, "fused"),
    "tpu-v4": (32 * GB, 2, "materialised"),
    "tpu-v5e": (16 * GB, 2, "materialised"),
    "tpu-v5p": (95 * GB, 2, "materialised"),
    "cpu": (0.0, 4, "materialised"),  # memory: this host's RAM
}


def with_cpu_devices(env, n: int) -> dict:
    """A copy of the environment ``env`` in which JAX's CPU backend shows ``n`` devices: any device count already in
    ``XLA_FLAGS`` is replaced, the other flags are kept."""
    import re

    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    return dict(env, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={n}".strip())
