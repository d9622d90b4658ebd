import pytest

from hopscommon import names


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:latest", "llama3:latest"),
        ("library/llama3", "llama3:latest"),
        ("registry.ollama.ai/library/llama3:8b", "llama3:8b"),
        ("  llama3.2  ", "llama3.2:latest"),
        ("user/model:tag", "user/model:tag"),
        ("hf.co/user/repo:Q4_K_M", "hf.co/user/repo:Q4_K_M"),
        ("host:5000/ns/m", "host:5000/ns/m:latest"),
        ("https://registry.ollama.ai/library/qwen2.5:7b", "qwen2.5:7b"),
    ],
)
def test_display_form_matches_ollama(raw: str, display: str) -> None:
    assert names.normalize(raw) == display


@pytest.mark.parametrize("raw", ["", "   ", "a/b/c/d", "bad name", "m@sha256:abc", ":tag", "-x"])
def test_invalid_names_are_rejected(raw: str) -> None:
    assert names.parse(raw) is None


def test_matching_is_case_insensitive_and_tag_defaults() -> None:
    assert names.match_key("LLAMA3:Latest") == names.match_key("llama3")
    assert names.match_key("llama3:8b") != names.match_key("llama3")


def test_full_name_is_fully_qualified() -> None:
    parsed = names.parse("qwen2.5")
    assert parsed is not None
    assert parsed.full == "registry.ollama.ai/library/qwen2.5:latest"


@pytest.mark.parametrize(
    ("raw", "display", "cloud"),
    [
        ("qwen3:8b:local", "qwen3:8b", False),  # :local asks for the local model: dropped
        ("llama3.2:LOCAL", "llama3.2:latest", False),
        ("gpt-oss:120b-cloud", "gpt-oss:120b-cloud", True),
        ("gpt-oss:120b:cloud", "gpt-oss:120b-cloud", True),  # the same cloud model
        ("kimi-k2:cloud", "kimi-k2:cloud", True),
        ("x:cloud:local", None, False),  # both suffixes: invalid
        ("x:1b-cloud:local", None, False),
        ("llama3.2", "llama3.2:latest", False),
    ],
)
def test_local_and_cloud_suffixes(raw: str, display: str | None, cloud: bool) -> None:
    assert names.normalize(raw) == display
    assert names.is_cloud(names.match_key(raw) or "") is cloud
