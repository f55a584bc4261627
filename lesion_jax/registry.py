"""Name -> object registries for models, losses and datasets.

Every config names its model, loss and datasets by string. An unknown name must fail before
anything is built, and the error must tell the user what the valid names are (as scenic does).
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from lesion_jax.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
  """A plain mapping from names to objects, with an error that lists valid names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj
    return add

  def add(self, name: str, obj: T) -> T:
    return self.register(name)(obj)

  def get(self, name: str, where: str = "") -> T:
    if name not in self._entries:
      place = f" (from {where})" if where else ""
      raise UnknownNameError(
          f"Unknown {self.kind} {name!r}{place}. Valid {self.kind} names: "
          f"{', '.join(sorted(self._entries))}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
