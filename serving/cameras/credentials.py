"""Stream credentials: never shown, never logged, and not stored in clear.

A camera's source may carry a password (`rtsp://admin:S3cret@host/stream`). Wherever a
source or a stream error is shown or logged it goes through `redact` first
(`rtsp://admin:***@host/stream`). A camera may name its password by reference instead,
`rtsp://admin:${CAMERA_GATE_PW}@host/stream`: the configuration (and the database, for
cameras added through the API, which must use a reference) keeps the reference, and the
environment variable is read only when the stream is opened. Only variables whose names
start with `CAMERA_` may be named, so a camera entry cannot send the service's own secrets
(`GRIDWATCH_ADMIN_KEY`, the webhook secret, the database URL) to a stream host.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import quote

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_PREFIX = "CAMERA_"
# scheme://user:password@ in any text; the password runs to the last "@" before the path.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s/]*)@")
# Query parameters that carry a secret (some cameras take ?user=..&password=..).
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|pass|token|secret|key|auth)=)(?P<value>[^&\s'\"]*)")
MASK = "***"


class CredentialError(ValueError):
    """A source's credentials are given in a way this service refuses; the message says why."""


def _mask(value: str) -> str:
    return value if REFERENCE.fullmatch(value) or not value else MASK


def redact(text: str) -> str:
    """`text` with every URL password (and secret query parameter) masked; a reference
    (`${NAME}`) is no secret and stays."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{_mask(m['password'])}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{_mask(m['value'])}", text)


def has_clear_password(source: str) -> bool:
    """A password written into the source itself rather than named by reference."""
    return redact(source) != source


def references(source: str) -> list[str]:
    return REFERENCE.findall(source)


def expand(source: str) -> str:
    """The source with each `${NAME}` replaced by that environment variable, URL-encoded
    (so a password may hold `@`, `:` or `/`). CredentialError names a variable that may not
    be used or is not set, never its value."""
    def value(match: re.Match[str]) -> str:
        name = match[1]
        if not name.startswith(ENV_PREFIX):
            raise CredentialError(f"${{{name}}}: only environment variables named {ENV_PREFIX}* may be used in a source")
        if name not in os.environ:
            raise CredentialError(f"${{{name}}}: environment variable {name} is not set")
        return quote(os.environ[name], safe="")

    return REFERENCE.sub(value, source)


def install_log_redaction() -> None:
    """Every log record of the process from now on masks stream passwords, whoever logged it
    (stream readers quote the URL they failed to open); idempotent. It wraps the record factory
    in place, not only the default one: Ray and other libraries install factories of their own."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts_credentials", False):
        return

    def redacting_record(*args, **kwargs) -> logging.LogRecord:  # noqa: ANN002, ANN003
        record = make_record(*args, **kwargs)
        message = record.getMessage()
        masked = redact(message)
        if masked != message:  # formatted once, here: the record stays a plain, picklable one
            record.msg, record.args = masked, ()
        return record

    redacting_record.redacts_credentials = True
    logging.setLogRecordFactory(redacting_record)
