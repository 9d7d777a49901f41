"""Cheap construction and pickling for the frozen records every statement makes, and
that cross to the recorder process."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, TypeVar

T = TypeVar("T")

# Stands for "not given" where a field's default comes from a factory.
_FACTORY = object()


def positional_pickle(cls: type[T]) -> type[T]:
    """Pickle a frozen dataclass as ``cls(*fields)``, and construct it with `quick_init`.

    Python's default for slotted dataclasses calls ``dataclasses.fields()`` for every
    object; this reads the fields with one precomputed ``attrgetter``, several times
    cheaper per record (see docs/performance.md).
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    getter = operator.attrgetter(*names)
    if len(names) == 1:

        def __reduce__(self: Any) -> tuple[type[T], tuple[object, ...]]:
            return (cls, (getter(self),))
    else:

        def __reduce__(self: Any) -> tuple[type[T], tuple[object, ...]]:
            return (cls, getter(self))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return quick_init(cls)


def quick_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot through its
    own descriptor, about twice as fast as the generated one (which goes through
    ``object.__setattr__`` by name for every field, to get past the frozen
    ``__setattr__``). Same parameters, defaults, factories and ``__post_init__``; a class
    it cannot serve (keyword-only fields, not frozen or not slotted) is refused."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_init needs a frozen slotted dataclass, not {cls.__name__}")
    env: dict[str, object] = {"_FACTORY": _FACTORY}
    args: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.kw_only:
            raise TypeError(f"quick_init does not serve keyword-only fields ({cls.__name__})")
        name, setter = f.name, f"_set_{f.name}"
        env[setter] = cls.__dict__[name].__set__
        value = name
        if f.default is not dataclasses.MISSING:
            env[f"_default_{name}"] = f.default
            value = f"_default_{name}"
            if f.init:
                args.append(f"{name}={value}")
                value = name
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_factory_{name}"] = f.default_factory
            value = f"_factory_{name}()"
            if f.init:
                args.append(f"{name}=_FACTORY")
                value = f"{value} if {name} is _FACTORY else {name}"
        elif f.init:
            args.append(name)
        else:
            continue  # no init, no default: the generated __init__ leaves it unset too
        body.append(f"    {setter}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(args)}):\n" + ("\n".join(body) or "    pass")
    namespace: dict[str, Any] = {}
    exec(source, env, namespace)  # noqa: S102 - built from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__wrapped_init__ = cls.__init__  # the generated one, for tests
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
