import asyncio
from dataclasses import replace

from controlplane.admission import Admission
from controlplane.model import ApiKind, GenerationStats, Outcome, Report, RouteRequest
from controlplane.router import PickOutcome, PickStatus
from tests.controlplane import builders


def _setup(max_wait: float = 2.0, per_model: int = 8) -> Admission:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=["m:latest", "n:latest"], max_in_flight=1)
    admission = Admission(builders.router(fleet), max_wait=max_wait, per_model=per_model)
    fleet.leases.on_release = admission.on_release
    return admission


def _req(model: str = "m") -> RouteRequest:
    return RouteRequest(model=model, edge_id="e")


async def test_a_saturated_request_waits_for_a_slot_and_says_so() -> None:
    admission = _setup()
    first = await admission.pick(_req())
    waiting = asyncio.create_task(admission.pick(_req()))
    await asyncio.sleep(0.05)
    assert not waiting.done() and admission.waiting["m:latest"] == 1
    admission.router.fleet.leases.close(first.lease_id)
    second = await asyncio.wait_for(waiting, 1.0)
    assert second.status is PickStatus.OK
    assert second.ranked[0].reason.startswith("queued ")
    assert admission.waiting == {}


async def test_the_wait_is_bounded_in_time_and_in_length() -> None:
    admission = _setup(max_wait=0.1, per_model=1)
    await admission.pick(_req())
    timed_out, refused = await asyncio.gather(admission.pick(_req()), _second_in_line(admission))
    assert timed_out.status is PickStatus.SATURATED and timed_out.retry_after_s > 0
    assert refused.status is PickStatus.SATURATED and "queue is full" in refused.message
    assert admission.waiting == {} and not admission.queue


async def test_a_show_never_waits_in_line() -> None:
    """Ollama answers /api/show from disk, outside its scheduler: a show is answered at once
    while a host's slots are full and others wait for the model, even with their line full."""
    admission = _setup(per_model=1)
    await admission.pick(_req())
    waiting = asyncio.create_task(admission.pick(_req()))
    for _ in range(100):
        if admission.waiting:
            break
        await asyncio.sleep(0)
    assert admission.waiting["m:latest"] == 1
    assert (await admission.pick(_req())).status is PickStatus.SATURATED  # the line is full
    shown = await admission.pick(RouteRequest(model="m", edge_id="e", api=ApiKind.SHOW))
    assert shown.status is PickStatus.OK and shown.ranked[0].candidate.node_id == "a"
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await admission.close()


async def _second_in_line(admission: Admission):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.02)
    return await admission.pick(_req())


