"""One simulated Ollama machine: its installed models, scheduler, faults, counters and the paced
generation that the HTTP layer turns into Ollama or OpenAI responses."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hopscommon import names
from hopscommon.runner_options import RunnerOptions
from ollamasim import textgen
from ollamasim.catalogue import ModelSpec, lookup
from ollamasim.errors import BadRequest, RunnerError, ServerBusy, SimError
from ollamasim.faults import FaultState
from ollamasim.profiles import Profile, decode_tokens_per_s
from ollamasim.scheduler import SPAWN_SECONDS, Scheduler
from ollamasim.settings import SimSettings
from ollamasim.stats import Stats

BATCH_SLOWDOWN = 0.15
PULL_BYTES_PER_S = 100 * 1000**2
PULL_TICK_S = 0.06


@dataclass(slots=True)
class Installed:
    """A model on this host's disk."""

    spec: ModelSpec
    modified_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GenRequest:
    """What a generate/chat/completions request asks the model to do."""

    spec: ModelSpec
    prompt: str
    num_predict: int | None = None
    keep_alive: float | None = None
    num_ctx: int | None = None
    options: RunnerOptions = ()  # runner options other than num_ctx; others reload the model
    seed: int | None = None
    think: bool = False
    json_schema: Any = None
    json_mode: bool = False
    tools: tuple[dict[str, Any], ...] = ()
    wants_tool_call: bool = False
    # what the runner answers once loaded, with a slot, instead of generating (a format it
    # refuses, an image it cannot read); "" = nothing wrong
    runner_error: str = ""
    # What the template adds after the prompt to open the reply (a chat's assistant turn): the
    # runner evaluates and caches it with the prompt, but the reply's words are drawn from the
    # prompt alone (so a workload's replies do not depend on the framing).
    turn_start: str = ""

    @property
    def evaluated(self) -> str:
        """The text the runner evaluates before the reply, and keeps in its cache with it."""
        return self.prompt + self.turn_start


@dataclass(slots=True)
class Metrics:
    """Ollama's final-chunk counters, filled in as the generation runs (nanoseconds of real
    time). ``ollama_fields`` reports them in simulated time (x time scale): what the simulated
    hardware would have reported, so speeds learned from them do not depend on the time scale."""

    started: float = field(default_factory=time.monotonic)
    scale: float = 1.0
    total_ns: int = 0
    load_ns: int = 0
    prompt_eval_count: int = 0
    # Of prompt_eval_count, the tokens found in the prompt cache (prompt_eval_ns times the rest);
    # None where Ollama reports no such count (embeddings).
    prompt_cached_count: int | None = None
    prompt_eval_ns: int = 0
    eval_count: int = 0
    eval_ns: int = 0
    done_reason: str = "stop"

    def finish(self) -> None:
        self.total_ns = int((time.monotonic() - self.started) * 1e9)

    def ollama_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "total_duration": int(self.total_ns * self.scale),
            "load_duration": int(self.load_ns * self.scale),
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": int(self.prompt_eval_ns * self.scale),
            "eval_count": self.eval_count,
            "eval_duration": int(self.eval_ns * self.scale),
        }
        shown = {k: v for k, v in fields.items() if v}  # Go's omitempty drops zeros
        if self.prompt_cached_count is not None:  # a pointer in Go: 0 is said once set
            shown["prompt_eval_cached_count"] = self.prompt_cached_count
        return shown


Piece = tuple[str, Any]  # ("thinking", str) | ("content", str) | ("tool_calls", list)


