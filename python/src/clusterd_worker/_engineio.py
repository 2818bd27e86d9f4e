"""What the server integrations share about Engine.IO requests (PROTOCOL.md, "Handed-off
connections and sessions"): every polling response closes its connection, so that the client's
next request comes on a new connection that clusterd routes by its ``sid``."""

from __future__ import annotations

from urllib.parse import parse_qs


def is_polling(query: str) -> bool:
    """Whether a query string is an Engine.IO polling request's (``EIO=..&transport=polling``)."""
    if "EIO=" not in query:
        return False
    return parse_qs(query).get("transport", [""])[0] == "polling"
