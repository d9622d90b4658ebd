"""GPU memory probes: NVML (nvidia-ml-py), else ``nvidia-smi`` output, else no GPU.

NVML calls block, so they run in a worker thread; nvidia-smi runs as a subprocess with a timeout.
A probe that fails once in ``auto`` mode is not retried every poll.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import replace
from typing import Any

from hopscommon.fleet import Gpu, GpuSource

log = logging.getLogger("hops.nodeagent")
MIB = 1024**2
SMI_QUERY = "--query-gpu=index,name,uuid,memory.total,memory.free"


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """Rows of ``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` (MiB)."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            gpus.append(
                Gpu(
                    int(parts[0]),
                    parts[1],
                    parts[2],
                    int(float(parts[3]) * MIB),
                    int(float(parts[4]) * MIB),
                )
            )
        except ValueError:
            log.warning("unparsable nvidia-smi line: %r", line)
    return tuple(gpus)


def _nvml_read(pynvml: Any) -> tuple[Gpu, ...]:
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        gpus.append(
            Gpu(
                index,
                name.decode() if isinstance(name, bytes) else str(name),
                uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                int(memory.total),
                int(memory.free),
            )
        )
    return tuple(gpus)


class GpuProbe:
    """``probe(loaded_vram)`` -> (source, GPUs); ``loaded_vram`` is what Ollama says it holds, the
    only measure of use for a statically declared GPU."""

    def __init__(self, mode: str, static_memory: int = 0, static_name: str = "") -> None:
        self.mode = mode
        self.static = Gpu(0, static_name or "declared GPU", "", static_memory, static_memory)
        self._nvml: Any = None
        self._nvml_failed = mode not in ("auto", "nvml")
        self._smi_failed = mode not in ("auto", "nvidia-smi")

    async def probe(self, loaded_vram: int = 0) -> tuple[GpuSource, tuple[Gpu, ...]]:
        if self.mode == "static":
            free = max(self.static.total_bytes - loaded_vram, 0)
            return GpuSource.STATIC, (replace(self.static, free_bytes=free),)
        if not self._nvml_failed:
            try:
                return GpuSource.NVML, await asyncio.to_thread(self._nvml_probe)
            except Exception as exc:  # noqa: BLE001 - pynvml raises its own NVMLError tree
                log.info("NVML unavailable (%s); trying nvidia-smi", exc)
                self._nvml_failed = True
        if not self._smi_failed:
            gpus = await self._smi_probe()
            if gpus is not None:
                return GpuSource.NVIDIA_SMI, gpus
            self._smi_failed = True
        return GpuSource.NONE, ()

    def _nvml_probe(self) -> tuple[Gpu, ...]:
        if self._nvml is None:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        return _nvml_read(self._nvml)

    async def _smi_probe(self) -> tuple[Gpu, ...] | None:
        binary = shutil.which("nvidia-smi")
        if binary is None:
            return None
        proc = await asyncio.create_subprocess_exec(
            binary,
            SMI_QUERY,
            "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 5.0)
        except TimeoutError:
            proc.kill()
            return None
        return parse_nvidia_smi(out.decode()) if proc.returncode == 0 else None