async def test_waiters_are_woken_oldest_first_across_models() -> None:
    admission = _setup()
    held = await admission.pick(_req("m"))
    older = asyncio.create_task(admission.pick(_req("n")))
    await asyncio.sleep(0.02)
    newer = asyncio.create_task(admission.pick(_req("m")))
    await asyncio.sleep(0.02)
    admission.router.fleet.leases.close(held.lease_id)
    done, _ = await asyncio.wait({older, newer}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
    assert done == {older}
    admission.router.fleet.leases.close(older.result().lease_id)
    assert (await asyncio.wait_for(newer, 1.0)).status is PickStatus.OK


async def test_a_newcomer_queues_behind_those_already_waiting() -> None:
    admission = _setup()
    held = await admission.pick(_req())
    waiting = asyncio.create_task(admission.pick(_req()))
    await asyncio.sleep(0.02)
    admission.router.fleet.leases.close(held.lease_id)  # frees the slot, wakes the waiter...
    newcomer = asyncio.create_task(admission.pick(_req()))  # ...and this one comes first
    done, _ = await asyncio.wait(
        {waiting, newcomer}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
    )
    assert done == {waiting} and waiting.result().status is PickStatus.OK
    admission.router.fleet.leases.close(waiting.result().lease_id)
    assert (await asyncio.wait_for(newcomer, 1.0)).status is PickStatus.OK
    await admission.close()


async def test_capacity_that_appears_without_a_release_is_used() -> None:
    admission = _setup(max_wait=5.0)
    await admission.pick(_req())
    waiting = asyncio.create_task(admission.pick(_req()))
    await asyncio.sleep(0.02)
    builders.add_node(admission.router.fleet, "b", models=["m:latest"], max_in_flight=1)
    placed = await asyncio.wait_for(waiting, 1.0)  # a tick, not the 5 s wait
    assert placed.status is PickStatus.OK and placed.ranked[0].candidate.node_id == "b"
    await admission.close()


def test_default_cap_is_parallel_slots_times_queue_per_slot() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", num_parallel=2)
    router = builders.router(fleet)
    router.queue_per_slot = 2
    statuses = [router.pick(_req("llama3.2")).status for _ in range(5)]
    assert statuses == [PickStatus.OK] * 4 + [PickStatus.SATURATED]


async def test_a_full_line_refuses_a_newcomer_without_ranking_hosts() -> None:
    # Under overload, ranking each newcomer against a full fleet only to refuse it cost more
    # than the picks that were served (bench/controlplane.py at 1.5x its capacity).
    admission = _setup(max_wait=5.0, per_model=1)
    first = await admission.pick(_req())
    waiting = asyncio.create_task(admission.pick(_req()))
    for _ in range(100):
        if admission.waiting["m:latest"] == 1:
            break
        await asyncio.sleep(0.01)
    decided = admission.router.recent  # every pick the router ranks is recorded here
    before = len(decided)
    refused = await asyncio.wait_for(admission.pick(_req()), 1.0)
    assert refused.status is PickStatus.SATURATED and "queue is full" in refused.message
    assert refused.retry_after_s > 0 and len(decided) == before
    other = asyncio.create_task(admission.pick(_req("n")))  # another model's line: not full
    for _ in range(100):
        if admission.waiting["n:latest"] == 1:
            break
        await asyncio.sleep(0.01)
    assert len(decided) == before + 1 and decided[-1].model == "n"
    admission.router.fleet.leases.close(first.lease_id)
    assert (await asyncio.wait_for(waiting, 1.0)).status is PickStatus.OK
    other.cancel()


def _gpu_and_cpu(max_wait: float) -> Admission:
    """A GPU host at its cap of one request and a free CPU host, both with the model loaded
    and their speeds measured: prompts at 2,000 and 50 tokens/s, 100-token replies in 2 and 4 s."""
    fleet = builders.fleet()
    builders.add_node(fleet, "gpu", models=["m:latest"], loaded=["m:latest"], max_in_flight=1)
    builders.add_node(fleet, "cpu", models=["m:latest"], loaded=["m:latest"], vram_gb=0)
    router = builders.router(fleet, "memory_aware")
    for node_id, prompt_tps, decode_s in (("gpu", 2000, 2), ("cpu", 50, 4)):
        lease = router.pick(RouteRequest(model="m", edge_id="e", node_id=node_id)).lease_id
        stats = GenerationStats(
            prompt_eval_count=1000,
            prompt_eval_duration_ns=10**9 * 1000 // prompt_tps,
            eval_count=100,
            eval_duration_ns=decode_s * 10**9,
        )
        router.report(Report(lease, node_id, Outcome.OK, stats=stats))
    admission = Admission(router, max_wait=max_wait, per_model=8)
    fleet.leases.on_release = admission.on_release
    return admission


def _asking(tokens: int) -> RouteRequest:
    return RouteRequest(model="m", edge_id="e", prompt_tokens=tokens)


async def _held_until_freed(admission: Admission, busy: str, request: RouteRequest) -> PickOutcome:
    """``request`` waits in admission while lease ``busy`` holds the host it wants, and is
    served once that lease closes."""
    waiting = asyncio.create_task(admission.pick(request))
    await asyncio.sleep(0.05)
    assert not waiting.done() and admission.waiting["m:latest"] == 1
    admission.router.fleet.leases.close(busy)
    return await asyncio.wait_for(waiting, 1.0)


async def test_a_long_prompt_waits_for_the_busy_gpu_rather_than_take_the_free_cpu() -> None:
    admission = _gpu_and_cpu(max_wait=2.0)
    router = admission.router
    busy = router.pick(RouteRequest(model="m", edge_id="e", node_id="gpu"))
    # Without admission to wait in, the CPU serves it: 80 s of prompt, but no 503.
    slow = router.pick(_asking(4000))
    assert slow.ranked[0].candidate.node_id == "cpu"
    router.fleet.leases.close(slow.lease_id)
    held = router.pick(_asking(4000), may_wait=True)
    assert held.status is PickStatus.SATURATED
    assert held.message == "the hosts free now would serve this much later than a busy one"
    assert router.recent[-1].status == "waiting_for_better"  # not the fleet at its cap
    # 1 s of prompt on the CPU: no reason to wait.
    short = await asyncio.wait_for(admission.pick(_asking(50)), 0.5)
    assert short.ranked[0].candidate.node_id == "cpu"
    assert short.ranked[0].reason == "warm"
    router.fleet.leases.close(short.lease_id)
    served = await _held_until_freed(admission, busy.lease_id, _asking(4000))
    assert served.ranked[0].candidate.node_id == "gpu"
    assert served.ranked[0].reason.startswith("queued ")
    await admission.close()


async def test_a_request_waiting_for_a_better_host_takes_a_free_one_when_time_is_up() -> None:
    admission = _gpu_and_cpu(max_wait=0.1)
    admission.router.pick(RouteRequest(model="m", edge_id="e", node_id="gpu"))
    late = await asyncio.wait_for(admission.pick(_asking(4000)), 1.0)
    assert late.status is PickStatus.OK and late.ranked[0].candidate.node_id == "cpu"
    assert late.ranked[0].reason.startswith("queued ")
    await admission.close()


async def test_with_the_line_full_a_request_waiting_for_a_better_host_takes_a_free_one() -> None:
    admission = _gpu_and_cpu(max_wait=2.0)
    admission.per_model = 1
    admission.router.pick(RouteRequest(model="m", edge_id="e", node_id="gpu"))
    first = asyncio.create_task(admission.pick(_asking(4000)))
    await asyncio.sleep(0.05)
    assert admission.waiting["m:latest"] == 1  # waiting for the GPU host
    second = await asyncio.wait_for(admission.pick(_asking(4000)), 0.5)
    assert second.status is PickStatus.OK and second.ranked[0].candidate.node_id == "cpu"
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await admission.close()


def _long_and_short_context() -> Admission:
    """The model loaded at 32768 on "big", at its cap of one request, and at 4096 on the free
    "small"."""
    fleet = builders.fleet()
    for node_id, context, cap in (("big", 32768, 1), ("small", 4096, 0)):
        node = builders.add_node(
            fleet, node_id, models=["m:latest"], loaded=["m:latest"], max_in_flight=cap
        )
        listed = replace(node.snapshot.loaded[0], context_length=context)
        fleet.update(node_id, node.session, replace(node.snapshot, sequence=2, loaded=(listed,)))
    admission = Admission(builders.router(fleet, "memory_aware"), max_wait=2.0, per_model=8)
    fleet.leases.on_release = admission.on_release
    return admission


async def test_a_prompt_the_free_host_would_cut_waits_for_the_busy_one_that_holds_it() -> None:
    admission = _long_and_short_context()
    router = admission.router
    busy = router.pick(RouteRequest(model="m", edge_id="e", node_id="big"))
    short = await asyncio.wait_for(admission.pick(_asking(100)), 0.5)
    assert short.ranked[0].candidate.node_id == "small"
    router.fleet.leases.close(short.lease_id)
    served = await _held_until_freed(admission, busy.lease_id, _asking(6000))
    assert served.ranked[0].candidate.node_id == "big"
    assert served.ranked[0].candidate.over_context == 0
    await admission.close()
