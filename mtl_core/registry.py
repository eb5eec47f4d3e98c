"""Named registries for suites, architectures and weighting methods.

Every pluggable piece registers an `Entry`: a name, a one-line description the UI shows,
and a pydantic model of its parameters (defaults and bounds live there, so the config
validator, the CLI and the page widgets all read the same source of truth).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for every params model: unknown keys are refused, so typos surface."""

    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    description: str
    params: type[Params]
    build: T
    extra: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, description: str, params: type[Params] = Params, **extra: Any
    ) -> Callable[[T], T]:
        def decorate(build: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = Entry(name, description, params, build, extra)
            return build

        return decorate

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.what} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())
