"""No key material of an ingress in error texts: what is stored, reported, logged.

A URL ingress' URL may carry secrets: credentials (`https://user:pass@host/...`), a
signed query (`?token=...`, `?X-Amz-Signature=...`), an SRT `passphrase`. The URL
worker names URLs only redacted (relay/worker/url_input.py `redact()`), but a
library's error text can quote the URL it refused: urllib's InvalidURL quotes the
path and query (`URL can't contain control characters. '/a b?token=...'`). So a
session's error text is scrubbed against the ingress' own URL and stream key twice:
by the worker before it logs and reports it (relay/worker/main.py), and by the
service before it becomes `state.error` or a log line (`Live.fail`, lifetime.py).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

REDACTED = "[redacted]"
MIN_PIECE = 4  # shorter values (`?hd=1`) are not secrets, and replacing them garbles text


def url_secrets(url: str) -> list[str]:
    """The parts of `url` that may be secret, longest first: the query, its values,
    the user info and its password, the fragment (as written and percent-decoded)."""
    try:
        parts = urlsplit(url)
        netloc, query, fragment = parts.netloc, parts.query, parts.fragment
    except ValueError:  # unparsable (`http://[::1/...`): split it by hand
        rest, _, fragment = url.partition("#")
        rest, _, query = rest.partition("?")
        netloc = rest.partition("://")[2].partition("/")[0]
    userinfo = netloc.rpartition("@")[0]
    pieces = [query, fragment, userinfo, userinfo.partition(":")[2]]
    # each value as written and decoded (parse_qsl decodes, and `+` is a space)
    pieces += [part.partition("=")[2] for part in query.split("&")]
    pieces += [value for _, value in parse_qsl(query, keep_blank_values=True)]
    found = {piece for raw in pieces for piece in (raw, unquote(raw))
             if len(piece) >= MIN_PIECE}
    return sorted(found, key=len, reverse=True)


def scrub(text: str, url: str, stream_key: str = "") -> str:
    """`text` without any secret part of `url` (see url_secrets) or the stream key."""
    for piece in [*url_secrets(url), stream_key]:
        if piece:
            text = text.replace(piece, REDACTED)
    return text
