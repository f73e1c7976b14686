"""`once`: a cached property computed at most once per object, even when several threads ask for it
at the same time (functools.cached_property holds no lock since Python 3.12, so two threads could both
quantize a model). One re-entrant lock per object: a lazy value may read another of the same object."""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")
_GUARD = threading.Lock()  # creates each object's own lock once


class once(Generic[T]):  # noqa: N801 - used as a decorator, like cached_property
    def __init__(self, fn: Callable[[Any], T]):
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        values = obj.__dict__
        if self.name in values:
            return values[self.name]
        with _GUARD:
            lock = values.setdefault("_once_lock", threading.RLock())
        with lock:
            if self.name not in values:
                values[self.name] = self.fn(obj)
            return values[self.name]
