"""What replies teach the router, as exponentially weighted averages: per (node, model) the
decode, prompt and load speeds; per node the bandwidths that estimate them for a model never
run there; per model its usual reply and how Ollama's count of a prompt differs from the edge's
estimate.

Floors (see controlplane.floors) are built from these figures, so the figures every host's
floor uses move in steps (see _stepped), and each change that may move a floor calls
``moved(node, key)``. Runs on the control plane's event loop, called by the Router.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from controlplane.fleet import Fleet, Node
from controlplane.leases import Lease
from controlplane.model import GenerationStats, Report
from controlplane.policies.base import DEFAULT_REPLY_TOKENS

EWMA_ALPHA = 0.3
# A load_duration up to this is Ollama handing over a loaded model (tens of ms), not a load.
WARM_HANDOVER_NS = 100_000_000
TOKENS_STEP = 0.2
# A model's reply lengths vary far more than its speeds do (a title, a paragraph, a page), and
# what ranking needs is their mean: the usual reply is the mean of the first REPLY_WINDOW
# replies, then a mean weighted over about as many. Following the last few replies (weight
# EWMA_ALPHA) kept it a quarter off the mean half the time, and moved it (and so every host's
# floor for the model: a candidate built per host) on four Reports in ten; this window, 5% off
# and once in 250 (lengths lognormal, half within 0.6-1.7x their median).
REPLY_WINDOW = 50
# A generation's real prompt against the edge's estimate of it, per model (see prompt_scale):
# a prompt estimated under this many tokens teaches what the model's template and default
# system prompt add; a longer one, how many tokens its tokenizer makes of one the edge counts.
PROMPT_SCALE_LONG = 1024
PROMPT_RATIO_RANGE = (0.25, 4.0)
LOAD_RATE_STEP = 0.2
DECODE_RATE_STEP = 0.2
PROMPT_RATE_STEP = 0.2
# A reply whose prompt had fewer tokens says little of the prompt speed: the runner's fixed
# cost per batch dominates it.
MIN_PROMPT_SAMPLE = 64
# A time the edge measured (a whole reply, or a stream's time to its first token) holds its
# prompt's evaluation. Less the prompt at a speed measured on the host, the rest is learned
# from while the prompt took at most PROMPT_SHARE_MEASURED of it; at the cautious prior speed,
# the time is learned from as it is while the prompt took at most PROMPT_SHARE_PRIOR of it (so
# it holds at most that share of prompt). Beyond, an error in the prompt's estimate would be
# most of what is learned.
PROMPT_SHARE_MEASURED = 0.75
PROMPT_SHARE_PRIOR = 0.5
# A whole reply whose prompt took at least this share of it, its decoding at the speed known
# there set apart, teaches the prompt speed instead.
PROMPT_SHARE_TELLS = 0.5


@dataclass(slots=True)
class Learned:
    """What Reports taught us about one model on one node (exponentially weighted)."""

    decode_tps: float = 0.0
    load_seconds: float = 0.0
    prompt_tps: float = 0.0  # prompt tokens evaluated per second, none of them cached
    samples: int = 0


def _unwatched(node: Node, key: str) -> None:
    """The default ``moved``: nothing is built on the figures."""


@dataclass(slots=True)
class Learning:
    fleet: Fleet
    moved: Callable[[Node, str], None] = _unwatched
    learned: dict[tuple[str, str], Learned] = field(default_factory=dict)
    # Per model key, reply length in tokens: (running average, the figure policies see). The
    # second moves only when the first drifts by TOKENS_STEP, since every host's floor uses it.
    tokens: dict[str, tuple[float, float]] = field(default_factory=dict)
    replies: dict[str, int] = field(default_factory=dict)  # per model key, replies counted
    # Per model key, what Ollama counts of a generation's prompt against the edge's estimate:
    # (tokens its template and default system prompt add, real tokens per estimated one; 0 =
    # not learned), from the prompt_eval_count of replies. Ollama cuts a prompt over its
    # context length by its own count, so fitting a prompt weighs that count.
    prompt_scale: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per node, its load speed in bytes/s (model size / load time, over every model loaded
    # there): (running average, the figure candidates see, moved like tokens). It estimates
    # the load time of a model never loaded on that host yet.
    load_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per node, the weight bytes it reads per second decoding (tokens/s x model size, over every
    # model run there wholly in its memory; decoding is memory-bandwidth bound), moved like
    # tokens. It estimates the decode speed of a model never run on that host yet.
    decode_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per node, prompt tokens/s x model size over every model whose prompts it evaluated
    # (compute bound, so about inversely proportional to the model's size), moved like
    # tokens. It estimates the prompt speed of a model never run on that host yet.
    prompt_rates: dict[str, tuple[float, float]] = field(default_factory=dict)

    def usual_reply(self, key: str) -> float:
        """The tokens a reply of ``key`` usually runs to, as policies see it (0: not known)."""
        seen = self.tokens.get(key)
        return seen[1] if seen is not None else 0.0

    def learn(
        self,
        node_id: str,
        model: str,
        report: Report,
        *,
        clean_load: bool,
        ready: bool,
        fresh_prompt: bool = True,
        prompt: tuple[float, bool] = (0.0, False),
        reply_limit: int = 0,
        embedding: bool = False,
    ) -> None:
        """Fold one reply's figures in. Its load_duration (for a reply timed by the edge, its
        time to the first token) teaches load speed only when ``clean_load``: a request that
        waited for other loads or for a busy model to finish, or that came while its model was
        already loading, reports the wait (or the rest of a load). ``ready``: it was sent to a
        loaded instance with a free slot (see _split_reply). Its prompt speed teaches only when
        ``fresh_prompt``: Ollama counts every prompt token, but times only those not found in
        the prompt cache, which a request sent back to its session's host mostly finds; a reply
        that says how many it found there (newer Ollama) teaches it from the others, wherever
        it was sent.
        ``prompt``: its prompt's evaluation there as estimated when picked, and whether at a
        measured speed, which the edge's times hold (see _less_prompt). A reply that ran to
        ``reply_limit``, the most its request let it (0: no limit), was cut short: it says the
        model's usual reply is at least that long, which teaches only when the average so far
        (before any, the DEFAULT_REPLY_TOKENS policies assume) is shorter. An ``embedding``'s
        reply times its inputs' evaluation only with the rest (see _embedding_evaluation)."""
        stats = report.stats
        if stats is None:
            return
        if embedding and not stats.prompt_eval_duration_ns:
            stats = _embedding_evaluation(stats, ready, clean_load)
        evaluated = stats.prompt_evaluated
        if evaluated is not None:  # the reply says what its prompt_eval_duration timed
            stats = replace(stats, prompt_eval_count=evaluated)
            fresh_prompt = True
        learned = self.learned.setdefault((node_id, model), Learned())
        node = self.fleet.nodes.get(node_id)
        installed = node.installed_by_key.get(model) if node is not None else None
        size = installed.size_bytes if installed is not None else 0
        if stats.reply_ns:
            stats = self._split_reply(
                stats, learned, node_id, size, clean_load, ready, fresh_prompt, prompt
            )
        elif stats.first_token_ns:
            stats = self._split_first_token(
                stats, learned, node_id, size, ready and fresh_prompt, prompt
            )
        if stats.eval_count and stats.eval_duration_ns:
            tps = stats.eval_count / (stats.eval_duration_ns / 1e9)
            learned.decode_tps = _ewma(learned.decode_tps, tps)
            if node is not None and size and _wholly_in_memory(node, model):
                self._learn_rate(self.decode_rates, node, tps * size, DECODE_RATE_STEP)
        if (
            fresh_prompt
            and stats.prompt_eval_count >= MIN_PROMPT_SAMPLE
            and stats.prompt_eval_duration_ns
        ):
            tps = stats.prompt_eval_count / (stats.prompt_eval_duration_ns / 1e9)
            learned.prompt_tps = _ewma(learned.prompt_tps, tps)
            # A model that only embeds (a small encoder) says little of how fast the host
            # evaluates the prompts of generation models.
            if (
                node is not None
                and size
                and model not in node.embedding_only
                and _wholly_in_memory(node, model)
            ):
                self._learn_rate(self.prompt_rates, node, tps * size, PROMPT_RATE_STEP)
        if clean_load and stats.load_wait_ns > WARM_HANDOVER_NS:
            seconds = stats.load_wait_ns / 1e9
            learned.load_seconds = _ewma(learned.load_seconds, seconds)
            if node is not None and size:
                self._learn_rate(self.load_rates, node, size / seconds, LOAD_RATE_STEP)
        learned.samples += 1
        if node is not None:
            self.moved(node, model)
        count = stats.eval_count
        cut = 0 < reply_limit <= count
        usual = self.tokens.get(model, (0.0, 0.0))[0] or DEFAULT_REPLY_TOKENS
        if count and not (cut and count <= usual):
            self._learn_tokens(model, count)

    def _split_reply(
        self,
        stats: GenerationStats,
        learned: Learned,
        node_id: str,
        size: int,
        clean_load: bool,
        ready: bool,
        fresh_prompt: bool,
        prompt: tuple[float, bool],
    ) -> GenerationStats:
        """A reply the edge timed whole (not streamed, no durations) as the part it can stand
        for. Sent to an instance ready with a free slot, its time is prompt evaluation and
        decoding: when the prompt was evaluated whole (``fresh_prompt``), of a length its usage
        tells, and took most of the time beside the decoding at the speed known there, the
        prompt; else less the prompt (see _less_prompt), decoding. From a load routed to start
        at once, its time less the decoding and less the prompt is the load. Otherwise (a
        queue, a wait for other loads, a retry, no decode speed known yet, a prompt that took
        too much of it to tell) only its length."""
        tps = self.decode_tps(learned, node_id, size)
        decoding_ns = int(stats.eval_count / tps * 1e9) if tps > 0 else 0
        if ready:
            prompt_ns = stats.reply_ns - decoding_ns
            if (
                decoding_ns
                and fresh_prompt
                and stats.prompt_eval_count >= MIN_PROMPT_SAMPLE
                and prompt_ns >= stats.reply_ns * PROMPT_SHARE_TELLS
            ):
                return replace(stats, prompt_eval_duration_ns=prompt_ns)
            return replace(stats, eval_duration_ns=_less_prompt(stats.reply_ns, *prompt))
        if clean_load and decoding_ns:
            first_token_ns = max(stats.reply_ns - decoding_ns, 0)
            return replace(stats, first_token_ns=_less_prompt(first_token_ns, *prompt))
        return stats

    def _split_first_token(
        self,
        stats: GenerationStats,
        learned: Learned,
        node_id: str,
        size: int,
        fresh: bool,
        prompt: tuple[float, bool],
    ) -> GenerationStats:
        """A stream the edge timed (no durations): its time to the first token is its load, if
        any, and its prompt (see _less_prompt). ``fresh``: it was sent to an instance ready
        with a free slot that evaluated its prompt whole (none of it cached there); that time
        is then the prompt and one token decoded, and teaches the prompt speed when its usage
        tells the prompt's length."""
        if fresh and stats.prompt_eval_count >= MIN_PROMPT_SAMPLE:
            tps = self.decode_tps(learned, node_id, size)
            one_token_ns = int(1e9 / tps) if tps > 0 else 0
            if stats.first_token_ns > 2 * one_token_ns:
                prompt_ns = stats.first_token_ns - one_token_ns
                return replace(stats, first_token_ns=0, prompt_eval_duration_ns=prompt_ns)
        return replace(stats, first_token_ns=_less_prompt(stats.first_token_ns, *prompt))

    def model_figures(self, key: str) -> tuple[float, float, float]:
        """What replies taught of ``key``'s generations: its usual reply, what Ollama's count
        adds to a prompt's estimate, and its tokens per estimated one (each 0 until known)."""
        added, ratio = self.prompt_scale.get(key, (0.0, 0.0))
        return self.tokens.get(key, (0.0, 0.0))[0], added, ratio

    def counted_prompt(self, key: str, estimate: int) -> int:
        """The tokens Ollama will most likely count of a generation's prompt the edge estimated
        at ``estimate``: what the model's template adds, and the estimate scaled by what its
        tokenizer makes of it, when that is more (an estimate that errs long stays as it is:
        it is kept long on purpose)."""
        extra, ratio = self.prompt_scale.get(key, (0.0, 0.0))
        return int(extra + estimate * max(ratio, 1.0))

    def learn_prompt_scale(self, model: str, estimate: int, count: int) -> None:
        """One reply said Ollama counted ``count`` tokens of a prompt estimated at ``estimate``."""
        extra, ratio = self.prompt_scale.get(model, (0.0, 0.0))
        if estimate < PROMPT_SCALE_LONG:
            extra = _ewma(extra, max(count - estimate, 0))
        else:
            low, high = PROMPT_RATIO_RANGE
            ratio = _ewma(ratio, min(max((count - extra) / estimate, low), high))
        self.prompt_scale[model] = (extra, ratio)

    def _learn_tokens(self, model: str, count: int) -> None:
        replies = self.replies[model] = self.replies.get(model, 0) + 1
        weight = 1.0 / min(replies, REPLY_WINDOW)
        self.tokens[model], moved = _stepped(self.tokens.get(model), count, TOKENS_STEP, weight)
        if moved:  # every host's cost, and so floor, for this model changed
            for node in self.fleet.holders.get(model, {}).values():
                self.moved(node, model)

    def _learn_rate(
        self, rates: dict[str, tuple[float, float]], node: Node, rate: float, step: float
    ) -> None:
        """Fold one model's measured speed into ``node``'s speed (load or decode, in bytes/s)."""
        rates[node.node_id], moved = _stepped(rates.get(node.node_id), rate, step)
        if moved:  # the estimate, and so the floor, of every model not yet measured here
            for key in node.installed_by_key:
                self.moved(node, key)

    def load_seconds(self, learned: Learned | None, node_id: str, size_bytes: int) -> float:
        """How long loading a model of ``size_bytes`` on this node takes: ``learned`` from its
        own loads there, else at the node's measured load speed; 0 while nothing was loaded."""
        if learned is not None and learned.load_seconds:
            return learned.load_seconds
        rate = self.load_rates.get(node_id)
        return size_bytes / rate[1] if rate is not None else 0.0

    def prompt_tps(self, learned: Learned | None, node_id: str, size_bytes: int) -> float:
        """Prompt tokens/s for a model of ``size_bytes`` on this node: ``learned`` from its own
        replies there, else at the node's measured prompt rate; 0 while none was measured."""
        if learned is not None and learned.prompt_tps:
            return learned.prompt_tps
        rate = self.prompt_rates.get(node_id)
        return rate[1] / size_bytes if rate is not None and size_bytes else 0.0

    def decode_tps(self, learned: Learned | None, node_id: str, size_bytes: int) -> float:
        """Tokens/s decoding a model of ``size_bytes`` on this node: ``learned`` from its own
        replies there, else at the node's measured decode bandwidth; 0 while nothing ran."""
        if learned is not None and learned.decode_tps:
            return learned.decode_tps
        rate = self.decode_rates.get(node_id)
        return rate[1] / size_bytes if rate is not None and size_bytes else 0.0


