"""Which runner options a request names, and when Ollama reloads for them."""

from __future__ import annotations

from hopscommon.runner_options import (
    describe,
    from_map,
    needs_reload,
    runner_options,
    with_adapters,
    with_defaults,
)


def test_the_values_named_are_kept_sorted_and_run_as_no_options_at_the_defaults() -> None:
    assert runner_options(None) == ()
    assert runner_options({"num_ctx": 8192, "temperature": 0.2}) == ()
    named = {"num_batch": 512, "main_gpu": 0, "num_thread": 0, "num_gpu": -7}
    defaults = (("main_gpu", 0), ("num_batch", 512), ("num_gpu", -1), ("num_thread", 0))
    assert runner_options(named) == defaults  # named, so they stand over a modelfile's
    assert with_defaults((), defaults) == () and not needs_reload((), defaults)
    assert runner_options({"num_thread": 8.0, "num_gpu": 0, "use_mmap": False}) == (
        ("num_gpu", 0),  # 0 is no layers on the GPU, not "unset"
        ("num_thread", 8),
        ("use_mmap", 0),
    )
    assert runner_options({"use_mmap": True}) == (("use_mmap", 1),)
    assert with_defaults((), runner_options({"num_gpu": -5})) == ()  # any negative: Ollama's


def test_values_of_the_wrong_type_are_left_to_the_host() -> None:
    bad = {"num_batch": True, "num_thread": "8", "num_gpu": float("nan"), "main_gpu": 2**40}
    assert runner_options({**bad, "use_mmap": 1}) == ()
    assert runner_options([("num_gpu", 3)]) == ()


def test_automatic_num_gpu_matches_any_instance_and_every_other_option_must_match() -> None:
    loaded = runner_options({"num_gpu": 20, "num_thread": 4})
    assert not needs_reload(loaded, runner_options({"num_thread": 4}))
    assert needs_reload(loaded, runner_options({"num_thread": 4, "num_gpu": 10}))
    assert needs_reload(loaded, ())  # num_thread back to the default
    assert needs_reload((), runner_options({"num_gpu": 20}))
    assert needs_reload((), runner_options({"use_mmap": True}))  # unset is not true
    assert not needs_reload((), ())


def test_the_wire_map_keeps_known_names_and_reads_use_mmap_as_a_flag() -> None:
    assert from_map({"num_gpu": 3, "use_mmap": 0, "num_ctx": 4096, "bogus": 1}) == (
        ("num_gpu", 3),
        ("use_mmap", 0),
    )
    assert from_map({"num_batch": 512}) == (("num_batch", 512),)


def test_described_as_one_word() -> None:
    shown = describe(runner_options({"num_gpu": 20, "use_mmap": False, "num_thread": 8}))
    assert shown == "num_gpu=20,num_thread=8,use_mmap=false"
    assert describe(()) == ""


def test_a_request_runs_with_the_options_it_names_over_its_modelfiles() -> None:
    defaults = (("num_gpu", 10), ("num_thread", 4))
    asked = (("num_batch", 64), ("num_thread", 8))
    assert with_defaults(defaults, asked) == (("num_batch", 64), ("num_gpu", 10), ("num_thread", 8))
    assert with_defaults((), asked) == asked and with_defaults(defaults, ()) == defaults
    # Ollama's defaults named stand over the modelfile's values (routes.go modelOptions).
    assert with_defaults(defaults, (("num_gpu", -1), ("num_thread", 0))) == ()
    # A modelfile's num_gpu 20 asked back to Ollama's choice: any instance will do.
    assert not needs_reload(
        (("num_gpu", 20),), with_defaults((("num_gpu", 20),), (("num_gpu", -1),))
    )
    assert needs_reload(
        (("num_batch", 256),), with_defaults((("num_batch", 256),), (("num_batch", 512),))
    )


def test_adapters_are_kept_with_the_options_and_no_request_can_name_them() -> None:
    tuned = with_adapters((("num_thread", 4),), "0123456789abcdef" * 4)
    assert tuned == (("adapters", 0x0123456789ABCDE), ("num_thread", 4))
    assert with_adapters(tuned[1:], "") == tuned[1:]
    assert needs_reload(tuned, tuned[1:]) and needs_reload(tuned[1:], tuned)
    assert not needs_reload(tuned, with_defaults(tuned, ()))  # the modelfile's stand
    assert runner_options({"adapters": 5}) == from_map({"adapters": 5}) == ()
    assert describe(tuned) == "adapters=0123456789ab,num_thread=4"