class Host:
    """The simulated machine. Everything runs on one event loop."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.profile: Profile = settings.host_profile
        self.vram = self.profile.vram_bytes if settings.vram is None else settings.vram
        self.ram = self.profile.ram_bytes if settings.ram is None else settings.ram
        self.stats = Stats()
        self.faults = FaultState(random.Random(settings.seed ^ 0x5EED))
        if settings.fault is not None:
            self.faults.set(settings.fault)
        now = time.time()
        specs = (
            settings.models
            if settings.models is not None
            else [s for s in (lookup(n) for n in self.profile.models) if s is not None]
        )
        self.installed: dict[str, Installed] = {}
        self.blobs: dict[str, int] = {}  # uploaded blobs: digest -> size
        for age, spec in enumerate(specs):
            self.installed[names.match_key(spec.name) or spec.name] = Installed(spec, now - age)
        default_ctx = settings.automatic_context(self.vram)
        max_loaded = settings.max_loaded_models or 3
        self.scheduler = Scheduler(
            memory_bytes=self.vram if self.vram > 0 else self.ram,
            on_gpu=self.vram > 0,
            max_loaded=max_loaded,
            max_queue=settings.max_queue,
            num_parallel=settings.num_parallel,
            default_keep_alive=settings.keep_alive,
            default_context=default_ctx,
            load_seconds=self._load_seconds,
            time_scale=settings.time_scale,
            stats=self.stats,
        )
        # Set by the server: stop listening for ``seconds`` (None = until told otherwise).
        self.refuse_connections: Callable[[float | None], None] | None = None

    def find(self, raw_name: str) -> Installed | None:
        key = names.match_key(raw_name)
        return self.installed.get(key) if key else None

    def _load_seconds(self, size_bytes: int) -> float:
        return SPAWN_SECONDS + size_bytes / (
            self.profile.load_speed_bytes_per_s * self.settings.speed
        )

    def decode_tps(self, spec: ModelSpec, vram_fraction: float) -> float:
        return (
            decode_tokens_per_s(self.profile, spec.size_bytes, vram_fraction) * self.settings.speed
        )

    async def generate(self, req: GenRequest, metrics: Metrics) -> AsyncGenerator[Piece, None]:
        """Pieces of one reply, paced at this host's speed.

        Raises SimError (e.g. ServerBusy) before the first piece. Closing the iterator early, or
        cancelling the task that drives it, counts as a cancellation and frees the slot at once.
        """
        self.stats.started += 1
        self.stats.in_flight += 1
        metrics.scale = self.settings.time_scale
        slow = self.faults.draw("slow")
        slowdown = slow.factor if slow else 1.0
        completed = False
        try:
            grant = await self.scheduler.acquire(
                req.spec, keep_alive=req.keep_alive, num_ctx=req.num_ctx, options=req.options
            )
            runner = grant.runner
            try:
                metrics.load_ns = max(int(grant.load_seconds * 1e9), 1)
                self.stats.waiting_for_slot += 1
                try:
                    await runner.slots.acquire()
                finally:
                    self.stats.waiting_for_slot -= 1
                runner.active += 1
                try:
                    if req.runner_error:
                        raise RunnerError(req.runner_error)
                    tps = self.decode_tps(req.spec, runner.vram_fraction)
                    evaluated = self._fitted(req.evaluated, runner.context_length)
                    output: list[str] = []
                    slot, cached = runner.take_cache_slot(evaluated, self.settings.multiuser_cache)
                    try:
                        async for piece in self._paced(
                            req, evaluated, metrics, cached, tps, slowdown, lambda: runner.active
                        ):
                            if piece[0] == "content":
                                output.append(piece[1])
                            yield piece
                    finally:
                        runner.leave_cache_slot(slot, evaluated + "".join(output))
                        if metrics.prompt_eval_count + metrics.eval_count > runner.context_length:
                            self.stats.context_shifts += 1  # Ollama drops half and goes on
                    completed = True
                finally:
                    runner.active -= 1
                    runner.slots.release()
            finally:
                self.scheduler.release(runner)
        except (asyncio.CancelledError, GeneratorExit):
            self.stats.cancelled += 1
            raise
        except ServerBusy:
            raise
        except SimError:
            self.stats.failed += 1
            raise
        finally:
            self.stats.in_flight -= 1
            if completed:
                self.stats.completed += 1
            metrics.finish()

    def _fitted(self, evaluated: str, context_length: int) -> str:
        """What the runner evaluates of a prompt at ``context_length``: all of it when it fits,
        else its last ``context_length`` tokens. Ollama does not refuse such a prompt: a chat
        drops its oldest messages and the runner cuts the rest ("truncating input prompt" in
        its log), and the reply reads only what is left. Counted in stats.truncated_prompts."""
        if textgen.count_tokens(evaluated) <= context_length:
            return evaluated
        self.stats.truncated_prompts += 1
        return textgen.last_tokens(evaluated, context_length)

    async def _paced(
        self,
        req: GenRequest,
        evaluated: str,
        metrics: Metrics,
        cached_chars: int,
        tps: float,
        slowdown: float,
        active: Callable[[], int],
    ) -> AsyncGenerator[Piece, None]:
        scale = self.settings.time_scale
        prompt_tokens = textgen.count_tokens(evaluated)
        uncached = max(1, textgen.count_tokens(evaluated[cached_chars:])) if prompt_tokens else 0
        prompt_start = time.monotonic()
        await self.scheduler.sleep(uncached / (tps * self.profile.prompt_speedup) * slowdown)
        metrics.prompt_eval_count = prompt_tokens
        metrics.prompt_cached_count = prompt_tokens - uncached
        metrics.prompt_eval_ns = int((time.monotonic() - prompt_start) * 1e9)
        pieces, metrics.done_reason = self._plan(req)
        eval_start = time.monotonic()
        deadline = eval_start
        for i, piece in enumerate(pieces):
            step = slowdown * (1.0 + BATCH_SLOWDOWN * (active() - 1)) / (tps * scale)
            deadline += step
            delay = deadline - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            elif i % 16 == 15:
                await asyncio.sleep(0)
            metrics.eval_count += 1
            self.stats.tokens_generated += 1
            yield piece
        metrics.eval_ns = max(int((time.monotonic() - eval_start) * 1e9), 1)

    def _plan(self, req: GenRequest) -> tuple[Iterable[Piece], str]:
        """The reply's pieces and done reason. Plain text is drawn as it is streamed (a reply of
        100,000 tokens must not delay its first one, nor be held whole in memory)."""
        seed = self.settings.seed if req.seed is None else req.seed
        rng = textgen.rng_for(seed, req.spec.name, req.prompt)
        low, high = self.settings.response_tokens
        n = rng.randint(low, high)
        reason = "stop"
        if req.num_predict is not None and 0 < req.num_predict <= n:
            n, reason = req.num_predict, "length"
        thinking: Iterable[Piece] = ()
        if req.think:
            thinking = (("thinking", w) for w in textgen.iter_words(rng, max(1, n // 2)))
        tool_call = req.wants_tool_call and bool(req.tools)
        json_reply = req.json_mode or req.json_schema is not None
        if tool_call or json_reply:  # drawn after the thinking text: draw that first
            thinking = list(thinking)
        if tool_call:
            call = textgen.tool_call(rng, req.tools[rng.randrange(len(req.tools))])
            return [*thinking, ("tool_calls", [call])], "stop"
        if json_reply:
            tokens = textgen.json_tokens(rng, req.json_schema, n)
            return [*thinking, *(("content", t) for t in tokens)], reason
        content = (("content", t) for t in textgen.iter_words(rng, n))
        return itertools.chain(thinking, content), reason

    async def embed(
        self,
        spec: ModelSpec,
        texts: list[str],
        *,
        keep_alive: float | None,
        metrics: Metrics,
        num_ctx: int | None = None,
        options: RunnerOptions = (),
        truncate: bool = True,
    ) -> list[str]:
        """Pay the load and prompt time of embedding ``texts``; returns each as embedded (the
        vectors come from textgen). An input longer than the context length the runner runs at
        is cut to its start (counted in stats.truncated_prompts), or with ``truncate`` off,
        refused, as Ollama does once the model is loaded."""
        metrics.scale = self.settings.time_scale
        self.stats.started += 1
        self.stats.in_flight += 1
        completed = False
        try:
            grant = await self.scheduler.acquire(
                spec, keep_alive=keep_alive, num_ctx=num_ctx, options=options
            )
            metrics.load_ns = max(int(grant.load_seconds * 1e9), 1)
            try:
                async with grant.runner.slots:
                    texts = [
                        self._embedded(t, grant.runner.context_length, truncate) for t in texts
                    ]
                    tokens = sum(textgen.count_tokens(t) for t in texts)
                    tps = self.decode_tps(spec, grant.runner.vram_fraction)
                    await self.scheduler.sleep(tokens / (tps * self.profile.prompt_speedup))
                    metrics.prompt_eval_count = tokens
            finally:
                self.scheduler.release(grant.runner)
            completed = True
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            self.stats.in_flight -= 1
            if completed:
                self.stats.completed += 1
            metrics.finish()
        return texts

    def _embedded(self, text: str, context_length: int, truncate: bool) -> str:
        if textgen.count_tokens(text) <= context_length:
            return text
        if not truncate:
            raise BadRequest("the input length exceeds the context length")
        self.stats.truncated_prompts += 1
        return textgen.first_tokens(text, context_length)

    async def load_only(
        self,
        spec: ModelSpec,
        keep_alive: float | None,
        num_ctx: int | None = None,
        options: RunnerOptions = (),
    ) -> float:
        """An empty prompt: load (or keep) the model, with ``num_ctx`` and runner options if
        asked (a model loaded with others reloads); returns load seconds."""
        grant = await self.scheduler.acquire(
            spec, keep_alive=keep_alive, num_ctx=num_ctx, options=options
        )
        self.scheduler.release(grant.runner)
        return grant.load_seconds

    async def pull(self, raw_name: str) -> AsyncGenerator[dict[str, Any], None]:
        """Ollama's pull progress lines; the model is installed before ``success``.

        Raises SimError("pull model manifest: file does not exist") after the first line for a
        name no registry has.
        """
        self.stats.pulls += 1
        yield {"status": "pulling manifest"}
        await self.scheduler.sleep(0.2)
        spec = lookup(raw_name)
        if spec is None:
            raise SimError("pull model manifest: file does not exist")
        have = self.find(raw_name) is not None
        layers = [
            (spec.weights, spec.size_bytes),
            (hashlib.sha256(f"{spec.name}/template".encode()).hexdigest(), 1_400),
            (hashlib.sha256(f"{spec.name}/params".encode()).hexdigest(), 96),
        ]
        for digest, total in layers:
            line = {
                "status": f"pulling {digest[:12]}",
                "digest": f"sha256:{digest}",
                "total": total,
            }
            if have:
                yield {**line, "completed": total}
                continue
            yield line
            done = 0
            step = max(int(PULL_BYTES_PER_S * self.settings.speed * PULL_TICK_S), 1)
            while done < total:
                await self.scheduler.sleep(PULL_TICK_S)
                done = min(total, done + step)
                yield {**line, "completed": done}
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        self.install(spec)
        yield {"status": "success"}

    def install(self, spec: ModelSpec) -> None:
        self.installed[names.match_key(spec.name) or spec.name] = Installed(spec, time.time())

    def remove(self, raw_name: str) -> bool:
        key = names.match_key(raw_name)
        return bool(key) and self.installed.pop(key or "", None) is not None