def _embedding_evaluation(stats: GenerationStats, ready: bool, clean_load: bool) -> GenerationStats:
    """An embedding's reply times no part apart: Ollama's (/api/embed) says its whole time and
    its load's, the edge's (/v1/embeddings) is the whole reply's. Past the load, all of it is
    its inputs' evaluation, when it waited for no slot: sent to an instance ready with a free
    one, or, where Ollama's times tell the load apart, loading its model at once."""
    if stats.from_ollama:
        evaluating = stats.total_duration_ns - stats.load_duration_ns if ready or clean_load else 0
    else:
        evaluating = stats.reply_ns if ready else 0
    return replace(stats, prompt_eval_duration_ns=max(evaluating, 0), reply_ns=0)


def _wholly_in_memory(node: Node, key: str) -> bool:
    """Whether ``key`` runs entirely in the node's GPU memory (or on a CPU-only node): a model
    split between GPU and CPU decodes at the CPU's pace and says little about the GPU's."""
    loaded = node.loaded_by_key.get(key)
    if node.vram_total <= 0:
        return True
    return loaded is not None and loaded.size_vram_bytes >= loaded.size_bytes > 0


def prompt_spent(lease: Lease, stats: GenerationStats | None) -> float:
    """The seconds ``lease``'s prompt took to evaluate on its node, as well as known: from the
    tokens its reply says the host evaluated (those not cached; else the prompt's length less
    the part counted as cached at pick), at the speed the pick assumed; without a count, the
    pick's estimate from the edge's guess of the length."""
    if stats is None or not stats.prompt_eval_count:
        return lease.prompt_seconds
    evaluated = stats.prompt_evaluated
    if evaluated is None:
        evaluated = max(stats.prompt_eval_count - lease.prompt_credit, 0)
    return evaluated * lease.prompt_per_token


