"""What a valid name or id is, for everything that arrives from outside: model names, update ids, version numbers,
sample ids and request (idempotency) keys.

One module decides it; the service's schemas and path parameters use these patterns and the stores check them
again before building a path or a key from one (defence in depth: a name that reached a store by another road, an
imported archive or a broker message, is refused there too).  Every refusal is an `InvalidIdentifier`, a
`ValueError` that the service answers with 422.

* a model name becomes a directory name and a Redis hash tag: 1-64 of lowercase ASCII letters, digits, ``-`` and
  ``_``, starting with a letter or digit (so never ``.``, ``..``, a slash, a brace or a colon, and no two names
  that differ only in case on a case-insensitive file system);
* an update id becomes a file name: 1-64 ASCII letters, digits, ``-`` and ``_``;
* a version number and a sample id are integers of the store's range, 1 to 2⁶³−1 (exemplar memories keep sample
  ids as int64); a sample id travels as its canonical decimal string (ASCII digits, no sign, no leading zero);
* a request key is 1-200 printable ASCII characters without spaces;
* a page of a listing has a size of at least 1 and a position (a version or sequence number) in 1 to 2⁶³−1.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from cl_core.validation import shown
from registry.errors import InvalidIdentifier

log = logging.getLogger(__name__)

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
UPDATE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
SAMPLE_ID_PATTERN = r"^[1-9][0-9]{0,18}$"
REQUEST_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
MAX_ID = 2**63 - 1
"""The largest version number or sample id (int64)."""

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_UPDATE_ID = re.compile(UPDATE_ID_PATTERN)
_SAMPLE_ID = re.compile(SAMPLE_ID_PATTERN)
_REQUEST_KEY = re.compile(REQUEST_KEY_PATTERN)


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    # fullmatch, not match: "$" would also accept a trailing newline
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def is_model_name(name: object) -> bool:
    return _matches(_MODEL_NAME, name)


def check_model_name(name: object) -> str:
    """``name`` if it is a valid model name, else InvalidIdentifier."""
    if not is_model_name(name):
        raise InvalidIdentifier(
            f"invalid model name {shown(name)}: 1-64 lowercase letters, digits, '-' and '_', starting with a letter "
            "or digit"
        )
    return str(name)


def is_update_id(update_id: object) -> bool:
    return _matches(_UPDATE_ID, update_id)


def check_update_id(update_id: object) -> str:
    if not is_update_id(update_id):
        raise InvalidIdentifier(f"invalid update id {shown(update_id)}: 1-64 letters, digits, '-' and '_'")
    return str(update_id)


def check_version(version: object, *, allow_zero: bool = False) -> int:
    """A version number as an int (bools and strings are refused, not converted)."""
    low = 0 if allow_zero else 1
    if isinstance(version, bool) or not isinstance(version, int) or not low <= version <= MAX_ID:
        raise InvalidIdentifier(f"invalid version {shown(version)}: an integer from {low} to {MAX_ID}")
    return version


def check_page(limit: object, before: object) -> tuple[int, int | None]:
    """A listing's page size (an integer ≥ 1) and position (None, or an integer from 1 to 2⁶³−1)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidIdentifier(f"invalid page size {shown(limit)}: an integer of at least 1")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int) or not 1 <= before <= MAX_ID):
        raise InvalidIdentifier(f"invalid page position {shown(before)}: an integer from 1 to {MAX_ID}")
    return limit, before


def is_sample_id(value: object) -> bool:
    return _matches(_SAMPLE_ID, value) and int(str(value)) <= MAX_ID


def check_sample_id(value: object) -> str:
    if not is_sample_id(value):
        raise InvalidIdentifier(
            f"invalid sample id {shown(value)}: a sample id is a decimal number from 1 to {MAX_ID}, as ingestion "
            "returned it"
        )
    return str(value)


def check_sample_ids(ids: Iterable[object]) -> list[str]:
    """Every id, or InvalidIdentifier naming the first bad one (so that nothing is deleted when one is bad)."""
    out = []
    for index, value in enumerate(ids):
        try:
            out.append(check_sample_id(value))
        except InvalidIdentifier as exc:
            raise InvalidIdentifier(f"ids[{index}]: {exc}") from None
    return out


def check_request_key(key: object) -> str:
    if not _matches(_REQUEST_KEY, key):
        raise InvalidIdentifier(f"invalid request key {shown(key)}: 1-200 printable ASCII characters, no spaces")
    return str(key)


def tombstone(entry: object) -> int | None:
    """The sample id an entry of a stored deletion record names (an int in range, or its canonical decimal as str
    or bytes), or None for an invalid entry."""
    if isinstance(entry, bytes):
        entry = entry.decode("ascii", errors="replace")
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry if 1 <= entry <= MAX_ID else None
    return int(str(entry)) if is_sample_id(entry) else None


def tombstones(name: str, entries: Iterable[object]) -> tuple[set[int], list[object]]:
    """The valid sample ids of a stored deletion record, and its invalid entries, logged (written by code that did
    not check ids: a number beyond int64 there made every later update fail)."""
    valid: set[int] = set()
    invalid: list[object] = []
    for entry in entries:
        value = tombstone(entry)
        if value is None:
            invalid.append(entry)
        else:
            valid.add(value)
    if invalid:
        log.warning(
            "the deletion record of model %r holds %d invalid id(s), ignored: %s",
            name,
            len(invalid),
            ", ".join(shown(e, 40) for e in invalid[:5]),
        )
    return valid, invalid
