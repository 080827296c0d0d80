import pytest

from effzoo.errors import ConfigError
from effzoo.sizes import SizeSpec, parse_size


@pytest.mark.parametrize("text,expected", [
    ("0.5B", SizeSpec("0.5B")), ("0.5b", SizeSpec("0.5B")), ("500M", SizeSpec("0.5B")), ("500m", SizeSpec("0.5B")),
    ("1.5B", SizeSpec("1.5B")), ("1500M", SizeSpec("1.5B")), ("3B", SizeSpec("3B")), ("3000m", SizeSpec("3B")),
    ("0.5Bx8", SizeSpec("0.5B", 8)), ("1.5b x 8", SizeSpec("1.5B", 8)), ("tiny", SizeSpec("tiny")),
    ("TINY", SizeSpec("tiny")), ("small", SizeSpec("small")), ("tinyx4", SizeSpec("tiny", 4)), ("125M", SizeSpec("125M")),
])
def test_sizes_normalise_to_one_spelling(text, expected):
    assert parse_size(text) == expected


def test_moe_size_prints_back():
    assert str(parse_size("500Mx8")) == "0.5Bx8"


@pytest.mark.parametrize("bad", ["", "big", "0.5", "0.5Q", "1.5Bx", "tinyxq"])
def test_bad_sizes_raise_config_error(bad):
    with pytest.raises(ConfigError, match="size"):
        parse_size(bad)
