"""The one check of a URL a user gives for something ingestlayer calls (a ``webhook.out`` or an
endpoint's ``url``, a chat or Notion ``api_base``, a lookup provider, a classify ``base_url``).

A URL must be absolute http(s) with a host, and hold no space or control character (Unicode
category Cc: C0, DEL, C1). No valid URL holds one (RFC 3986): the HTTP client would
percent-encode it, or drop it (tab, CR, LF), so the receiver would get another path than the one
typed, without a word to the user. Nor may it hold ``"``, ``<``, ``>`` or a backtick: no valid URL
holds those either (the client percent-encodes them too), and they are what ends a URL in text
(RFC 3986, appendix C: quotes and angle brackets around a URL; backticks around code), so a URL
holding one is read cut short wherever it is quoted. ``'`` is a valid URL character (a path such
as ``/it's/``) and is taken. Percent-encoded sequences (``%20``, ``%00``, ``%22``) and non-ASCII
host names and paths (IDN, unicode) are taken as before. The character checks are newer than
some stored configurations: those are not refused when read back (:mod:`ingestlayer.stored_config`),
and go on being sent as before, percent-encoded.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from ingestlayer.stored_config import reading_stored
from ingestlayer.urlmask import MASK

HTTP_URL_REQUIRED = "must be an absolute http:// or https:// URL"
# The ones a pasted URL usually carries, by name.
_NAMES = {
    " ": "a space",
    "\t": "a tab (U+0009)",
    "\n": "a line break (U+000A)",
    "\r": "a line break (U+000D)",
}


# Characters no URL holds that end a URL in text (see the module's text), by name.
_DELIMITERS = {
    '"': 'a double quote (")',
    "<": "a less-than sign (<)",
    ">": "a greater-than sign (>)",
    "`": "a backtick (`)",
}


def url_characters_problem(url: str, *, delimiters: bool = True) -> str | None:
    """Why ``url`` holds a character no URL may hold (a sentence after the field's name), or
    None. It never quotes ``url``, which may carry a credential (a webhook URL's token).

    ``delimiters=False`` lets ``"``, ``<``, ``>`` and backticks through: for a URL held in a
    secret (a Slack or Discord webhook URL), checked when it is used, which went on being sent
    percent-encoded before the check, and is never shown."""
    if reading_stored():
        return None
    for position, c in enumerate(url, 1):
        if c == " " or unicodedata.category(c) == "Cc":
            what = _NAMES.get(c, f"the control character U+{ord(c):04X}")
            encoded = "".join(f"%{b:02X}" for b in c.encode())
            return (
                f"must not contain spaces or control characters: found {what} at character "
                f"{position} (write it as {encoded} if it belongs in the URL)"
            )
        if delimiters and c in _DELIMITERS:
            return (
                f'must not contain ", <, > or backticks, which end a URL in text: found '
                f"{_DELIMITERS[c]} at character {position} (write it as %{ord(c):02X} if it "
                "belongs in the URL)"
            )
    return None


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL ingestlayer can call as written, or None."""
    # Only in what is written now: a URL stored with one (copied from a masked view before this
    # check) is sent as it was, as it always had been.
    if MASK in url and not reading_stored():
        return (
            f"holds {MASK}, the masked form in which answers show a stored URL's credentials: "
            "send the URL whole"
        )
    parts = urlsplit(url)
    # urlsplit drops tabs and line breaks, and leading spaces and C0 controls, before reading
    # the scheme and host: such characters are found by the second check, not this one.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return HTTP_URL_REQUIRED
    return url_characters_problem(url)
