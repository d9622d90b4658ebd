from hopscommon.tokens import UNITS_PER_TOKEN, text_units
from ollamasim import textgen


def test_text_is_measured_as_a_byte_level_tokenizer_takes_it() -> None:
    assert text_units("hello") == 5
    assert text_units("文字") == 8  # three bytes a character: a token each
    assert text_units("да") == 5  # two bytes a character: two characters a token
    assert text_units("") == 0
    assert text_units("\ud800") == 4  # a lone surrogate (JSON allows it) does not raise


def test_the_simulator_counts_and_cuts_in_the_same_tokens() -> None:
    document = "文" * 5000
    assert textgen.count_tokens(document) == 5000
    kept = textgen.last_tokens(document, 4096)
    assert kept == "文" * 4096 and textgen.count_tokens(kept) == 4096
    mixed = "word " * 100 + "文" * 10
    assert textgen.last_tokens(mixed, 12) == "rd word " + "文" * 10  # 8 units + 40
    assert UNITS_PER_TOKEN == 4
