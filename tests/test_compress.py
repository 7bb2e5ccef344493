"""The paper's compress-rate grammar, parsed without eval."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import build_model
from models.compress import CompressRateError, as_rate_list, format_compress_rate, kept_width, parse_compress_rate


def test_paper_strings_parse_to_the_documented_lists():
    assert parse_compress_rate("[0.21]*7+[0.75]*5") == [0.21] * 7 + [0.75] * 5
    assert parse_compress_rate("[0.]+[0.18]*29") == [0.0] + [0.18] * 29
    assert parse_compress_rate("0.1*3") == [0.1] * 3
    assert parse_compress_rate("[0.1]") == parse_compress_rate("0.1") == [0.1]


@pytest.mark.parametrize("bad, token", [("[0.1]*", "[0.1]*"), ("abc", "abc"), ("[0.1]+", "''"),
                                        ("__import__('os')", "__import__"), ("0.1**3", "0.1**3")])
def test_malformed_string_names_the_bad_token(bad, token):
    with pytest.raises(CompressRateError, match="bad compress-rate term") as info:
        parse_compress_rate(bad)
    assert token.strip("'") in str(info.value)


@pytest.mark.parametrize("bad", ["[1.0]", "[1.5]*2", "[0.2]+[2.]"])
def test_rate_outside_unit_interval_is_rejected(bad):
    with pytest.raises(CompressRateError, match=r"outside \[0, 1\)"):
        parse_compress_rate(bad)


def test_list_too_short_for_arch_names_expected_length():
    with pytest.raises(CompressRateError, match="has 5 entries but 30 are expected for resnet_56"):
        build_model("resnet_56", "[0.1]*5")


def test_extra_entries_are_ignored_like_the_paper():
    assert len(as_rate_list("[0.]*100", 30)) == 100
    build_model("resnet_56", "[0.]*100")


def test_kept_width_floors_like_the_paper_models():
    assert kept_width(64, 0.18) == 52
    assert kept_width(150, 0.08) == 138


rates = st.floats(min_value=0.0, max_value=0.99, allow_nan=False).map(lambda x: round(x, 3))
terms = st.lists(st.tuples(rates, st.integers(min_value=1, max_value=40), st.booleans(), st.booleans()),
                 min_size=1, max_size=8)


@given(terms)
def test_generated_strings_parse_to_the_repeated_values(parts):
    text = "+".join((f"[{value}]" if bracket else f"{value}") + (f"*{count}" if count > 1 or star else "")
                    for value, count, bracket, star in parts)
    expected = [value for value, count, _, _ in parts for _ in range(count)]
    assert parse_compress_rate(text) == expected


@given(st.lists(rates, min_size=1, max_size=60))
def test_format_round_trips(values):
    assert parse_compress_rate(format_compress_rate(values)) == values


@given(st.text(alphabet="[]*+.0123456789ab ", min_size=1, max_size=20))
def test_any_string_parses_or_raises_compress_rate_error(text):
    try:
        result = parse_compress_rate(text)
    except CompressRateError:
        return
    assert all(0.0 <= r < 1.0 for r in result)


@given(st.text())
def test_arbitrary_text_parses_or_raises_only_compress_rate_error(text):
    try:
        result = parse_compress_rate(text)
    except CompressRateError as error:
        assert "\n" not in str(error)
        return
    assert result and all(0.0 <= r < 1.0 for r in result)


@given(st.lists(st.tuples(st.text(alphabet="0123456789.", min_size=1, max_size=12),
                          st.integers(min_value=0, max_value=10**30)), min_size=1, max_size=4))
def test_any_repeat_count_parses_or_raises_only_compress_rate_error(terms):
    text = "+".join(f"[{value}]*{count}" for value, count in terms)
    try:
        result = parse_compress_rate(text)
    except CompressRateError:
        return
    assert len(result) == sum(count for _, count in terms)
