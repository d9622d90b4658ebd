"""What the edge reports of a reply's size from its last bytes: Ollama's final chunk or the end
of its embed reply, else the ``usage`` the OpenAI, Responses and Anthropic routes end with
(token counts, no durations)."""

from __future__ import annotations

import json

import pytest

from edge.replies import TAIL_BYTES, final_stats, in_band_failure


def _sse(*events: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


@pytest.mark.parametrize(
    ("tail", "counts"),
    [
        (  # native: the final chunk, with its durations
            b'{"response":"x","done":false}\n{"done":true,"eval_count":7,"eval_duration":'
            b'1000000,"prompt_eval_count":3}\n',
            (3, 7),
        ),
        (  # OpenAI, not streamed: the body ends with usage
            json.dumps(
                {
                    "choices": [{"message": {"content": 'say "usage": 99'}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
                }
            ).encode(),
            (12, 40),
        ),
        (  # OpenAI streamed with include_usage
            _sse({"choices": [{"delta": {"content": "hi"}}]})
            + _sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
            + b"data: [DONE]\n\n",
            (5, 9),
        ),
        (  # Anthropic: message_start's usage, then message_delta's final output_tokens
            b"event: message_start\n"
            + _sse({"message": {"usage": {"input_tokens": 4, "output_tokens": 1}}})
            + b"event: message_delta\n"
            + _sse({"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 21}}),
            (0, 21),
        ),
        (  # Responses: response.completed carries the whole response, usage last
            b"event: response.completed\n"
            + _sse({"response": {"output": [], "usage": {"input_tokens": 8, "output_tokens": 30}}}),
            (8, 30),
        ),
    ],
)
def test_reply_counts_from_the_tail(tail: bytes, counts: tuple[int, int]) -> None:
    stats = final_stats(tail)
    assert stats is not None
    assert (stats.prompt_eval_count, stats.eval_count) == counts


@pytest.mark.parametrize(
    "tail",
    [
        _sse({"choices": [{"delta": {"content": "no usage asked"}}]}) + b"data: [DONE]\n\n",
        b'{"usage": {"prompt_tokens": 3, "completion_tokens": 0}}',  # nothing generated
        b'"usage": {"completion_tokens": 4',  # cut off
        json.dumps({"text": 'a reply that says "usage": {"completion_tokens": 5}'}).encode(),
    ],
)
def test_no_counts_without_a_whole_usage(tail: bytes) -> None:
    assert final_stats(tail) is None


@pytest.mark.parametrize(
    ("tail", "cached"),
    [
        (b'{"done":true,"prompt_eval_count":40,"prompt_eval_cached_count":32,"eval_count":3}', 32),
        (b'{"done":true,"prompt_eval_count":40,"prompt_eval_cached_count":0,"eval_count":3}', 0),
        (b'{"done":true,"prompt_eval_count":40,"eval_count":3}', None),  # older Ollama
        (
            b'{"done":true,"prompt_eval_count":40,"prompt_eval_cached_count":-1,"eval_count":3}',
            None,
        ),
        (
            b'{"done":true,"prompt_eval_count":40,"prompt_eval_cached_count":"9","eval_count":3}',
            None,
        ),
        (  # OpenAI chat completions
            json.dumps(
                {
                    "usage": {
                        "prompt_tokens": 40,
                        "completion_tokens": 3,
                        "prompt_tokens_details": {"cached_tokens": 30},
                    }
                }
            ).encode(),
            30,
        ),
        (  # Responses
            b"event: response.completed\n"
            + _sse(
                {
                    "response": {
                        "usage": {
                            "input_tokens": 40,
                            "output_tokens": 3,
                            "input_tokens_details": {"cached_tokens": 12},
                        }
                    }
                }
            ),
            12,
        ),
        (json.dumps({"usage": {"prompt_tokens": 40, "completion_tokens": 3}}).encode(), None),
    ],
)
def test_the_cached_part_of_the_prompt_when_the_reply_tells_it(
    tail: bytes, cached: int | None
) -> None:
    """Newer Ollama says how many prompt tokens its cache held (its prompt_eval_duration times
    only the others); a reply that does not say, or says it wrongly, leaves it unset."""
    stats = final_stats(tail, streamed=False)
    assert stats is not None and stats.prompt_eval_count == 40
    told = stats.prompt_eval_cached_count if stats.HasField("prompt_eval_cached_count") else None
    assert told == cached


@pytest.mark.parametrize(
    "bad", ['"7"', "-7", "1e30", str(2**70), "[7]", "true", "null", '{"n": 7}']
)
def test_a_count_that_is_not_one_is_not_taken_and_raises_nothing(bad: str) -> None:
    """A host's final chunk or usage is data from the network: a count that is not a count
    (a string, negative, a float, too big for the report) counts as not said. Raising there
    used to lose the attempt's report, leaving its lease (and the host's slot) held."""
    native = final_stats(
        f'{{"done":true,"eval_count":{bad},"eval_duration":{bad},"prompt_eval_count":3,'
        f'"load_duration":{bad},"total_duration":{bad},"prompt_eval_duration":{bad},'
        f'"prompt_eval_cached_count":{bad}}}'.encode()
    )
    assert native is not None
    assert (native.prompt_eval_count, native.eval_count, native.eval_duration_ns) == (3, 0, 0)
    assert not native.HasField("prompt_eval_cached_count")
    usage = {"prompt_tokens": 3, "completion_tokens": 9, "prompt_tokens_details": {}}
    for field in ("prompt_tokens", "completion_tokens"):
        tail = json.dumps({"usage": usage}).replace(f'"{field}": ', f'"{field}": {bad}, "x": ')
        stats = final_stats(tail.encode(), streamed=False)
        if field == "completion_tokens":
            assert stats is None  # no length: nothing to learn
        else:
            assert stats is not None and (stats.prompt_eval_count, stats.eval_count) == (0, 9)


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_an_embed_reply_ends_with_its_counters(separators: tuple[str, str]) -> None:
    """Ollama's /api/embed answers one JSON object: the vectors (far longer than the tail the
    edge keeps), then the whole time, the load's (left out when zero) and the inputs' tokens.
    Its legacy /api/embeddings says nothing; OpenAI's /v1/embeddings the inputs' tokens, and
    the edge times that reply whole."""
    vectors = [[0.5, -0.25] * 2000 for _ in range(4)]
    reply = {"model": "m", "embeddings": vectors, "total_duration": 90_000_000}
    loaded = {**reply, "load_duration": 2_000_000, "prompt_eval_count": 300}
    for body, load in ((loaded, 2_000_000), ({**reply, "prompt_eval_count": 300}, 0)):
        tail = json.dumps(body, separators=separators).encode()[-TAIL_BYTES:]
        stats = final_stats(tail, streamed=False)
        assert stats is not None
        counts = (stats.total_duration_ns, stats.load_duration_ns, stats.prompt_eval_count)
        assert counts == (90_000_000, load, 300) and stats.eval_count == 0
    assert final_stats(json.dumps({"embedding": [0.5, 0.25]}).encode(), streamed=False) is None
    openai = {"data": [{"embedding": [0.5]}], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    timed = final_stats(json.dumps(openai).encode(), finished=0.25, streamed=False)
    assert timed is not None
    assert (timed.prompt_eval_count, timed.eval_count, timed.reply_ns) == (3, 0, 250_000_000)
    # Numbers after a list are not enough: the reply's whole time is what says it is one.
    assert final_stats(b'{"models":[],"count":3}', streamed=False) is None


def test_a_reply_nested_too_deep_to_read_gives_no_counts() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert final_stats(b'{"done":true,"eval_count":' + deep + b"}") is None
    assert final_stats(b'{"usage": {"completion_tokens": 3, "x": ' + deep + b"}}") is None


def test_a_stream_without_durations_is_timed_by_the_edge() -> None:
    """An OpenAI-compatible stream (no durations, no usage unless asked): its events counted,
    and the edge's own times to the first token and from there to the last."""
    tail = _sse({"choices": [{"delta": {"content": "x"}}]}) + b"data: [DONE]\n\n"
    stats = final_stats(tail, 1.5, 4.0, 50)
    assert stats is not None
    assert (stats.eval_count, stats.first_token_ns, stats.eval_duration_ns) == (
        50,
        1_500_000_000,
        2_500_000_000,
    )
    # With usage asked for, its count wins over the events, and the times are the same.
    with_usage = final_stats(
        tail + _sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}),
        1.5,
        4.0,
        51,
    )
    assert with_usage is not None
    assert (with_usage.eval_count, with_usage.first_token_ns) == (9, 1_500_000_000)


def test_a_reply_not_streamed_is_timed_whole_by_the_edge() -> None:
    """A non-streamed OpenAI-compatible reply (usage, no durations): its first byte is its
    last, so the edge gives its whole time, and no time to a first token."""
    body = json.dumps(
        {"choices": [{"message": {"content": "hi"}}], "usage": {"completion_tokens": 12}}
    ).encode()
    stats = final_stats(body, 3.9, 4.0, 0, streamed=False)
    assert stats is not None
    assert (stats.eval_count, stats.reply_ns) == (12, 4_000_000_000)
    assert (stats.first_token_ns, stats.eval_duration_ns) == (0, 0)
    # One that did not end well (finished 0) is not timed.
    failed = final_stats(body, 3.9, 0.0, 0, streamed=False)
    assert failed is not None and failed.reply_ns == 0
    # Ollama's own non-streamed reply keeps its durations.
    native = final_stats(b'{"done":true,"eval_count":7,"eval_duration":9}', 1.0, 2.0, 0, False)
    assert native is not None and (native.eval_duration_ns, native.reply_ns) == (9, 0)


def test_ollamas_own_durations_are_never_replaced_by_the_edges() -> None:
    tail = b'{"done":true,"eval_count":7,"eval_duration":1000000,"load_duration":5}\n'
    stats = final_stats(tail, 1.5, 4.0, 0)
    assert stats is not None
    assert (stats.eval_duration_ns, stats.load_duration_ns, stats.first_token_ns) == (10**6, 5, 0)


def test_a_stream_that_did_not_end_well_teaches_nothing() -> None:
    # Cut, cancelled or failed (finished 0): its events so far are not the reply's length.
    tail = _sse({"choices": [{"delta": {"content": "x"}}]})
    assert final_stats(tail, 1.5, 0.0, 30) is None
    # Ended, but with an error event where OpenAI's [DONE] should be.
    assert final_stats(tail + _sse({"error": {"message": "model crashed"}}), 1.5, 4.0, 30) is None


@pytest.mark.parametrize(
    ("tail", "content_type", "path", "failed"),
    [
        (
            b'{"response":"a","done":false}\n{"error":"runner died"}\n',
            "x-ndjson",
            "/api/chat",
            True,
        ),
        (
            b'{"response":"a","done":false}\n{"done":true,"eval_count":1}\n',
            "x-ndjson",
            "/api/chat",
            False,
        ),
        # a reply whose words mention "error" is not one
        (
            b'{"response":"\\"error\\"","done":false}\n{"done":true}\n',
            "x-ndjson",
            "/api/chat",
            False,
        ),
        # Ollama swallows an OpenAI stream's error: no [DONE]
        (_sse({"choices": [{"delta": {}}]}), "text/event-stream", "/v1/chat/completions", True),
        (
            _sse({"choices": []}) + b"data: [DONE]\n\n",
            "text/event-stream",
            "/v1/completions",
            False,
        ),
        # other event streams end in their own way
        (_sse({"type": "message_stop"}), "text/event-stream", "/v1/messages", False),
        (b'{"error":"bad request"}', "application/json", "/api/chat", False),  # not a stream
        # a last line nested too deep to read is no error line (and raises nothing)
        (b'{"error":"x","a":' + b"[" * 5000 + b"]" * 5000 + b"}", "x-ndjson", "/api/chat", False),
        # a pull's error is about the name asked for, not the host
        (
            b'{"status":"pulling manifest"}\n{"error":"file does not exist"}\n',
            "x-ndjson",
            "/api/pull",
            False,
        ),
    ],
)
def test_a_stream_ended_by_ollamas_in_band_error(
    tail: bytes, content_type: str, path: str, failed: bool
) -> None:
    assert (in_band_failure(tail, content_type, path) is not None) is failed
