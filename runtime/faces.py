"""Package faces that load on first use.

A package's ``__init__`` names what other packages may use (its ``__all__``). Importing those names
eagerly would load the whole process behind them whenever any submodule is imported (``import
gateway.frames`` would start by importing the aiohttp app), so each face maps its names to the module
that defines them and imports that module only when a name is first asked for. The ``__init__`` also
imports the same names under ``TYPE_CHECKING``, so mypy sees the real types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_face"]


def lazy_face(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each public name of ``homes`` from its submodule.

    ``homes`` maps a name to the submodule (relative to ``package``) that defines it.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{home}"), name)

    return __getattr__
