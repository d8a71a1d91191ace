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
    # Bits are taken from a small accumulator a byte at a time, so the cost is linear in the string's
    # length (shifting one big integer of the whole string per symbol would be quadratic).
    out = bytearray()
    decode = _DECODE
    accumulator = 0
    bits = 0
    for byte in data:
        accumulator = (accumulator << 8) | byte
        bits += 8
        while bits >= _SHORTEST:
            length = _SHORTEST
            symbol = None
            while length <= bits:
                symbol = decode.get((length, (accumulator >> (bits - length)) & ((1 << length) - 1)))
                if symbol is not None:
                    break
                length += 1
                if length > _LONGEST:
                    raise HpackError("invalid Huffman code")
            if symbol is None:
                break  # the next symbol needs more bits
            if symbol == _EOS:
                raise HpackError("Huffman-coded string contains EOS")
            out.append(symbol)
            bits -= length
            accumulator &= (1 << bits) - 1
    # What is left must be padding: at most 7 bits, all ones (the most significant bits of EOS).
    if bits > 7 or accumulator != (1 << bits) - 1:
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
# The memos below are bounded in bytes (keys and values together, per connection), and only short
# strings and blocks are remembered: a client's repeated calls are a few bytes each, and a client that
# sends large or ever-different ones gains nothing from a memo but would otherwise grow it.
_MEMO_BYTES: Final = 64 * 1024
_MEMO_HUFFMAN_STRING: Final = 256
_MEMO_BLOCK: Final = 512


class HeaderListTooLarge(Exception):
    """The decoded header list is larger than the decoder's limit (RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE).

    The whole block was still decoded (the dynamic table is consistent for the next block); `headers`
    holds the fields that fit under the limit, `size` the size the whole list would have had."""

    def __init__(self, size: int, limit: int, headers: list[Header]) -> None:
        super().__init__(f"header list of {size} bytes exceeds {limit}")
        self.size = size
        self.limit = limit
        self.headers = headers


class Decoder:
    """One connection's decoding state (its dynamic table); feed it every header block in order."""

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 1 << 62) -> None:
        # The most the peer may use: what this side advertised as SETTINGS_HEADER_TABLE_SIZE.
        self.max_allowed_size = max_table_size
        # Fields beyond this decoded size (name + value + 32 each, as RFC 9113 counts) are dropped
        # and the block ends in HeaderListTooLarge: a few bytes of references to one large table
        # entry must not become megabytes of headers.
        self.max_list_size = max_list_size
        self._max_size = max_table_size
        self._size = 0
        self._table: deque[Header] = deque()
        self._huffman: dict[bytes, bytes] = {}
        self._huffman_bytes = 0
        # Blocks whose decoding left the table unchanged decode the same way until the table changes:
        # a client's repeated calls send the same few bytes of indexed references every time.
        self._blocks: dict[bytes, list[Header]] = {}
        self._block_bytes = 0
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
            self._block_bytes = 0
        elif len(block) <= _MEMO_BLOCK:
            cost = len(block) + sum(len(name) + len(value) + _ENTRY_OVERHEAD for name, value in headers)
            if self._block_bytes + cost > _MEMO_BYTES:
                self._blocks.clear()
                self._block_bytes = 0
            self._blocks[block] = headers
            self._block_bytes += cost
        return headers

    def _decode(self, block: bytes) -> list[Header]:
        headers: list[Header] = []
        position = 0
        end = len(block)
        static = STATIC_TABLE
        static_count = len(static)
        list_size = 0
        limit = self.max_list_size
        while position < end:
            byte = block[position]
            if byte & 0x80:  # indexed header field
                index, position = decode_integer(block, position, 7)
                header = self._entry(index, static, static_count)
            elif byte & 0x40:  # literal with incremental indexing
                index, position = decode_integer(block, position, 6)
                header, position = self._literal(block, position, index, static, static_count)
                self._add(header)
            elif byte & 0x20:  # dynamic table size update
                if headers or list_size:
                    # RFC 7541 4.2: only at the beginning of a header block.
                    raise HpackError("dynamic table size update after a header field")
                size, position = decode_integer(block, position, 5)
                if size > self.max_allowed_size:
                    raise HpackError(f"table size update to {size} exceeds {self.max_allowed_size}")
                self._max_size = size
                self._changed = True
                self._evict(0)
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                index, position = decode_integer(block, position, 4)
                header, position = self._literal(block, position, index, static, static_count)
            list_size += len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
            if list_size <= limit:
                headers.append(header)
        if list_size > limit:
            self._changed = True  # never remembered
            raise HeaderListTooLarge(list_size, limit, headers)
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
            if length <= _MEMO_HUFFMAN_STRING:
                cost = length + len(decoded)
                if self._huffman_bytes + cost > _MEMO_BYTES:
                    self._huffman.clear()
                    self._huffman_bytes = 0
                self._huffman[raw] = decoded
                self._huffman_bytes += cost
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
