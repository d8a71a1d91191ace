"""HPACK (RFC 7541): the header compression of HTTP/2, as much of it as a gRPC server needs.

Decoding is complete (static and dynamic table, table size updates, Huffman-coded strings), because
the client's encoder decides what it sends. Encoding is deliberately minimal: the server writes every
header as a literal that is never added to the dynamic table, so it keeps no encoder state and its
response headers can be precomputed bytes.

gRPC clients repeat the same few headers on every call; after the first call of a connection they are
mostly one-byte references into the dynamic table. Huffman-coded strings that do appear again (a
connection's first call, values sent without indexing) are decoded once and remembered.
"""

from __future__ import annotations

from collections import deque
from typing import Final


class HpackError(Exception):
    """The header block cannot be decoded: a connection error (COMPRESSION_ERROR) in HTTP/2."""


Header = tuple[bytes, bytes]

# RFC 7541 Appendix A.
STATIC_TABLE: Final[tuple[Header, ...]] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)

# RFC 7541 Appendix B gives a canonical Huffman code: each symbol's code follows from the code lengths
# alone (codes assigned in order of length, then symbol). Lengths of symbols 0-255 and EOS (256).
_CODE_LENGTHS_TEXT: Final = """
13 23 28 28 28 28 28 28 28 24 30 28 28 30 28 28
28 28 28 28 28 28 30 28 28 28 28 28 28 28 28 28
6 10 10 12 13 6 8 11 10 10 8 11 8 6 6 6
5 5 5 6 6 6 6 6 6 6 7 8 15 6 12 10
13 6 7 7 7 7 7 7 7 7 7 7 7 7 7 7
7 7 7 7 7 7 7 7 8 7 8 13 19 13 14 6
15 5 6 5 6 5 6 6 6 5 7 7 6 6 6 5
6 7 6 5 5 6 7 7 7 7 7 15 11 14 13 28
20 22 20 20 22 22 22 23 22 23 23 23 23 23 24 23
24 24 22 23 24 23 23 23 23 21 22 23 22 23 23 24
22 21 20 22 22 23 23 21 23 22 22 24 21 22 23 23
21 21 22 21 23 22 23 23 20 22 22 22 23 22 22 23
26 26 20 19 22 23 22 25 26 26 26 27 27 26 24 25
19 21 26 27 27 26 27 24 21 21 26 26 28 27 27 27
20 24 20 21 22 21 21 23 22 22 25 25 24 24 26 23
26 27 26 26 27 27 27 27 27 28 27 27 27 27 27 26
30
"""
_CODE_LENGTHS: Final = bytes(int(length) for length in _CODE_LENGTHS_TEXT.split())
_EOS: Final = 256


def _canonical_codes() -> dict[tuple[int, int], int]:
    """(length, code) -> symbol for the canonical code with `_CODE_LENGTHS`."""
    order = sorted(range(len(_CODE_LENGTHS)), key=lambda symbol: (_CODE_LENGTHS[symbol], symbol))
    codes: dict[tuple[int, int], int] = {}
    code = -1
    length = _CODE_LENGTHS[order[0]]
    for symbol in order:
        code = (code + 1) << (_CODE_LENGTHS[symbol] - length)
        length = _CODE_LENGTHS[symbol]
        codes[(length, code)] = symbol
    return codes


_DECODE: Final = _canonical_codes()
_SHORTEST: Final = min(_CODE_LENGTHS)
_LONGEST: Final = max(_CODE_LENGTHS)