def _less_prompt(span_ns: int, prompt_seconds: float, measured: bool) -> int:
    """What an edge-timed span (a whole reply, or the time to a stream's first token) stands
    for once its prompt's evaluation (``prompt_seconds``, estimated at pick) is set apart: at
    a ``measured`` prompt speed the span less the prompt; at the prior speed, which is
    cautious (slow), the span as it is. 0 (learn nothing from it) when the prompt took more of
    the span than PROMPT_SHARE_MEASURED or PROMPT_SHARE_PRIOR allow."""
    prompt_ns = int(prompt_seconds * 1e9)
    share = PROMPT_SHARE_MEASURED if measured else PROMPT_SHARE_PRIOR
    if prompt_ns > span_ns * share:
        return 0
    return span_ns - prompt_ns if measured else span_ns


def _ewma(old: float, new: float, alpha: float = EWMA_ALPHA) -> float:
    return new if old == 0 else old + alpha * (new - old)


def _stepped(
    seen: tuple[float, float] | None, sample: float, step: float, alpha: float = EWMA_ALPHA
) -> tuple[tuple[float, float], bool]:
    """Fold ``sample`` into (running average, weighing it ``alpha``; the figure policies see);
    the figure follows the average only when it drifts by ``step`` (floors depend on it).
    Returns the pair and whether the figure moved."""
    average, used = seen or (0.0, 0.0)
    average = _ewma(average, sample, alpha)
    moved = not used or abs(average - used) > step * used
    return (average, average if moved else used), moved
