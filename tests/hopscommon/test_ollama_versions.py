from hopscommon.ollama_versions import GIB, version_key, vram_context_length


def test_versions_compare_as_versions() -> None:
    assert version_key("0.9.1") < version_key("0.12.0") < version_key("v0.15.5-rc1")
    assert version_key("0.15.5+cuda") == (0, 15, 5)
    assert version_key("") == (0,)


def test_the_automatic_context_length_follows_the_vram_from_0_15_5() -> None:
    assert vram_context_length("0.15.4", 80 * GIB) == 0  # older: not guessed
    assert vram_context_length("", 80 * GIB) == 0
    assert vram_context_length("0.15.5", 0) == 4096  # a CPU-only host
    assert vram_context_length("0.15.5", 24 * GIB - 1) == 4096
    assert vram_context_length("0.15.5", 24 * GIB) == 32768
    assert vram_context_length("0.16.0", 48 * GIB) == 262144
