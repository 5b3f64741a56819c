"""Secrets in settings: masked wherever settings are shown, scrubbed from logs and errors.

Masking is a property of the settings model: a field is secret because of its type, so a new secret
setting is covered by declaring it so, nowhere else.

* ``SecretStr`` (pydantic): tokens and API keys, shown as ``**********``.
* ``SecretUrl``: a URL whose path or credentials are the secret (an alert webhook: Slack's and
  Discord's carry their key in the path), shown as ``https://hooks.slack.com/***``.
* ``DatabaseUrl``: a database URL, shown with its password hidden (``postgresql://u:***@host/db``).
* ``SecretEnvName``: the *name* of an environment variable holding a secret (an upstream's
  ``api_key_env``); the name is shown, the variable's value is scrubbed.

``model_dump(mode="json")``, ``repr`` and ``str`` of these show the masked form; code that needs
the value calls ``get_secret_value()``. Every secret of every ``Settings`` this process built is
also remembered (``remember``), so ``redact`` can scrub it from any text: log lines
(``RedactingFilter``, the daemon's log files), stored events (which the dashboard shows) and error
messages. Values shorter than ``MIN_SCRUBBED`` characters are masked where shown but not scrubbed
from free text, where they would garble every word that contains them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Annotated, Any, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, Secret, SecretStr

MASK = "***"
MIN_SCRUBBED = 6


def mask_url(url: str) -> str:
    """``url`` with only its scheme, host and port left: ``https://hooks.slack.com/***``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    return f"{parts.scheme}://{host}{port}/{MASK}"


def mask_database_url(url: str) -> str:
    """A database URL with its password hidden (the rest names which database, and is kept)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: hide whatever looks like credentials
        return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\1{MASK}@", url)


class SecretUrl(Secret[str]):
    """A URL that is itself a secret (a webhook); shown as scheme and host only."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


class DatabaseUrl(Secret[str]):
    """A SQLAlchemy database URL; shown with its password hidden."""

    def _display(self) -> str:
        return mask_database_url(self.get_secret_value())


class _SecretEnvMarker:
    """Marks a string setting as the name of an environment variable that holds a secret."""

    def __repr__(self) -> str:
        return "SecretEnvName"


SECRET_ENV = _SecretEnvMarker()
SecretEnvName = Annotated[str, SECRET_ENV]


def plain(value: Any) -> Any:
    """A secret's value (anything else as it is): for code that must use it."""
    return value.get_secret_value() if isinstance(value, Secret | SecretStr) else value


def secret_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted paths of every secret setting of ``model`` (``alerts[].url``), from the types: what
    a test sets to make sure each one is masked everywhere."""
    found = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if SECRET_ENV in info.metadata or _holds_secret(info.annotation):
            found.append(path)
            continue
        for sub in _models_in(info.annotation):
            found += secret_fields(sub, f"{path}[]." if _is_list(info.annotation) else f"{path}.")
    return found


def _holds_secret(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, (Secret, SecretStr)):
        return True
    return any(_holds_secret(a) for a in get_args(annotation))


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) is list or any(_is_list(a) for a in get_args(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


# -- what to scrub from text ------------------------------------------------------------------

_known: dict[str, str] = {}  # secret text -> what replaces it
_lock = threading.Lock()


def secrets_of(model: BaseModel) -> dict[str, str]:
    """Every secret in ``model`` (and the models inside it), mapped to its replacement."""
    found: dict[str, str] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        if SECRET_ENV in info.metadata and isinstance(value, str):
            env = os.environ.get(value)
            if env:
                found[env] = MASK
        else:
            _collect(value, found)
    return found


def _collect(value: Any, found: dict[str, str]) -> None:
    if isinstance(value, BaseModel):
        found.update(secrets_of(value))
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, found)
    elif isinstance(value, DatabaseUrl):
        from sqlalchemy.engine import make_url

        try:
            password = make_url(value.get_secret_value()).password
        except Exception:  # noqa: BLE001 - an unparsable URL: scrub it whole
            password = None
        found[value.get_secret_value()] = str(value)
        if password:
            found[str(password)] = MASK
    elif isinstance(value, SecretUrl):
        url = value.get_secret_value()
        found[url] = str(value)
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        if parts.path.strip("/"):
            found[parts.path] = f"/{MASK}"
        if parts.password:
            found[parts.password] = MASK
    elif isinstance(value, Secret | SecretStr):
        found[str(value.get_secret_value())] = MASK


def remember(model: BaseModel) -> None:
    """Scrub ``model``'s secrets from text from now on (``Settings`` call this when built)."""
    found = {k: v for k, v in secrets_of(model).items() if len(k) >= MIN_SCRUBBED}
    if found:
        with _lock:
            _known.update(found)


def redact(text: str, *models: BaseModel) -> str:
    """``text`` with every remembered secret, and those of ``models``, replaced by its masked form
    (longest first, so a URL is masked whole before its path is)."""
    known = _known
    if models:
        known = {**known, **{k: v for m in models for k, v in secrets_of(m).items() if k}}
    if not known or not text:
        return text
    for secret in sorted(known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, known[secret])
    return text


class RedactingFilter(logging.Filter):
    """A logging filter (put it on handlers) that scrubs remembered secrets from each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known:
            message = record.getMessage()
            clean = redact(message)
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def redact_logs() -> None:
    """Put ``RedactingFilter`` on every handler of the root logger (call after configuring logging)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
