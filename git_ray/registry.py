"""Name -> factory tables: one per extension point (sources, nuisances, archs, losses, ...).

A component registers itself with a decorator and is built by name from the config:

    @LOSSES.register("focal")
    def build_focal(*, class_counts, gamma=1.0): ...

    loss = LOSSES.build("focal", class_counts=counts, gamma=1.0)

An unknown name raises `UnknownNameError` listing the valid names, so a typo in a config fails
before any work starts instead of silently falling back to a default.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Generic, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UnknownNameError(KeyError):
    """A name that no component registered under."""

    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class Registry(Generic[F]):
    """A named table of factories for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._table[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        try:
            return self._table[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load(self) -> None:
        # Components live in modules that register on import; import them lazily so that
        # `git_ray.config` can validate names without importing torch at module load.
        _import_components()


@functools.cache
def _import_components() -> None:
    import git_ray.balance  # noqa: F401
    import git_ray.data  # noqa: F401
    import git_ray.models  # noqa: F401


SOURCES: Registry = Registry("dataset source")
PROFILES: Registry = Registry("long-tail profile")
NUISANCES: Registry = Registry("nuisance")
ARCHS: Registry = Registry("model arch")
LOSSES: Registry = Registry("loss")
SAMPLERS: Registry = Registry("sampler")
CLASS_WEIGHTS: Registry = Registry("reweight")
