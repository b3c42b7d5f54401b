"""The one redaction of credentials written into URIs (``scheme://user:password@host``).

A tracking URI read from Vault may carry its credentials as user information; it is safe
to show only without them. Every output that may echo such a URI goes through
:func:`redact_credentials`: log lines (``configure_logging``), a stage's stdout (its
summary and what libraries print there, such as MLflow's "View run at" line), and the
answers and summaries that name a URI.
"""

from __future__ import annotations

import re

REDACTED = "***"

# scheme "://" then the user information up to the last "@" before the host: it stops at
# the first "/", "?", "#", whitespace, quote or angle bracket, so a password holding an
# unencoded "@" is redacted whole and the text around a URI is left alone.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s\"'<>]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the user information of every URI in it replaced by ``***``
    (``http://user:pw@host/x`` becomes ``http://***@host/x``); other text unchanged."""
    if "@" not in text:  # the common case, without a regular expression
        return text
    return _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
