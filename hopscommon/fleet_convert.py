"""hops.v1 fleet messages to and from hopscommon.fleet values: the one protobuf boundary for what
a node is and has, used by the agent (building), the control plane and the edge (reading)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hops.v1 import agent_pb2, fleet_pb2

from hopscommon import runner_options
from hopscommon.fleet import (
    Capacity,
    Details,
    Gpu,
    GpuSource,
    Hello,
    InstalledModel,
    LoadedModel,
    Snapshot,
)


def ts(epoch: float) -> Timestamp:
    stamp = Timestamp()
    if epoch > 0:
        stamp.FromNanoseconds(int(epoch * 1e9))
    return stamp


def from_ts(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def details(d: fleet_pb2.ModelDetails) -> Details:
    return Details(
        family=d.family,
        parameter_size=d.parameter_size,
        quantization_level=d.quantization_level,
        format=d.format,
        families=tuple(d.families),
        parent_model=d.parent_model,
        context_length=d.context_length,
        embedding_length=d.embedding_length,
    )


def details_pb(d: Details) -> fleet_pb2.ModelDetails:
    return fleet_pb2.ModelDetails(
        family=d.family,
        parameter_size=d.parameter_size,
        quantization_level=d.quantization_level,
        format=d.format,
        families=list(d.families),
        parent_model=d.parent_model,
        context_length=d.context_length,
        embedding_length=d.embedding_length,
    )


def installed(m: fleet_pb2.InstalledModel) -> InstalledModel:
    return InstalledModel(
        name=m.name,
        digest=m.digest,
        size_bytes=m.size_bytes,
        modified_at=from_ts(m.modified_at),
        details=details(m.details),
        capabilities=tuple(m.capabilities),
        runner_id=m.runner_id,
        num_ctx=m.num_ctx,
        runner_options=runner_options.from_map(dict(m.runner_options)),
        adapters_id=m.adapters_id,
    )


def installed_pb(m: InstalledModel) -> fleet_pb2.InstalledModel:
    return fleet_pb2.InstalledModel(
        name=m.name,
        digest=m.digest,
        size_bytes=m.size_bytes,
        modified_at=ts(m.modified_at),
        details=details_pb(m.details),
        capabilities=list(m.capabilities),
        runner_id=m.runner_id,
        num_ctx=m.num_ctx,
        runner_options=dict(m.runner_options),
        adapters_id=m.adapters_id,
    )


def loaded(m: fleet_pb2.LoadedModel) -> LoadedModel:
    return LoadedModel(
        name=m.name,
        digest=m.digest,
        size_bytes=m.size_bytes,
        size_vram_bytes=m.size_vram_bytes,
        expires_at=from_ts(m.expires_at),
        context_length=m.context_length,
        details=details(m.details),
    )


def loaded_pb(m: LoadedModel) -> fleet_pb2.LoadedModel:
    return fleet_pb2.LoadedModel(
        name=m.name,
        digest=m.digest,
        size_bytes=m.size_bytes,
        size_vram_bytes=m.size_vram_bytes,
        expires_at=ts(m.expires_at),
        context_length=m.context_length,
        details=details_pb(m.details),
    )


def _gpu_source(value: int) -> GpuSource:
    """An enum value this side does not know (an agent built from a newer contract: proto
    enums are open) reads as unspecified."""
    try:
        return GpuSource(value)
    except ValueError:
        return GpuSource.UNSPECIFIED


def snapshot(
    msg: fleet_pb2.NodeSnapshot, same_installed: tuple[InstalledModel, ...] | None = None
) -> Snapshot:
    """``same_installed``: the converted ``installed`` of an earlier message known to list the
    very same models (the usual case: agents resend what is installed in every snapshot)."""
    return Snapshot(
        sequence=msg.sequence,
        taken_at=from_ts(msg.taken_at),
        ollama_healthy=msg.ollama_healthy,
        ollama_error=msg.ollama_error,
        ollama_version=msg.ollama_version,
        installed=(
            tuple(installed(m) for m in msg.installed) if same_installed is None else same_installed
        ),
        loaded=tuple(loaded(m) for m in msg.loaded),
        gpus=tuple(Gpu(g.index, g.name, g.uuid, g.total_bytes, g.free_bytes) for g in msg.gpus),
        gpu_source=_gpu_source(msg.gpu_source),
        system_memory_total_bytes=msg.system_memory_total_bytes,
        system_memory_free_bytes=msg.system_memory_free_bytes,
    )


def snapshot_pb(s: Snapshot) -> fleet_pb2.NodeSnapshot:
    return fleet_pb2.NodeSnapshot(
        sequence=s.sequence,
        taken_at=ts(s.taken_at),
        ollama_healthy=s.ollama_healthy,
        ollama_error=s.ollama_error,
        ollama_version=s.ollama_version,
        installed=[installed_pb(m) for m in s.installed],
        loaded=[loaded_pb(m) for m in s.loaded],
        gpus=[
            fleet_pb2.Gpu(
                index=g.index,
                name=g.name,
                uuid=g.uuid,
                total_bytes=g.total_bytes,
                free_bytes=g.free_bytes,
            )
            for g in s.gpus
        ],
        gpu_source=fleet_pb2.GpuSource.ValueType(s.gpu_source.value),
        system_memory_total_bytes=s.system_memory_total_bytes,
        system_memory_free_bytes=s.system_memory_free_bytes,
    )


def capacity_pb(c: Capacity) -> fleet_pb2.NodeCapacity:
    return fleet_pb2.NodeCapacity(
        num_parallel=c.num_parallel,
        max_loaded_models=c.max_loaded_models,
        max_queue=c.max_queue,
        max_in_flight=c.max_in_flight,
        context_length=c.context_length,
    )


def hello(msg: agent_pb2.Hello) -> Hello:
    cap = msg.capacity
    return Hello(
        node_id=msg.node_id.strip(),
        ollama_url=msg.ollama_url.strip(),
        labels=tuple(sorted(msg.labels.items())),
        capacity=Capacity(
            num_parallel=cap.num_parallel or 1,
            max_loaded_models=cap.max_loaded_models,
            max_queue=cap.max_queue or 512,
            max_in_flight=cap.max_in_flight,
            context_length=cap.context_length,
        ),
        instance_id=msg.instance_id,
        hostname=msg.hostname,
        agent_version=msg.agent_version,
        weight=msg.weight if msg.weight > 0 else 1.0,
    )


def hello_pb(h: Hello) -> agent_pb2.Hello:
    return agent_pb2.Hello(
        node_id=h.node_id,
        ollama_url=h.ollama_url,
        labels=dict(h.labels),
        capacity=capacity_pb(h.capacity),
        instance_id=h.instance_id,
        hostname=h.hostname,
        agent_version=h.agent_version,
        weight=h.weight,
    )
