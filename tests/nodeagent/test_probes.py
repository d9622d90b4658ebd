from dataclasses import replace

import pytest

from hopscommon.fleet import GpuSource, InstalledModel, LoadedModel, Snapshot
from nodeagent.agent import Agent, fingerprint
from nodeagent.gpu import GpuProbe, parse_nvidia_smi
from nodeagent.ollama import parse_ps, parse_tags, parse_time
from nodeagent.settings import AgentSettings

MIB = 1024**2


def test_nvidia_smi_rows_are_parsed_in_bytes() -> None:
    text = "0, NVIDIA GeForce RTX 4090, GPU-abc, 24564, 20000\n1, Tesla T4, GPU-def, 15360, 15000\n"
    gpus = parse_nvidia_smi(text)
    assert [(g.index, g.name, g.total_bytes, g.free_bytes) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 4090", 24564 * MIB, 20000 * MIB),
        (1, "Tesla T4", 15360 * MIB, 15000 * MIB),
    ]
    assert parse_nvidia_smi("garbage\n") == ()


async def test_static_gpu_free_memory_is_total_minus_loaded() -> None:
    source, gpus = await GpuProbe("static", 8 * 1024 * MIB, "RTX 4060").probe(3 * 1024 * MIB)
    assert source is GpuSource.STATIC
    assert (gpus[0].name, gpus[0].free_bytes) == ("RTX 4060", 5 * 1024 * MIB)


async def test_no_gpu_mode_reports_none() -> None:
    assert await GpuProbe("none").probe() == (GpuSource.NONE, ())


def test_ollama_listings_are_parsed() -> None:
    tags = parse_tags(
        {
            "models": [
                {
                    "name": "llama3:latest",
                    "model": "llama3:latest",
                    "size": 5,
                    "digest": "d",
                    "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                    "details": {
                        "family": "llama",
                        "families": None,
                        "context_length": 8192,
                        "embedding_length": 4096,
                    },
                    "capabilities": ["completion", "tools"],
                },
                {"name": "old:latest", "details": {"context_length": "n/a"}},  # older: none
            ]
        }
    )
    assert tags[0].name == "llama3:latest" and tags[0].details.family == "llama"
    assert [t.details.context_length for t in tags] == [8192, 0]
    assert (tags[0].details.embedding_length, tags[0].capabilities) == (
        4096,
        ("completion", "tools"),
    )
    assert (tags[1].details.embedding_length, tags[1].capabilities) == (0, ())
    assert tags[0].modified_at == pytest.approx(1746405464.706, abs=0.01)
    ps = parse_ps(
        {
            "models": [
                {
                    "model": "m:latest",
                    "size": 10,
                    "size_vram": 4,
                    "expires_at": "2318-01-01T00:00:00Z",
                    "context_length": 4096,
                }
            ]
        }
    )
    assert (ps[0].size_vram_bytes, ps[0].context_length) == (4, 4096)
    assert parse_tags({"models": None}) == () and parse_time("not a time") == 0.0


@pytest.mark.parametrize("bad", ["big", -1, 2**70, [1], {"n": 1}, True])
def test_a_listing_with_values_of_the_wrong_kind_reads_them_as_unknown(bad: object) -> None:
    """Ollama's listings are data: a size, length or capability list that is not one reads as
    unknown (0, none) rather than raising, which stopped the agent's polls."""
    wrong = {"size": bad, "size_vram": bad, "context_length": bad, "capabilities": bad}
    (tag,) = parse_tags({"models": [{"model": "m:latest", **wrong}]})
    assert (tag.size_bytes, tag.capabilities) == (0, ())
    (loaded,) = parse_ps({"models": [{"model": "m:latest", **wrong}]})
    assert (loaded.size_bytes, loaded.size_vram_bytes) == (0, 0)
    assert loaded.context_length == (2**32 - 1 if bad == 2**70 else 0)  # a uint32: at most


def test_fingerprint_ignores_expiry_jitter_but_not_real_changes() -> None:
    base = Snapshot(
        ollama_healthy=True,
        loaded=(LoadedModel(name="m:latest", size_vram_bytes=1, expires_at=1000.0),),
    )
    jitter = replace(base, loaded=(replace(base.loaded[0], expires_at=1001.0),), taken_at=5.0)
    assert fingerprint(base) == fingerprint(jitter)
    assert fingerprint(base) != fingerprint(replace(base, loaded=()))
    assert fingerprint(base) != fingerprint(replace(base, ollama_healthy=False))
    unread = replace(base, installed=(InstalledModel(name="m:latest", digest="d"),))
    read = replace(unread, installed=(replace(unread.installed[0], runner_id="r"),))
    assert fingerprint(unread) != fingerprint(read)  # a runner read later is news


def test_static_gpu_needs_a_size() -> None:
    with pytest.raises(ValueError, match="--gpu-memory"):
        AgentSettings(gpu="static").validate()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("num_parallel", 0, "--num-parallel"),
        ("num_parallel", 2**32, "--num-parallel"),
        ("max_queue", -1, "--max-queue"),
        ("max_loaded_models", -1, "--max-loaded-models"),
        ("max_in_flight", 2**32, "--max-in-flight"),
        ("context_length", -4096, "--context-length"),
    ],
)
def test_capacity_the_hello_cannot_carry_is_refused_at_start(
    field: str, value: int, flag: str
) -> None:
    # Each is a uint32 on the wire: out of range, building the hello raised a bare ValueError
    # traceback instead of a usage error naming the flag.
    with pytest.raises(ValueError, match=flag):
        AgentSettings(**{field: value}).validate()  # type: ignore[arg-type]


def test_the_declared_context_length_goes_out_in_the_hello() -> None:
    agent = Agent(AgentSettings(context_length=32768, num_parallel=2))
    assert agent.hello.capacity.context_length == 32768
    assert agent.hello_pb.capacity.context_length == 32768
    assert agent.hello_pb.capacity.num_parallel == 2
