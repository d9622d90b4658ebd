"""Plain frozen values the control plane reasons about; protobuf stays in convert.py."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hopscommon.runner_options import RunnerOptions


class Outcome(Enum):
    UNSPECIFIED = 0
    OK = 1
    CLIENT_ERROR = 2
    UPSTREAM_ERROR = 3
    CONNECT_ERROR = 4
    BUSY = 5
    TIMEOUT = 6
    CLIENT_CANCELLED = 7
    # A 5xx for the request's own fault, one any host would answer the same: the host is well.
    REQUEST_ERROR = 8

    @property
    def is_host_failure(self) -> bool:
        """Outcomes that say the host is unwell (they feed its breaker)."""
        return self in (
            Outcome.UPSTREAM_ERROR,
            Outcome.CONNECT_ERROR,
            Outcome.BUSY,
            Outcome.TIMEOUT,
        )


class ApiKind(Enum):
    UNSPECIFIED = 0
    GENERATE = 1
    CHAT = 2
    EMBED = 3
    EMBEDDINGS = 4
    SHOW = 5
    OPENAI_CHAT = 6
    OPENAI_COMPLETIONS = 7
    OPENAI_EMBEDDINGS = 8
    PULL = 9
    OTHER = 10


@dataclass(frozen=True, slots=True)
class GenerationStats:
    total_duration_ns: int = 0
    load_duration_ns: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration_ns: int = 0
    eval_count: int = 0
    eval_duration_ns: int = 0
    first_token_ns: int = 0  # timed by the edge: a stream without Ollama's durations
    reply_ns: int = 0  # timed by the edge: a whole reply without them (not streamed)
    # How many of prompt_eval_count were in the host's prompt cache, when the reply said (newer
    # Ollama): prompt_eval_duration_ns times only the rest. None: not said.
    prompt_eval_cached_count: int | None = None

    @property
    def prompt_evaluated(self) -> int | None:
        """The prompt tokens the host evaluated (not found in its prompt cache), when the reply
        tells: its count less the cached ones. None when it does not say how many were cached."""
        if self.prompt_eval_cached_count is None:
            return None
        return max(self.prompt_eval_count - self.prompt_eval_cached_count, 0)

    @property
    def load_wait_ns(self) -> int:
        """Time spent before the model could start on the prompt: Ollama's load_duration; for a
        reply timed by the edge, its time to the first token (prompt evaluation included)."""
        return self.load_duration_ns or self.first_token_ns

    @property
    def from_ollama(self) -> bool:
        """Whether these are Ollama's own durations (its final chunk), which tell a reply that
        loaded its model from one that found it ready; the edge's timing cannot, and a usage
        object alone has no durations at all."""
        timed = self.total_duration_ns or self.load_duration_ns or self.eval_duration_ns
        return bool(timed) and not (self.first_token_ns or self.reply_ns)


# An embedding decodes no reply: besides its inputs' evaluation (the prompt's) it is one pass
# over the weights, as one decoding step is. Routing counts it so, whatever model runs it.
EMBED_TOKENS = 1


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """One request to route (PickRequest, converted)."""

    model: str
    api: ApiKind = ApiKind.UNSPECIFIED
    edge_id: str = ""
    session_key: str = ""
    exclude: frozenset[str] = frozenset()
    label_selector: tuple[tuple[str, str], ...] = ()
    node_id: str = ""
    prompt_tokens: int = 0
    longest_input: int = 0  # an embedding's longest input, in tokens; 0 = not one, or unknown
    max_reply: int = 0  # the most tokens a generation's reply may run to; 0 = no limit asked
    max_candidates: int = 0
    num_ctx: int = 0  # the context length asked for; 0 = none
    runner_options: RunnerOptions = ()  # the other load-time options asked for
    request_id: int = 0  # the edge's id for a pick on a Route stream or socket; 0 = unary

    @property
    def runs_model(self) -> bool:
        """Whether Ollama runs the model for this request: not for a show (metadata read from
        disk) or a pull (a download). Such a request loads nothing, takes no slot of the model
        and, answered, says nothing of whether the host can run models."""
        return self.api not in (ApiKind.SHOW, ApiKind.PULL)

    @property
    def context_prompt(self) -> int:
        """The prompt tokens that must fit the context length the request runs at, lest Ollama
        cut them: a generation's whole prompt; an embedding's longest input (its prompt_tokens
        sum inputs that are each embedded, and cut, apart); 0 for a request that runs no
        model."""
        if self.is_embedding:
            return self.longest_input
        return self.prompt_tokens if self.runs_model else 0

    @property
    def reply_limit(self) -> int:
        """The most tokens the request decodes, as routing counts it (0: no limit): a
        generation's ``max_reply``; EMBED_TOKENS for an embedding, of any model (a generation
        model embeds too, and a usual reply of its would make a warm slow host look busy for
        what it never decodes)."""
        return EMBED_TOKENS if self.is_embedding else self.max_reply

    @property
    def is_embedding(self) -> bool:
        return self.api in (ApiKind.EMBED, ApiKind.EMBEDDINGS, ApiKind.OPENAI_EMBEDDINGS)

    @property
    def context(self) -> int | None:
        """The context length the request runs its model with: ``num_ctx`` when asked, 0 for
        the host's automatic one; None for a request that runs none (show, pull)."""
        if not self.runs_model:
            return None
        return self.num_ctx if self.num_ctx > 0 else 0


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one attempt (ReportRequest, converted)."""

    lease_id: str
    node_id: str
    outcome: Outcome
    http_status: int = 0
    ttfb_s: float = 0.0
    duration_s: float = 0.0
    retry_node_id: str = ""
    stats: GenerationStats | None = None
    error: str = ""  # a 5xx reply's error text (ReportRequest.error)
    request_digest: str = ""  # with an error: a digest of the request (ReportRequest's)
