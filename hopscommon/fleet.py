"""What a node is and has, as plain frozen values shared by the agent, the control plane and the
edge; hopscommon.fleet_convert is the only place they meet protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hopscommon.runner_options import RunnerOptions, with_adapters


@dataclass(frozen=True, slots=True)
class Details:
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = ""
    families: tuple[str, ...] = ()
    parent_model: str = ""
    context_length: int = 0  # trained; 0 = not reported
    embedding_length: int = 0  # 0 = not reported


@dataclass(frozen=True, slots=True)
class InstalledModel:
    name: str
    digest: str = ""
    size_bytes: int = 0
    modified_at: float = 0.0
    details: Details = field(default_factory=Details)
    capabilities: tuple[str, ...] = ()
    runner_id: str = ""  # models of one node with the same non-empty one share a runner
    num_ctx: int = 0  # the context length its modelfile sets, 0 = none
    runner_options: RunnerOptions = ()  # the runner options its modelfile sets
    adapters_id: str = ""  # its adapters and projectors: a runner loaded with others reloads

    @property
    def modelfile_options(self) -> RunnerOptions:
        """The runner options its modelfile loads it with: its PARAMETERs and adapters."""
        return with_adapters(self.runner_options, self.adapters_id)


# Architectures Ollama runs with one parallel slot whatever OLLAMA_NUM_PARALLEL says (sched.go
# load(); nemotron_h* too, by prefix).
ONE_SLOT_FAMILIES = frozenset(
    {"mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe"}
)


def embeds_only(capabilities: tuple[str, ...], family: str) -> bool:
    """Whether a model only embeds (its requests have no reply to decode): by its capabilities,
    listed since Ollama 0.30; before that, a BERT family says so."""
    if capabilities:
        return "embedding" in capabilities and "completion" not in capabilities
    return family.endswith("bert")


def runs_one_at_a_time(capabilities: tuple[str, ...], family: str) -> bool:
    """Whether Ollama gives a model one parallel slot: embedding-only models and the
    architectures above. Its requests beyond the first wait inside Ollama."""
    return (
        embeds_only(capabilities, family)
        or family in ONE_SLOT_FAMILIES
        or family.startswith("nemotron_h")
    )


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    digest: str = ""
    size_bytes: int = 0
    size_vram_bytes: int = 0
    expires_at: float = 0.0
    context_length: int = 0
    details: Details = field(default_factory=Details)


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str = ""
    uuid: str = ""
    total_bytes: int = 0
    free_bytes: int = 0


class GpuSource(Enum):
    UNSPECIFIED = 0
    NVML = 1
    NVIDIA_SMI = 2
    NONE = 3
    STATIC = 4


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What an agent last told us about its node."""

    sequence: int = 0
    taken_at: float = 0.0
    ollama_healthy: bool = False
    ollama_error: str = ""
    ollama_version: str = ""
    installed: tuple[InstalledModel, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()
    gpus: tuple[Gpu, ...] = ()
    gpu_source: GpuSource = GpuSource.UNSPECIFIED
    system_memory_total_bytes: int = 0
    system_memory_free_bytes: int = 0

    @property
    def vram_total(self) -> int:
        return sum(g.total_bytes for g in self.gpus)

    @property
    def vram_free(self) -> int:
        return sum(g.free_bytes for g in self.gpus)


@dataclass(frozen=True, slots=True)
class Capacity:
    num_parallel: int = 1
    max_loaded_models: int = 0
    max_queue: int = 512
    max_in_flight: int = 0
    # OLLAMA_CONTEXT_LENGTH as declared for the host (0 = not set, or not declared)
    context_length: int = 0


@dataclass(frozen=True, slots=True)
class Hello:
    node_id: str
    ollama_url: str
    labels: tuple[tuple[str, str], ...] = ()
    capacity: Capacity = field(default_factory=Capacity)
    instance_id: str = ""
    hostname: str = ""
    agent_version: str = ""
    weight: float = 1.0
    # Headers requests to this host must carry (hosts polled without an agent only).
    upstream_headers: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)
