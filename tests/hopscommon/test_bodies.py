"""Reading zstd and multipart bodies: bounded, and exact about where a form part ends."""

from __future__ import annotations

import io

import pytest
import zstandard

from hopscommon import bodies


def test_zstd_round_trips_with_and_without_a_declared_size() -> None:
    data = b'{"model":"llama3.2","input":"hi"}'
    assert bodies.unzstd(zstandard.ZstdCompressor().compress(data)) == data
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as writer:
        writer.write(data)  # streamed: the frame header carries no content size
    assert bodies.unzstd(out.getvalue()) == data


def test_zstd_output_is_capped_and_garbage_refused() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"a" * 5000)
    assert len(bodies.unzstd(bomb, 5000)) == 5000
    with pytest.raises(bodies.DecodedTooLarge):
        bodies.unzstd(bomb, 4999)
    with pytest.raises(bodies.BodyDecodeError, match="invalid zstd body"):
        bodies.unzstd(b"plain text")


def test_boundary_only_for_multipart_form_data() -> None:
    assert bodies.boundary_of('multipart/form-data; charset=utf-8; boundary="a b"') == b"a b"
    assert bodies.boundary_of("Multipart/Form-Data;boundary=xyz") == b"xyz"
    assert bodies.boundary_of("application/json") is None
    assert bodies.boundary_of("multipart/form-data") is None


def _form(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for name, value in parts:
        out += b'--BB\r\nContent-Disposition: form-data; name="' + name.encode() + b'"'
        out += b"\r\nContent-Type: application/octet-stream\r\n\r\n" + value + b"\r\n"
    return out + b"--BB--\r\n"


def test_form_fields_keep_content_that_contains_the_marker() -> None:
    audio = b"RIFF\r\n--BBnot-a-boundary\r\n--BB and more"
    body = _form(("file", audio), ("model", b"whisper:small"), ("other", b"x"))
    fields = bodies.form_fields(body, b"BB", frozenset({"model", "file"}))
    assert fields == {"file": audio, "model": b"whisper:small"}


def test_form_fields_refuse_a_broken_form() -> None:
    with pytest.raises(bodies.BodyDecodeError, match="boundary"):
        bodies.form_fields(b"no boundary here", b"BB", frozenset({"model"}))
    unclosed = b'--BB\r\nContent-Disposition: form-data; name="model"\r\n\r\nx'
    with pytest.raises(bodies.BodyDecodeError, match="closing boundary"):
        bodies.form_fields(unclosed, b"BB", frozenset({"model"}))
