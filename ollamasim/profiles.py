"""Named host profiles: the unlike machines of a home fleet, each with its memory, speed and models.

Speeds follow the rule of thumb that decoding is memory-bandwidth bound: tokens/s is about the
bandwidth the weights are read at, divided by their size. Prompt evaluation is compute bound and
runs many times faster than decoding on a GPU, a few times faster on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
GB = 1000**3


@dataclass(frozen=True, slots=True)
class Profile:
    """What kind of machine a simulated host is."""

    name: str
    gpu_name: str
    vram_bytes: int
    ram_bytes: int
    memory_bandwidth_gbs: float
    cpu_bandwidth_gbs: float
    load_speed_bytes_per_s: float
    prompt_speedup: float
    models: tuple[str, ...]

    @property
    def has_gpu(self) -> bool:
        return self.vram_bytes > 0


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="gpu-24g",
            gpu_name="NVIDIA GeForce RTX 4090",
            vram_bytes=24 * GIB,
            ram_bytes=64 * GIB,
            memory_bandwidth_gbs=1000.0,
            cpu_bandwidth_gbs=80.0,
            load_speed_bytes_per_s=3.5 * GB,
            prompt_speedup=25.0,
            models=(
                "llama3.2:latest",
                "llama3.1:8b",
                "qwen2.5:7b",
                "qwen2.5:14b",
                "qwen2.5:32b",
                "gemma3:27b",
                "nomic-embed-text:latest",
            ),
        ),
        Profile(
            name="gpu-12g",
            gpu_name="NVIDIA GeForce RTX 3060",
            vram_bytes=12 * GIB,
            ram_bytes=32 * GIB,
            memory_bandwidth_gbs=360.0,
            cpu_bandwidth_gbs=50.0,
            load_speed_bytes_per_s=2.0 * GB,
            prompt_speedup=20.0,
            models=(
                "llama3.2:latest",
                "llama3.1:8b",
                "qwen2.5:7b",
                "qwen2.5:14b",
                "nomic-embed-text:latest",
            ),
        ),
        Profile(
            name="gpu-8g",
            gpu_name="NVIDIA GeForce RTX 4060 Laptop GPU",
            vram_bytes=8 * GIB,
            ram_bytes=16 * GIB,
            memory_bandwidth_gbs=256.0,
            cpu_bandwidth_gbs=40.0,
            load_speed_bytes_per_s=1.5 * GB,
            prompt_speedup=15.0,
            models=("llama3.2:latest", "llama3.1:8b", "qwen2.5:7b", "nomic-embed-text:latest"),
        ),
        Profile(
            name="cpu",
            gpu_name="",
            vram_bytes=0,
            ram_bytes=32 * GIB,
            memory_bandwidth_gbs=60.0,
            cpu_bandwidth_gbs=60.0,
            load_speed_bytes_per_s=1.0 * GB,
            prompt_speedup=4.0,
            models=(
                "llama3.2:1b",
                "llama3.2:latest",
                "qwen2.5:0.5b",
                "nomic-embed-text:latest",
                "all-minilm:latest",
            ),
        ),
    )
}


def decode_tokens_per_s(profile: Profile, size_bytes: int, vram_fraction: float) -> float:
    """Single-stream decode speed of a model of ``size_bytes`` with ``vram_fraction`` on the GPU."""
    size_gb = max(size_bytes / GB, 0.05)
    gpu_tps = min(profile.memory_bandwidth_gbs * 0.6 / size_gb, 400.0)
    cpu_tps = min(profile.cpu_bandwidth_gbs * 0.6 / size_gb, 200.0)
    if vram_fraction >= 1.0:
        return gpu_tps
    if vram_fraction <= 0.0:
        return cpu_tps
    # Each token reads the GPU part at GPU speed and the rest at CPU speed.
    return 1.0 / (vram_fraction / gpu_tps + (1.0 - vram_fraction) / cpu_tps)
