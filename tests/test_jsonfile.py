"""tinyinfer.jsonfile: JSON from files is bounded in size, depth and value count before parsing."""
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyinfer.jsonfile import JSONFileError, load_json, nesting_depth, value_bound

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30)


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _count(value) -> int:
    """Values json.loads builds, object keys included."""
    if isinstance(value, dict):
        return 1 + len(value) + sum(map(_count, value.values()))
    if isinstance(value, list):
        return 1 + sum(map(_count, value))
    return 1


@given(JSON_VALUES, st.booleans())
def test_depth_is_exact_and_the_value_bound_is_a_bound(value, ascii_only):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(json.loads(raw)) == _depth(value)
    assert nesting_depth(json.loads(raw), stop_after=1) == min(_depth(value), 2)
    assert value_bound(raw) >= _count(value)
    assert value_bound(json.dumps(value, separators=(",", ":")).encode()) >= _count(value)


@given(JSON_VALUES)
def test_round_trip_from_bytes_and_from_a_file(tmp_path_factory, value):
    raw = json.dumps({"v": value}).encode()
    assert load_json(raw, what="x", max_bytes=len(raw)) == {"v": value}
    path = tmp_path_factory.mktemp("j") / "x.json"
    path.write_bytes(raw)
    assert load_json(path, what="x", max_bytes=len(raw), max_depth=_depth(value) + 1) == {"v": value}


def test_brackets_inside_strings_are_not_structure():
    raw = json.dumps({"a": "[[[[{{{{" * 100, "b": ['\\"[[', '\\', '"]]]]']}).encode()
    assert load_json(raw, what="x", max_bytes=10_000, max_depth=2)["b"][2] == '"]]]]'


@pytest.mark.parametrize("raw, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nests arrays/objects more than 64 deep (the limit)"),
    (b"{\"a\":" * 5_000 + b"1" + b"}" * 5_000, "more than 64 deep"),
    (b"[" * 100_000, "more than 64 deep"),  # not even valid: still no RecursionError
    (b"{\"a\":" + b"[" * 99 + b"]" * 99 + b"}", "nests arrays/objects more than 64 deep (the limit)"),
    (b'{"a": NaN}', "NaN is not JSON"),
    (b'{"a": -Infinity}', "-Infinity is not JSON"),
    (b'{"a": 1e999}', "overflows to infinity"),
    (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"a": 1', "not valid JSON"),
    (b'{"a": "\xff"}', "not valid UTF-8"),
    (b"[1, 2]", "must be a JSON object at the top level, got JSON array"),
    (b'"text"', "got JSON string"),
])
def test_hostile_json_raises_a_named_error(raw, message):
    with pytest.raises(JSONFileError, match="^x") as e:
        load_json(raw, what="x", max_bytes=1 << 20)
    assert message in str(e.value)


def test_size_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # a sparse 1 TB file: reading it would never finish
    with pytest.raises(JSONFileError, match=r"big.json is 1,099,511,627,776 bytes, which exceeds the limit 1,000"):
        load_json(path, what=str(path), max_bytes=1000)


def test_value_count_limit_and_duplicate_keys():
    with pytest.raises(JSONFileError, match="holds up to 1,002 JSON values, which exceeds the limit 100"):
        load_json(b'{"a": [' + b",".join([b"0"] * 999) + b"]}", what="x", max_bytes=10_000, max_values=100)
    assert load_json(b'{"a": 1, "a": 2}', what="x", max_bytes=100) == {"a": 2}  # json's own rule
    with pytest.raises(JSONFileError, match="key 'a' appears twice"):
        load_json(b'{"a": 1, "a": 2}', what="x", max_bytes=100, unique_keys=True)
    assert load_json(b"[1]", what="x", max_bytes=100, expect_object=False) == [1]


def test_missing_file_and_wrong_source_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_json(tmp_path / "nothing.json", what="config", max_bytes=100)
    with pytest.raises(TypeError, match="path or bytes, got int"):
        load_json(3, what="x", max_bytes=100)
