"""Errors meant for people: each says what is wrong and what to type instead."""

from __future__ import annotations

import contextlib
import sys


class UserError(Exception):
    """A problem with the user's input (a path, an override, a checkpoint), not a bug."""


def find_user_error(exc: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``exc`` (Hydra's instantiate wraps exceptions), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def friendly_errors(prog: str):
    """Turn a :class:`UserError` (however deeply wrapped) into ``prog: error: ...`` on stderr
    and exit status 2, without a traceback. Other exceptions propagate unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a UserError
        err = find_user_error(exc)
        if err is None:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
