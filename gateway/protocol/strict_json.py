"""Strict JSON reading for documents and messages: no repeated member names, no NaN or Infinity.

Python's json module accepts both; a signed or hashed document that did would read differently
in other parsers. Each caller words its own errors, so the messages are templates.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import ProtocolError

__all__ = ["loads_strict"]


def loads_strict(raw: bytes | str, *, not_json: str, duplicate: str, constant: str) -> Any:
    """Parse JSON strictly or raise ProtocolError.

    `not_json` is formatted with the decoder's complaint, `constant` with the refused name
    (NaN, Infinity, -Infinity); `duplicate` is used as it is.
    """

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ProtocolError(duplicate)
        return result

    def refuse(name: str) -> Any:
        raise ProtocolError(constant.format(name))

    try:
        return json.loads(raw, object_pairs_hook=members, parse_constant=refuse)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(not_json.format(exc)) from None
