"""String arrays in a GGUF header (tokenizer vocabularies, merges) are skipped a window at a time; the
result must be that of reading the strings one by one: the same end, or the same error at the same
place, whatever the strings hold (long ones, zero bytes that look like lengths, a truncated file)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from gguf_recipe.model.header import GGUFReadError, parse_header

PATH = Path("m.gguf")
KEY = "tokenizer.ggml.tokens"


def _header(strings: list[bytes], count: int | None = None, tail: bytes = b"") -> tuple[bytes, int]:
    """A GGUF header with one key holding ``strings`` as an array that claims ``count`` items; also
    the offset of the first string."""
    key = KEY.encode()
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    head += struct.pack("<IIQ", 9, 8, len(strings) if count is None else count)
    return head + b"".join(struct.pack("<Q", len(s)) + s for s in strings) + tail, len(head)


def _one_by_one(data: bytes, start: int, count: int) -> int | str:
    """The reference walk: the end of the array, or the error message."""
    pos, end = start, len(data)
    if count <= end:
        for _ in range(count):
            if pos + 8 > end:
                break
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        else:
            if pos <= end:
                return pos
    need = count * 8 if count > end else count * 8 + pos - start
    return (
        f"{PATH}: truncated or corrupt GGUF header (unexpected end of file): reading array {KEY!r} "
        f"needs bytes {start}..{start + need} but the file has {end} bytes"
    )


def _parsed(data: bytes) -> int | str:
    try:
        header = parse_header(memoryview(data), PATH, strict=False)
    except GGUFReadError as exc:
        return str(exc)
    return len(header.kvs[0].raw) + 24  # the key/value starts after magic, version and the counts


def _vocabulary(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        r = rng.random()
        size = rng.randint(0, 24) if r < 0.8 else (0 if r < 0.85 else rng.randint(250, 700))
        if rng.random() < 0.2:
            body = bytes(size)  # zero bytes inside strings read as short lengths
        else:
            body = bytes(
                rng.choice((0, 1, 7, 65, 255)) if rng.random() < 0.3 else rng.randrange(256)
                for _ in range(size)
            )
        out.append(body)
    return out


@pytest.mark.parametrize("tail", range(0, 17, 3))
def test_a_vocabulary_is_skipped_to_its_end(tail: int) -> None:
    strings = [f"<t{i}>".encode() for i in range(50_000)] + [b"x" * 300, b"", b"\x00" * 40] * 100
    data, start = _header(strings, tail=b"\x01" * tail)
    end = start + sum(8 + len(s) for s in strings)
    assert _one_by_one(data, start, len(strings)) == end
    assert _parsed(data) == end


@pytest.mark.parametrize("seed", range(48))
def test_any_strings_give_the_one_by_one_result(seed: int) -> None:
    rng = random.Random(seed)
    strings = _vocabulary(rng, rng.choice((10, 70, 500, 3000)))
    data, start = _header(strings, count=len(strings) + rng.choice((0, 0, 0, -3, 5, 10**6)))
    if rng.random() < 0.3:
        data = data[: rng.randint(start, len(data))]  # truncated
    if rng.random() < 0.3:
        data += bytes(rng.randint(0, 5000))  # zeros after the array: a sparse file's hole
    if rng.random() < 0.2:  # a corrupt length somewhere
        pos = rng.randrange(start, len(data)) if len(data) > start else start
        data = data[:pos] + struct.pack("<Q", rng.choice((300, 2**40, 2**63 + 5))) + data[pos + 8 :]
    count = struct.unpack_from("<Q", data, start - 8)[0]
    assert _parsed(data) == _one_by_one(data, start, count)


def test_an_array_claiming_more_strings_than_the_file_has_bytes() -> None:
    data, start = _header([b"ab"] * 10, count=10**9)
    msg = _parsed(data)
    assert msg == _one_by_one(data, start, 10**9)
    assert isinstance(msg, str) and "truncated or corrupt GGUF header" in msg


def test_a_length_past_the_end_names_the_whole_array() -> None:
    strings = [b"tok"] * 200
    data, start = _header(strings)
    last = start + 199 * 11
    data = data[:last] + struct.pack("<Q", 2**62) + data[last + 8 :]
    msg = _parsed(data)
    assert msg == _one_by_one(data, start, 200)
    assert isinstance(msg, str) and f"reading array {KEY!r} needs bytes {start}.." in msg


def test_string_array_values_decode_with_replacement() -> None:
    strings = [b"", b"a", "ß→".encode(), b"\xff\xfe bad", b"\x00" * 3]
    data, _ = _header(strings, tail=b"")
    value = parse_header(memoryview(data), PATH, strict=False).kvs[0].value
    assert value == [s.decode("utf-8", errors="replace") for s in strings]
