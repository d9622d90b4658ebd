import pytest

from hopscommon import labels


def test_a_selector_is_key_value_pairs_sorted() -> None:
    assert labels.parse_selector(" zone = eu ,tier=big,") == (("tier", "big"), ("zone", "eu"))
    assert labels.parse_selector("") == ()
    assert labels.parse_selector("gpu=") == (("gpu", ""),)  # an empty value is a value
    assert labels.shown((("tier", "big"), ("zone", "eu"))) == "tier=big,zone=eu"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("zone", "expected KEY=VALUE, got 'zone'"),
        ("=eu", "expected KEY=VALUE, got '=eu'"),
        ("zone=eu,zone=us", "label zone asked as both 'eu' and 'us'"),
        ("k=" + "v" * 257, "at most 256 characters"),
        (",".join(f"k{i}=v" for i in range(65)), "at most 64 labels"),
    ],
)
def test_bad_selectors_say_why(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        labels.parse_selector(text)


def test_matching_is_exact_and_needs_every_label() -> None:
    host = {"zone": "eu-west", "tier": "big"}
    assert labels.matches(host, (("zone", "eu-west"),))
    assert labels.matches(host, ())
    assert not labels.matches(host, (("zone", "eu"),))  # no prefix
    assert not labels.matches(host, (("zone", "west"),))  # no substring
    assert not labels.matches(host, (("zone", "EU-WEST"),))  # no case folding
    assert not labels.matches(host, (("tier", "big"), ("gpu", "yes")))
    assert not labels.matches({"zone": ""}, (("region", ""),))  # absent is not empty
