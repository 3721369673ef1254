"""JSON from outside is parsed with its size and nesting bounded: past the bounds a ValueError, like any bad JSON."""
import json

import pytest

import utils.safe_json
from utils.safe_json import nesting_depth, parse_json, read_json


@pytest.mark.parametrize("chunk", [3, 1 << 22])  # a level carried across chunk boundaries counts the same
def test_nesting_depth_counts_brackets_outside_strings(monkeypatch, chunk):
    monkeypatch.setattr(utils.safe_json, "CHUNK", chunk)
    assert nesting_depth("") == 0 and nesting_depth("1") == 0 and nesting_depth("[]") == 1
    assert nesting_depth('{"a": [1, {"b": "[[[[[\\"]]"}]}') == 3  # brackets (and an escaped quote) in a string
    assert nesting_depth("[[[]]][[]]") == 3


def test_deep_json_is_a_value_error_not_a_recursion_error():
    assert parse_json('{"a": [[1]]}') == {"a": [[1]]}
    value = parse_json("[" * 64 + "]" * 64)  # the bound itself is allowed
    for _ in range(63):
        (value,) = value
    assert value == []
    with pytest.raises(ValueError, match=r"^JSON nested 100000 levels deep \(at most 64\)$"):
        parse_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"^JSON nested 65 levels deep"):
        parse_json("[" * 65 + "]" * 65)


def test_read_json_bounds_the_bytes_read(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"a": "b" * 100}))
    assert read_json(str(path), 200) == {"a": "b" * 100}
    with pytest.raises(ValueError, match=r"^larger than 50 bytes$"):
        read_json(str(path), 50)
