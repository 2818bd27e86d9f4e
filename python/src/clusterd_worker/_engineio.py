"""What the server integrations share about Engine.IO requests (PROTOCOL.md, "Handed-off
connections and sessions"): every polling response closes its connection, so that the client's
next request comes on a new connection that clusterd routes by its ``sid``."""

from __future__ import annotations


def is_polling(query: str) -> bool:
    """Whether a query string is an Engine.IO polling request's (``EIO=..&transport=polling``).

    Runs for every request, so it splits instead of parsing: Engine.IO clients never
    percent-encode these two parameters.
    """
    if "transport=polling" not in query:
        return False
    params = query.split("&")
    return "transport=polling" in params and any(p.startswith("EIO=") for p in params)
