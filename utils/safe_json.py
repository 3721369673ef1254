"""Reading JSON that came from outside (a manifest, an index, a request, an export's config) with bounded size and
nesting: Python's parser recurses once per level, so 100,000 nested brackets end in a RecursionError, not a
ValueError, and an unbounded file is read whole into memory."""
from __future__ import annotations

import json
import re

import numpy as np

MAX_DEPTH = 64  # deeper than any file or request of ours; far below Python's recursion limit
CHUNK = 1 << 22  # bytes scanned at once by nesting_depth
STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON text, not counting brackets inside strings (in chunks: a few times a
    chunk's size in memory, whatever the text's)."""
    codes = np.frombuffer(STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    deepest = level = 0
    for start in range(0, len(codes), CHUNK):
        c = codes[start:start + CHUNK]
        steps = ((c == ord("[")) | (c == ord("{"))).astype(np.int32) - ((c == ord("]")) | (c == ord("}")))
        levels = np.cumsum(steps) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def parse_json(text: str, max_depth: int = MAX_DEPTH):
    """json.loads with the nesting bounded: ValueError (as for any malformed JSON) past max_depth levels."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep (at most {max_depth})")
    return json.loads(text)


def read_json(path: str, max_bytes: int, max_depth: int = MAX_DEPTH):
    """A JSON file of at most max_bytes; OSError, UnicodeDecodeError or ValueError for anything unusable."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return parse_json(raw.decode("utf-8"), max_depth)
