from hopscommon.ollama_versions import (
    GIB,
    automatic_context,
    automatic_context_length,
    version_key,
)


def test_versions_compare_as_versions() -> None:
    assert version_key("0.9.1") < version_key("0.12.0") < version_key("v0.15.5-rc1")
    assert version_key("0.15.5+cuda") == (0, 15, 5)
    assert version_key("") == (0,)


def test_the_automatic_context_length_follows_the_version_and_from_0_15_5_the_vram() -> None:
    assert automatic_context_length("", 80 * GIB) == 0  # no version: no telling
    assert automatic_context_length("0.0.0", 80 * GIB) == 0  # built from source: neither
    assert automatic_context_length("0.6.6", 80 * GIB) == 2048  # the first fixed default
    assert automatic_context_length("0.6.7", 80 * GIB) == 4096  # raised in 0.6.7
    assert automatic_context_length("0.15.4", 80 * GIB) == 4096  # whatever the VRAM
    assert automatic_context_length("0.15.5", 0) == 4096  # a CPU-only host
    assert automatic_context_length("0.15.5", 24 * GIB - 1) == 4096
    assert automatic_context_length("0.15.5", 24 * GIB) == 32768
    assert automatic_context_length("0.16.0", 48 * GIB) == 262144


def test_what_picked_the_automatic_context_length_is_told() -> None:
    assert automatic_context("0.0.0", 80 * GIB) == (0, "")
    assert automatic_context("0.6.6", 80 * GIB) == (2048, "version")
    assert automatic_context("0.15.4", 80 * GIB) == (4096, "version")
    assert automatic_context("0.15.5", 0) == (4096, "vram")  # picked by the (missing) VRAM
    assert automatic_context("0.15.5", 24 * GIB) == (32768, "vram")
