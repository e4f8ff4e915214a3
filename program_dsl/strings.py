"""The string literal codec: source text ↔ value, shared by the parser, the compiler and the formatter."""

from __future__ import annotations

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def decode_string(raw: str) -> tuple[str, list[int]]:
    """Decode a quoted literal; also return, for every decoded character, its index in ``raw``
    (plus one entry for the end), so positions inside an EVAL string map back to the source."""
    out: list[str] = []
    offsets: list[int] = []
    i, end = 1, len(raw) - 1
    while i < end:
        ch = raw[i]
        if ch == "\\" and i + 1 < end:
            nxt = raw[i + 1]
            if nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                offsets.append(i)
                i += 2
                continue
            if nxt in _HEX_ESCAPES:
                n = _HEX_ESCAPES[nxt]
                digits = raw[i + 2 : i + 2 + n]
                if len(digits) == n and all(c in _HEX_DIGITS for c in digits):
                    code = int(digits, 16)
                    if code <= 0x10FFFF:
                        out.append(chr(code))
                        offsets.append(i)
                        i += 2 + n
                        continue
        # An unknown escape keeps its backslash, as Python does.
        out.append(ch)
        offsets.append(i)
        i += 1
    offsets.append(end)
    return "".join(out), offsets


def quote_string(value: str) -> str:
    """The canonical literal for ``value``: single quotes unless the text holds one and no double."""
    q = '"' if "'" in value and '"' not in value else "'"
    out = [q]
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == q:
            out.append("\\" + q)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append(q)
    return "".join(out)
