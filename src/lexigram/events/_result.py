"""A small, pattern-matchable ``Result`` type: ``Ok(value)`` or ``Err(error)``.

The method names follow the rest of lexigram (``is_ok``, ``unwrap``, ...). Both variants
are frozen dataclasses, so ``match result: case Ok(value): ...`` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, NoReturn, TypeAlias, TypeVar

__all__ = ["Err", "Ok", "Result", "UnwrapError"]

T = TypeVar("T")
E = TypeVar("E")
U = TypeVar("U")


class UnwrapError(Exception):
    """Raised by ``unwrap``/``expect`` on an ``Err`` and by ``unwrap_err`` on an ``Ok``."""


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """A successful result carrying ``value``."""

    value: T

    def is_ok(self) -> Literal[True]:
        """Return ``True``: this is a success."""
        return True

    def is_err(self) -> Literal[False]:
        """Return ``False``: this is not a failure."""
        return False

    def unwrap(self) -> T:
        """Return the value."""
        return self.value

    def unwrap_err(self) -> NoReturn:
        """Raise ``UnwrapError``: an ``Ok`` has no error."""
        raise UnwrapError(f"unwrap_err() called on Ok({self.value!r})")

    def unwrap_or(self, default: object) -> T:
        """Return the value (the default is ignored)."""
        return self.value

    def expect(self, message: str) -> T:
        """Return the value (the message is only used by ``Err``)."""
        return self.value


@dataclass(frozen=True, slots=True)
class Err(Generic[E]):
    """A failed result carrying ``error``."""

    error: E

    def is_ok(self) -> Literal[False]:
        """Return ``False``: this is not a success."""
        return False

    def is_err(self) -> Literal[True]:
        """Return ``True``: this is a failure."""
        return True

    def unwrap(self) -> NoReturn:
        """Raise ``UnwrapError`` chained to the error when it is an exception."""
        cause = self.error if isinstance(self.error, BaseException) else None
        raise UnwrapError(f"unwrap() called on Err({self.error!r})") from cause

    def unwrap_err(self) -> E:
        """Return the error."""
        return self.error

    def unwrap_or(self, default: U) -> U:
        """Return ``default``."""
        return default

    def expect(self, message: str) -> NoReturn:
        """Raise ``UnwrapError`` with ``message``."""
        cause = self.error if isinstance(self.error, BaseException) else None
        raise UnwrapError(f"{message}: {self.error!r}") from cause


Result: TypeAlias = Ok[T] | Err[E]
"""Either ``Ok[T]`` or ``Err[E]``."""