def huffman_decode(data: bytes) -> bytes:
    value = int.from_bytes(data, "big")
    remaining = len(data) * 8
    out = bytearray()
    decode = _DECODE
    while remaining >= _SHORTEST:
        length = _SHORTEST
        while True:
            if length > remaining:
                # Only padding is left: at most 7 bits, all ones (the most significant bits of EOS).
                if remaining > 7 or value & ((1 << remaining) - 1) != (1 << remaining) - 1:
                    raise HpackError("invalid Huffman padding")
                return bytes(out)
            code = (value >> (remaining - length)) & ((1 << length) - 1)
            symbol = decode.get((length, code))
            if symbol is not None:
                break
            length += 1
            if length > _LONGEST:
                raise HpackError("invalid Huffman code")
        if symbol == _EOS:
            raise HpackError("Huffman-coded string contains EOS")
        out.append(symbol)
        remaining -= length
    if value & ((1 << remaining) - 1) != (1 << remaining) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def decode_integer(data: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """An N-bit-prefix integer starting at `position`: (value, position after it)."""
    limit = (1 << prefix_bits) - 1
    value = data[position] & limit
    position += 1
    if value < limit:
        return value, position
    shift = 0
    while True:
        if position >= len(data):
            raise HpackError("header block ends inside an integer")
        byte = data[position]
        position += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 28:
            raise HpackError("integer in header block is too large")


def encode_integer(value: int, prefix_bits: int, first_byte_flags: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(name: bytes, value: bytes) -> bytes:
    """A header as 'literal never indexed, new name', without Huffman coding: no encoder state."""
    return b"\x10" + encode_integer(len(name), 7) + name + encode_integer(len(value), 7) + value


def encode_literal_indexed_name(static_index: int, value: bytes) -> bytes:
    """'Literal without indexing' whose name is a static-table entry."""
    return encode_integer(static_index, 4) + encode_integer(len(value), 7) + value


_ENTRY_OVERHEAD: Final = 32
_HUFFMAN_MEMO_LIMIT: Final = 1024
_BLOCK_MEMO_LIMIT: Final = 256


class Decoder:
    """One connection's decoding state (its dynamic table); feed it every header block in order."""

    def __init__(self, max_table_size: int = 4096) -> None:
        # The most the peer may use: what this side advertised as SETTINGS_HEADER_TABLE_SIZE.
        self.max_allowed_size = max_table_size
        self._max_size = max_table_size
        self._size = 0
        self._table: deque[Header] = deque()
        self._huffman: dict[bytes, bytes] = {}
        # Blocks whose decoding left the table unchanged decode the same way until the table changes:
        # a client's repeated calls send the same few bytes of indexed references every time.
        self._blocks: dict[bytes, list[Header]] = {}
        self._changed = False

    def decode(self, block: bytes) -> list[Header]:
        """The block's headers, in order (the list may be shared: callers must not modify it)."""
        cached = self._blocks.get(block)
        if cached is not None:
            return cached
        self._changed = False
        headers = self._decode(block)
        if self._changed:
            self._blocks.clear()
        else:
            if len(self._blocks) >= _BLOCK_MEMO_LIMIT:
                self._blocks.clear()
            self._blocks[block] = headers
        return headers

    def _decode(self, block: bytes) -> list[Header]:
        headers: list[Header] = []
        position = 0
        end = len(block)
        static = STATIC_TABLE
        static_count = len(static)
        while position < end:
            byte = block[position]
            if byte & 0x80:  # indexed header field
                index, position = decode_integer(block, position, 7)
                headers.append(self._entry(index, static, static_count))
                continue
            if byte & 0x40:  # literal with incremental indexing
                index, position = decode_integer(block, position, 6)
                header, position = self._literal(block, position, index, static, static_count)
                headers.append(header)
                self._add(header)
                continue
            if byte & 0x20:  # dynamic table size update
                size, position = decode_integer(block, position, 5)
                if size > self.max_allowed_size:
                    raise HpackError(f"table size update to {size} exceeds {self.max_allowed_size}")
                self._max_size = size
                self._changed = True
                self._evict(0)
                continue
            # literal without indexing (0000) or never indexed (0001)
            index, position = decode_integer(block, position, 4)
            header, position = self._literal(block, position, index, static, static_count)
            headers.append(header)
        return headers

    def _entry(self, index: int, static: tuple[Header, ...], static_count: int) -> Header:
        if 0 < index <= static_count:
            return static[index - 1]
        dynamic = index - static_count - 1
        if index == 0 or dynamic >= len(self._table):
            raise HpackError(f"header index {index} is not in the table")
        return self._table[dynamic]

    def _literal(
        self, block: bytes, position: int, index: int, static: tuple[Header, ...], static_count: int
    ) -> tuple[Header, int]:
        if index:
            name = self._entry(index, static, static_count)[0]
        else:
            name, position = self._string(block, position)
        value, position = self._string(block, position)
        return (name, value), position

    def _string(self, block: bytes, position: int) -> tuple[bytes, int]:
        if position >= len(block):
            raise HpackError("header block ends before a string")
        huffman = block[position] & 0x80
        length, position = decode_integer(block, position, 7)
        end = position + length
        if end > len(block):
            raise HpackError("header string runs past the end of the block")
        raw = block[position:end]
        if not huffman:
            return raw, end
        decoded = self._huffman.get(raw)
        if decoded is None:
            decoded = huffman_decode(raw)
            if len(self._huffman) >= _HUFFMAN_MEMO_LIMIT:
                self._huffman.clear()
            self._huffman[raw] = decoded
        return decoded, end

    def _add(self, header: Header) -> None:
        self._changed = True
        size = len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
        if size > self._max_size:
            self._table.clear()
            self._size = 0
            return
        self._evict(size)
        self._table.appendleft(header)
        self._size += size

    def _evict(self, room: int) -> None:
        while self._table and self._size + room > self._max_size:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
