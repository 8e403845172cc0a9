"""A name → object registry that refuses a name taken twice and names the known ones when asked for another: the
meta-gradient estimators (:mod:`taalm_dist.meta.estimators`) and the CKL methods (:mod:`taalm_dist.programs.methods`)
are each one."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name → object``. ``what`` names the kind in messages; ``unknown(name, known)`` builds the exception raised
    for a name not registered."""

    def __init__(self, what: str, unknown: Callable[[str, list[str]], Exception]):
        super().__init__()
        self.what, self._unknown = what, unknown

    def register(self, name: str, obj: T) -> T:
        """Add ``obj`` under ``name`` (refusing a name taken); returns it."""
        if name in self:
            raise ValueError(f"a {self.what} named {name!r} is registered already")
        self[name] = obj
        return obj

    def lookup(self, name: str) -> T:
        """The object registered as ``name``; else the ``unknown`` exception, listing the registered names."""
        try:
            return self[name]
        except KeyError:
            raise self._unknown(name, list(self)) from None
