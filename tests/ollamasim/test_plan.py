"""What a reply will say is drawn as it streams: its length costs nothing up front."""

from __future__ import annotations

import itertools
import tracemalloc

from ollamasim import textgen
from ollamasim.catalogue import lookup
from ollamasim.host import GenRequest, Host
from tests.simfixtures import sim_settings


def _request(**extra: object) -> GenRequest:
    spec = lookup("llama3.2")
    assert spec is not None
    return GenRequest(spec=spec, prompt="tell me", **extra)  # type: ignore[arg-type]


def test_a_long_reply_is_not_drawn_before_its_first_token() -> None:
    host = Host(sim_settings(response_tokens=(1_000_000, 1_000_000)))
    tracemalloc.start()
    try:
        pieces, reason = host._plan(_request(num_predict=2_000_000))
        first = list(itertools.islice(pieces, 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "stop"
    assert [kind for kind, _ in first] == ["content"] * 3
    assert peak < 1_000_000  # drawn whole, a million tokens take ~100 MB


def test_thinking_then_text_read_as_drawn_in_one_go() -> None:
    host = Host(sim_settings(response_tokens=(30, 30)))
    pieces, _ = host._plan(_request(think=True))
    rng = textgen.rng_for(host.settings.seed, "llama3.2:latest", "tell me")
    n = rng.randint(30, 30)
    expected = [("thinking", w) for w in textgen.words(rng, n // 2)]
    expected += [("content", w) for w in textgen.words(rng, n)]
    assert list(pieces) == expected
    assert expected[n // 2][1][0].isupper()  # each part opens a sentence
