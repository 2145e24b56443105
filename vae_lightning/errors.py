"""Expected user errors: a short message that names the problem and the fix.

Entry points wrap their work in ``report_user_errors()``: a ``UserError`` (also when
Hydra wrapped it while instantiating a config) prints ``error: <message>`` and exits
with status 2, without a traceback. ``HYDRA_FULL_ERROR=1`` re-raises it in full.
"""

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake the user can fix: bad config value, missing data, wrong file."""


class ConfigError(UserError, ValueError):
    """A config value out of range or not among the valid choices."""


class DataError(UserError, RuntimeError):
    """Data missing, unreadable or inconsistent."""


class CheckpointError(UserError, ValueError):
    """A path that is not a usable checkpoint: missing, corrupt, unsafe or of another model."""


def find_user_error(err: BaseException | None) -> UserError | None:
    """The first ``UserError`` in ``err``'s chain of causes (Hydra wraps them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def report_user_errors() -> Iterator[None]:
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextmanager
def quiet_logger(name: str = "hydra.utils") -> Iterator[None]:
    """Silence a logger for a block: ``hydra.utils.get_class`` logs the failures that we
    report ourselves as one ``error: ...`` message."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
