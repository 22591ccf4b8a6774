"""U-Nets that describe themselves: JSON-able configs, rebuilding from them, and ``recast``."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from ._checks import check_bounds, check_kinds

__all__ = ["ConfigurableMixin", "register_unet", "unet_from_config"]

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_unet(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` rebuildable by :func:`unet_from_config` under its class name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    """The constructor's keyword defaults (what ``check_kinds`` reads the expected kinds from)."""
    return {
        name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def unet_from_config(config: dict) -> nn.Module:
    """Build the U-Net described by ``config`` (as returned by ``unet.config``: keywords plus ``"type"``).

    Raises ValueError for a missing or unknown ``"type"``.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    config = dict(config)
    name = config.pop("type", None)
    if name not in _REGISTRY:
        raise ValueError(f"config 'type' must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name](**config)


def _own_class(module) -> type:
    """The module's class, past the class FSDP2's ``fully_shard`` puts in front of it
    (``FSDPUnet``, a subclass of ``FSDPModule`` and ``Unet``): a sharded Unet is still a Unet."""
    cls = type(module)
    if any(base.__name__ == "FSDPModule" for base in cls.__bases__):
        return next(base for base in cls.__bases__ if base.__name__ != "FSDPModule")
    return cls


class ConfigurableMixin:
    """Stores the constructor keywords (``_record_config``) and provides ``config`` and ``recast``."""

    _config: dict[str, Any]

    def _record_config(self, keywords: dict[str, Any]) -> None:
        if not getattr(self, "is_null", False):  # a NullUnet accepts anything and allocates nothing
            check_kinds(keywords, _defaults(type(self)))
            check_bounds(type(self).__name__, keywords)  # before anything is allocated
        self._config = {k: _jsonable(v) for k, v in keywords.items()}

    @property
    def config(self) -> dict[str, Any]:
        """The constructor keywords as JSON-able values (tuples as lists) plus ``"type"`` (the class name)."""
        return {"type": _own_class(self).__name__, **{k: _jsonable(v) for k, v in self._config.items()}}

    def recast(self, **changes: Any):
        """This U-Net when ``changes`` change nothing, else a fresh one of the same class with them applied.

        A value changes nothing when it equals the keyword given, or, for a keyword left at None
        (``channels_out``), the value it resolved to (the attribute of that name).
        Raises ValueError naming any key that is not a constructor keyword.
        """
        unknown = sorted(set(changes) - set(self._config))
        if unknown:
            raise ValueError(f"recast got unknown keywords {unknown}; accepted: {sorted(self._config)}")
        if all(self._unchanged(k, v) for k, v in changes.items()):
            return self
        return type(self)(**{**self._config, **changes})

    def _unchanged(self, key: str, value: Any) -> bool:
        given = self._config[key]
        if _jsonable(value) == given:
            return True
        return given is None and value is not None and _jsonable(getattr(self, key, None)) == _jsonable(value)
