from starlette.datastructures import Headers

from edge import inventory as inv
from edge.reading import session_key
from hopscommon.fleet import Details, InstalledModel, LoadedModel


def _node(
    node_id: str, version: str, models: tuple[str, ...] = (), loaded: tuple[str, ...] = ()
) -> inv.InventoryNode:
    return inv.InventoryNode(
        node_id,
        f"http://{node_id}",
        True,
        version,
        tuple(InstalledModel(name=m, modified_at=float(i)) for i, m in enumerate(models)),
        tuple(LoadedModel(name=m, expires_at=100.0 + i) for i, m in enumerate(loaded)),
    )


def test_lowest_version_is_compared_as_versions_not_strings() -> None:
    fleet = inv.Inventory(nodes=(_node("a", "0.12.6"), _node("b", "0.9.1"), _node("c", "0.10.0")))
    assert inv.lowest_version(fleet) == "0.9.1"  # as strings, "0.10.0" would sort first
    assert (
        inv.lowest_version(inv.Inventory(nodes=(_node("a", "v0.33.0-rc2"), _node("b", "0.33.0"))))
        == "v0.33.0-rc2"
    )
    assert inv.lowest_version(inv.Inventory()) == "0.0.0"


def test_tags_are_a_union_and_ps_lists_every_loaded_copy() -> None:
    fleet = inv.Inventory(
        nodes=(
            _node("a", "1", ("m:latest", "x:latest"), ("m:latest",)),
            _node("b", "1", ("m:latest",), ("m:latest",)),
        )
    )
    assert [m["name"] for m in inv.tags(fleet)["models"]] == ["x:latest", "m:latest"]
    assert [m["name"] for m in inv.ps(fleet)["models"]] == ["m:latest", "m:latest"]
    assert inv.openai_models(inv.Inventory())["data"] is None


def test_tags_carry_the_trained_context_length_when_a_host_reports_it() -> None:
    known = InstalledModel(name="m:latest", details=Details(context_length=131072))
    node = inv.InventoryNode(
        "a", "http://a", True, "1", (known, InstalledModel(name="x:latest")), ()
    )
    details = {m["name"]: m["details"] for m in inv.tags(inv.Inventory(nodes=(node,)))["models"]}
    assert details["m:latest"]["context_length"] == 131072
    assert "context_length" not in details["x:latest"]  # omitted when unknown, as Ollama does


def test_fail_open_prefers_hosts_with_the_model_loaded() -> None:
    fleet = inv.Inventory(
        nodes=(_node("cold", "1", ("m:latest",)), _node("warm", "1", ("m:latest",), ("m:latest",)))
    )
    assert [n.node_id for n in fleet.fail_open_candidates("m:latest", set())] == ["warm", "cold"]


def test_session_key_sources() -> None:
    assert session_key(Headers({"x-hops-session": "abc"}), {}) == "abc"
    assert session_key(Headers({"x-openwebui-chat-id": "chat-1"}), {}) == "chat-1"
    first = [{"role": "user", "content": "hello"}]
    key = session_key(Headers({}), {"messages": first})
    later = session_key(
        Headers({}),
        {
            "messages": [
                *first,
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "more"},
            ]
        },
    )
    assert key.startswith("h:") and key != session_key(
        Headers({}), {"messages": [{"role": "user", "content": "other"}]}
    )
    assert session_key(Headers({}), {}) == ""
    assert later == key  # every turn of one conversation shares its key


def test_session_key_of_responses_and_anthropic_bodies() -> None:
    """The Responses API's ``input`` items (and ``instructions``) and Anthropic's ``system``
    key a conversation as chat messages do; a different system prompt is another one."""
    opening = [{"role": "user", "content": "plan a trip"}]
    later = [*opening, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]
    first = session_key(Headers({}), {"instructions": "terse", "input": opening})
    assert first.startswith("h:")
    assert session_key(Headers({}), {"instructions": "terse", "input": later}) == first
    assert session_key(Headers({}), {"instructions": "chatty", "input": later}) != first
    text = session_key(Headers({}), {"input": "plan a trip"})
    assert text.startswith("h:") and text != session_key(Headers({}), {"input": "other"})
    claude = session_key(Headers({}), {"system": "be kind", "messages": later})
    assert claude == session_key(Headers({}), {"system": "be kind", "messages": opening})
    assert claude != session_key(Headers({}), {"messages": opening})


def test_session_key_from_openai_prompt_cache_key() -> None:
    """OpenAI's ``prompt_cache_key`` (a client's key for one conversation) keys the session, so a
    conversation whose opening changes (compacted history) keeps its host."""
    one = session_key(Headers({}), {"prompt_cache_key": "conv-1", "input": "a"})
    assert one == session_key(Headers({}), {"prompt_cache_key": "conv-1", "input": "b"})
    assert one != session_key(Headers({}), {"prompt_cache_key": "conv-2", "input": "a"})
    assert session_key(Headers({"x-hops-session": "s"}), {"prompt_cache_key": "conv-1"}) == "s"
