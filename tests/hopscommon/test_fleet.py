from hopscommon.fleet import embeds_only, runs_one_at_a_time


def test_which_models_ollama_runs_with_one_slot() -> None:
    assert runs_one_at_a_time(("embedding",), "nomic-bert")
    assert not runs_one_at_a_time(("completion", "tools"), "llama")
    assert not runs_one_at_a_time(("embedding", "completion"), "bert")  # it can also generate
    assert runs_one_at_a_time(("completion", "vision"), "mllama")  # by architecture
    assert runs_one_at_a_time(("completion",), "nemotron_h_moe")
    # Ollama before 0.30 lists no capabilities: a BERT family is an embedding model.
    assert runs_one_at_a_time((), "bert") and runs_one_at_a_time((), "nomic-bert")
    assert not runs_one_at_a_time((), "llama")


def test_which_models_only_embed() -> None:
    assert embeds_only(("embedding",), "nomic-bert")
    assert not embeds_only(("embedding", "completion"), "bert")  # it can also generate
    assert not embeds_only(("completion", "vision"), "mllama")  # one slot, but it decodes
    assert embeds_only((), "bert") and not embeds_only((), "llama")  # before capabilities
