"""Passwords stay out of shared places: a URL is printed with its password masked, and stored (in
a study, a config file, a tracker) without it. Knows nothing of Optuna or MLflow."""

from __future__ import annotations

import re

MASK = "***"
# a query argument that carries a credential (`?password=…` is how SQLAlchemy URLs may carry one)
SECRET_ARG = re.compile(r"([?&;])(password|passwd|pwd|token)=[^&;#]*", re.IGNORECASE)


def _rebuild(url: str, replacement: str | None) -> str:
    """`url` with its password (in the user info, in the query) replaced, or dropped when None.
    Done on the text, not through a parser, so a URL without one comes back unchanged and a URL
    no parser takes loses its password all the same."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    query = next((i for i, c in enumerate(rest) if c in "?#"), len(rest))
    at_sign = rest.rfind("@", 0, query)  # user info ends at the last `@` (a raw `/` may be in it)
    end = next((i for i in range(at_sign + 1, len(rest)) if rest[i] in "/?#"), len(rest))
    netloc, tail = rest[:end], rest[end:]
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        name = user.split(":", 1)[0]
        netloc = f"{name}:{replacement}@{host}" if replacement is not None else f"{name}@{host}"
    if replacement is None:
        tail = SECRET_ARG.sub(lambda m: m.group(1) if m.group(1) == "?" else "", tail)
        tail = tail.replace("?&", "?").rstrip("?")
    else:
        tail = SECRET_ARG.sub(lambda m: f"{m.group(1)}{m.group(2)}={replacement}", tail)
    return f"{scheme}://{netloc}{tail}"


def masked(url: object) -> str:
    """`url` as it may be printed: its password, wherever the URL carries one, as `***`."""
    return _rebuild(str(url), MASK)


def without_password(url: str) -> str:
    """`url` as it may be stored: the same address and user, no password."""
    return _rebuild(url, None)


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def scrubbed(text: object) -> str:
    """`text` (an error message, a log line) with the password of every URL in it masked."""
    return URL.sub(lambda m: masked(m.group(0)), str(text))
