"""Deflated bus messages: what pack_compressed sends, unpack reads; a bomb or a broken stream is a DecodeError."""
from __future__ import annotations

import zlib

import pytest

from shared.codec import DEFLATED, MAX_INFLATED, pack, pack_compressed, unpack, unpack_map
from shared.errors import DecodeError


def test_small_messages_stay_plain_and_large_ones_are_deflated_both_ways() -> None:
    small = {"node": "n", "workloads": {}}
    assert pack_compressed(small) == pack(small)
    large = {"node": "n", "workloads": {f"w{i}": {"rules": [{"path": "/bin/sleep", "action": "Block"}]}
                                        for i in range(5000)}}
    sent = pack_compressed(large)
    assert sent.startswith(DEFLATED) and len(sent) < len(pack(large)) // 10
    assert unpack(sent) == large and unpack_map(sent, ("node",)) == large


def test_a_bomb_a_truncated_stream_and_garbage_after_the_tag_are_refused() -> None:
    bomb = DEFLATED + zlib.compress(b"\x00" * (MAX_INFLATED + 1))
    with pytest.raises(DecodeError, match="inflates beyond"):
        unpack(bomb)
    whole = pack_compressed({"x": "y" * 100_000})
    with pytest.raises(DecodeError, match="truncated"):
        unpack(whole[:-10])
    with pytest.raises(DecodeError, match="not a deflated message"):
        unpack(DEFLATED + b"garbage")
    with pytest.raises(DecodeError):  # 0xc1 alone is still garbage msgpack, as before
        unpack(b"\xc1")
