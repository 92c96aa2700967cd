"""Canonical JSON: the one byte form that signatures cover, RFC 8785 (JCS) exactly.

A third party verifies an mlwarden signature with any JCS library (docs/signatures.md):

- object members sorted by their keys' UTF-16 code units (RFC 8785 §3.2.3);
- no insignificant whitespace, UTF-8, strings escaped as ECMAScript's JSON.stringify does
  (§3.2.2.2: `\\"`, `\\\\`, `\\b \\f \\n \\r \\t`, other controls as lower-case `\\u00xx`, nothing else);
- numbers as ECMAScript's Number::toString (§3.2.2.3): `1.0` is `1`, `-0.0` is `0`, `1e20` is
  `100000000000000000000`, `1e21` is `1e+21`, `1e-6` is `0.000001`, `1e-7` is `1e-7`;
- integers only within ±(2^53 - 1), where a JSON number is exact in every language
  (I-JSON, RFC 7493 §2.2); NaN and infinity refused.

orjson does most of the work. It already agrees with JCS on strings, on integers and on key
order when no key holds a character outside the Basic Multilingual Plane, so a Python walk only
re-formats floats (as `orjson.Fragment`s) and re-orders the rare object with an astral key (UTF-8
byte order puts U+E000..U+FFFF before U+10000 and above; UTF-16 puts them after, as surrogates
D800..DFFF). `tests/contracts/test_canonical_jcs.py` compares the result with the `rfc8785`
package on generated values. Before issue 10 this was orjson's own output, which differs from
JCS on integral and large or small floats and on astral keys: signatures made then over such
values do not verify now.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from shared.errors import InvalidMessage

#: The largest integer JCS accepts: every integer up to it is exact as an IEEE 754 double.
MAX_SAFE_INTEGER = 2**53 - 1

# For a non-integral float with 1e-4 <= |x| < 1e16, orjson writes the shortest round-trip digits
# (like Python's repr, and like ECMAScript) in positional form with no trailing zero, which is
# JCS's form for such a number; such floats skip the Python formatting below. Checked against
# `ecmascript_number` and `rfc8785` in tests/contracts/test_canonical_jcs.py.
_ORJSON_AGREES_MIN = 1e-4
_ORJSON_AGREES_MAX = 1e16


#: Types orjson writes as JCS does with no check (the walk's shortcut).
_AS_IS = frozenset({str, bool, type(None)})


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical bytes of a JSON value (dict, list, tuple, str, int, float,
    bool, None); raise InvalidMessage for a number JCS cannot represent."""
    return orjson.dumps(_prepare(value), option=orjson.OPT_SORT_KEYS)


def _prepare(value: Any) -> Any:
    """`value` with every float replaced by its JCS text and every object that orjson would order
    differently from JCS replaced by its JCS text (both as orjson Fragments)."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is float:
        if value.is_integer():
            if abs(value) <= MAX_SAFE_INTEGER:
                # Below 2^53 every integer is a double of its own, so its shortest digits are
                # all of its digits: ECMAScript writes `1.0` as `1`, `-0.0` as `0`, like int().
                return int(value)
        elif _ORJSON_AGREES_MIN <= abs(value) < _ORJSON_AGREES_MAX:
            return value  # the common case, written by orjson exactly as JCS does (see above)
        return orjson.Fragment(ecmascript_number(value))
    if kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise InvalidMessage(f"integer {value} outside ±(2^53 - 1) in signed content")
        return value
    if kind is dict:
        prepared = {key: item if type(item) in _AS_IS else _prepare(item) for key, item in value.items()}
        if all(map(str.isascii, prepared)) or not any(key and max(key) > "\uffff" for key in prepared):
            return prepared
        return orjson.Fragment(_object_by_utf16(prepared))
    if kind is list or kind is tuple:
        return [item if type(item) in _AS_IS else _prepare(item) for item in value]
    # Subclasses (StrEnum, IntEnum, OrderedDict...) are JSON as their base type, and checked as it.
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return _prepare(int(value))
    if isinstance(value, float):
        return _prepare(float(value))
    if isinstance(value, dict):
        return _prepare(dict(value))
    if isinstance(value, list | tuple):
        return _prepare(list(value))
    raise TypeError(f"{kind.__name__} is not a JSON value")


def _object_by_utf16(prepared: dict[str, Any]) -> bytes:
    # RFC 8785 §3.2.3: "sorted ... using the UTF-16 code units of the property names"; big-endian
    # UTF-16 bytes compare as the code units do. A lone surrogate fails to encode, as it must
    # (JCS input is valid Unicode, and orjson refuses it too).
    members = [
        orjson.dumps(key) + b":" + orjson.dumps(prepared[key], option=orjson.OPT_SORT_KEYS)
        for key in sorted(prepared, key=lambda key: key.encode("utf-16-be"))
    ]
    return b"{" + b",".join(members) + b"}"


def ecmascript_number(number: float) -> bytes:
    """The text ECMAScript's Number::toString gives a finite double (ECMA-262 §6.1.6.1.20, the
    number serialisation RFC 8785 §3.2.2.3 requires)."""
    if not math.isfinite(number):
        # orjson would write null, letting two different values share one signature.
        raise InvalidMessage("non-finite number in signed content")
    if number == 0:
        return b"0"  # -0 too
    # Python's repr gives the shortest digits that round-trip, as ECMAScript's step 5 requires;
    # only their layout differs. Let digits = s (k digits) and value = s × 10^(n - k).
    text = repr(number)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    n = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    n -= len(digits) - len(significant)
    s = significant.rstrip("0")
    k = len(s)
    if k <= n <= 21:  # an integer: the digits, then zeros
        out = s + "0" * (n - k)
    elif 0 < n <= 21:  # the point inside the digits
        out = s[:n] + "." + s[n:]
    elif -6 < n <= 0:  # a small number: 0.000ddd
        out = "0." + "0" * -n + s
    else:  # exponential: d.ddde±x
        e = n - 1
        out = (s if k == 1 else s[0] + "." + s[1:]) + ("e+" if e >= 0 else "e-") + str(abs(e))
    return (sign + out).encode()
