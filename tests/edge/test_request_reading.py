"""What the edge reads from a request body besides the model: whether it is Ollama's unload
(sent to every host) or an ordinary request, the context length it asks for, and about how
long its prompt is."""

from __future__ import annotations

from typing import Any

import pytest

from edge.reading import longest_input, max_reply, num_ctx, prompt_tokens, unloads


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "m", "keep_alive": 0}),
        ("/api/generate", {"model": "m", "prompt": "", "keep_alive": 0.0}),
        ("/api/generate", {"model": "m", "keep_alive": "0s"}),  # the Go CLI's `ollama stop`
        ("/api/generate", {"model": "m", "keep_alive": "0"}),
        ("/api/chat", {"model": "m", "messages": [], "keep_alive": "0m"}),
        ("/api/chat", {"model": "m", "keep_alive": 0}),
    ],
)
def test_an_empty_request_with_keep_alive_zero_unloads(path: str, body: dict[str, Any]) -> None:
    assert unloads(path, body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "m", "prompt": "hi", "keep_alive": 0}),
        ("/api/generate", {"model": "m", "prompt": ""}),  # a load (`ollama run`'s preload)
        ("/api/generate", {"model": "m", "keep_alive": "5m"}),
        ("/api/generate", {"model": "m", "keep_alive": -1}),
        ("/api/generate", {"model": "m", "keep_alive": False}),  # the host's 400
        ("/api/generate", {"model": "m", "keep_alive": "300"}),  # no unit: the host's 400
        ("/api/generate", {"model": "m", "prompt": 5, "keep_alive": 0}),
        ("/api/chat", {"model": "m", "messages": [{"role": "user"}], "keep_alive": 0}),
        ("/api/embed", {"model": "m", "keep_alive": 0}),
    ],
)
def test_anything_else_is_an_ordinary_request(path: str, body: dict[str, Any]) -> None:
    assert not unloads(path, body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"options": {"num_ctx": 8192}}, 8192),
        ({"options": {"num_ctx": 8192.0}}, 8192),
        ({"options": {"num_ctx": 2**40}}, 2**32 - 1),  # a uint32 on the wire
        ({"options": {"num_ctx": -5}}, 0),
        ({"options": {"num_ctx": "8192"}}, 0),  # the host's 500 to give
        ({"options": {"num_ctx": True}}, 0),
        ({"options": {"temperature": 0}}, 0),
        ({"options": None}, 0),
        ({}, 0),
    ],
)
def test_the_context_length_asked_for(body: dict[str, Any], expected: int) -> None:
    assert num_ctx(body) == expected


PICTURE = "iVBORw0KGgo" * 10_000  # base64 image data: no prompt text, but 768 tokens an image


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"model": "m", "prompt": "x" * 400, "system": "y" * 40}, 110),
        (
            {"model": "m", "prompt": "x" * 400, "images": [PICTURE], "options": {"stop": ["z"]}},
            100 + 768,
        ),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "a" * 396, "images": [PICTURE]},
                    {"role": "assistant", "content": "b" * 800},
                ],
            },
            302 + 768,  # the roles are text too
        ),
        (  # OpenAI's parts, with an image as a data URI, and tools
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "c" * 800},
                            {"type": "image_url", "image_url": {"url": "data:;base64," + PICTURE}},
                        ],
                    }
                ],
                "tools": [{"type": "function", "function": {"name": "f" * 390}}],
            },
            303 + 768,
        ),
        (  # Anthropic's image block, and a Responses API input image
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "data": PICTURE}},
                            {"type": "input_image", "image_url": "data:;base64," + PICTURE},
                        ],
                    }
                ],
            },
            2 * 768 + 5,  # and the text "user", "image", "input_image"
        ),
        ({"model": "m", "input": ["d" * 4000]}, 1000),  # embeddings count too
        # Byte-level tokenizers take other scripts at about a token a character (Chinese) or
        # two (Cyrillic), not four: their UTF-8 bytes are what they merge.
        ({"model": "m", "prompt": "文" * 4000}, 4000),
        ({"model": "m", "prompt": "д" * 4000}, 2500),
        ({"model": "m"}, 0),
    ],
)
def test_the_prompt_size_is_its_text_and_images_not_their_data(
    body: dict[str, Any], tokens: int
) -> None:
    assert prompt_tokens(body) == tokens


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"model": "m", "input": ["a" * 400, "b" * 4000, "c"]}, 1000),  # each embedded apart
        ({"model": "m", "input": "文" * 300}, 300),
        ({"model": "m", "prompt": "d" * 800}, 200),  # the old /api/embeddings
        ({"model": "m", "input": [1, 2, 3]}, 3),  # OpenAI's token ids: one input
        ({"model": "m", "input": [[1, 2], [3, 4, 5, 6]]}, 4),
        ({"model": "m", "input": [True, "x" * 40]}, 10),  # a bool is no token id
        ({"model": "m"}, 0),
    ],
)
def test_an_embeddings_longest_input(body: dict[str, Any], tokens: int) -> None:
    assert longest_input(body) == tokens


@pytest.mark.parametrize(
    ("body", "native", "tokens"),
    [
        ({"model": "m", "options": {"num_predict": 64}}, True, 64),
        ({"model": "m", "options": {"num_predict": -1}}, True, 0),  # Ollama's "no limit"
        ({"model": "m", "options": {"num_predict": -2}}, True, 0),  # "fill the context"
        ({"model": "m", "options": {"num_predict": "64"}}, True, 0),  # the host's 400 to give
        ({"model": "m", "options": {"num_predict": True}}, True, 0),
        ({"model": "m", "options": "x"}, True, 0),
        ({"model": "m", "max_tokens": 64}, True, 0),  # not a native field
        ({"model": "m", "max_tokens": 64}, False, 64),  # OpenAI, /v1/completions, Anthropic
        ({"model": "m", "max_completion_tokens": 32, "max_tokens": 64}, False, 32),
        ({"model": "m", "max_completion_tokens": None, "max_tokens": 64}, False, 64),
        ({"model": "m", "max_output_tokens": 48}, False, 48),  # the Responses API
        ({"model": "m", "max_tokens": 1e12}, False, 2**32 - 1),
        ({"model": "m", "max_tokens": float("nan")}, False, 0),
        ({"model": "m"}, False, 0),
    ],
)
def test_the_most_a_reply_may_run_to(body: dict[str, Any], native: bool, tokens: int) -> None:
    assert max_reply(body, native) == tokens
