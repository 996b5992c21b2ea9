"""The one registry idiom of this project: a name -> class (or factory) table with a decorator.

Losses, re-balancing rules, models, datasets and training methods each keep one ``Registry``. A registered
class declares its hyper-parameters once, as keyword parameters of its constructor with the papers' defaults;
``hyperparameters()`` reads them from the signatures, so command-line flags are derived from the declaration
(timm's ``*_kwargs`` idea) instead of being written a second time in a parser::

    LOSSES = Registry("loss", flag="--loss_type")

    @LOSSES.register("LDAM")
    class LDAMLoss(nn.Module):
        flag_names = {"s": "ldam_s"}             # constructor keyword -> flag destination, where they differ
        flag_help = {"max_m": "largest margin"}  # help text per keyword
        def __init__(self, cls_num_list, max_m=0.5, weight=None, s=30): ...

    LOSSES.build("LDAM", [500, 50, 5], max_m=0.3, gamma=2.0)   # keywords the class does not take are ignored

A keyword is a flag when its default is a bool, int, float, str or a tuple of numbers; keywords listed in
``context`` (e.g. ``cls_num_list``, ``weight``) and keywords without a default are supplied by the caller.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator


@dataclass(frozen=True)
class HyperParameter:
    """One flag derived from constructor signatures: ``--{dest}``, its default, type and help, and who takes it.

    ``keyword`` is the constructor's parameter name; ``dest`` the flag destination (``flag_names`` renames it).
    ``nargs`` is ``"*"`` for a tuple default (e.g. milestones)."""
    dest: str
    keyword: str
    default: Any
    type: type
    help: str
    owners: tuple[str, ...]
    nargs: str | None = None


def _flag_type(default) -> tuple[type, str | None] | None:
    if isinstance(default, bool):
        return bool, None
    if isinstance(default, (int, float, str)):
        return type(default), None
    if isinstance(default, tuple) and default and all(isinstance(v, (int, float)) for v in default):
        return type(default[0]), "*"
    return None


class Registry:
    """``name -> constructor``; ``kind`` and ``flag`` name it in errors (``unknown --loss_type 'X'``)."""

    def __init__(self, kind: str, flag: str | None = None, context: Iterable[str] = ()):
        self.kind, self.flag = kind, flag or f"--{kind}"
        self.context = frozenset(context)
        self._entries: dict[str, Callable] = {}

    # -- the table -----------------------------------------------------------------------------------------
    def register(self, name: str, obj: Callable | None = None):
        """Decorator ``@REG.register("name")``, or ``REG.register("name", obj)``; a name is registered once."""
        def wrap(target):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = target
            return target
        return wrap if obj is None else wrap(obj)

    def unregister(self, name: str) -> Callable:
        """Remove ``name`` (a plug-in's or a test's entry) and return what it held."""
        return self._entries.pop(name) if name in self._entries else self[name]

    def __getitem__(self, name: str) -> Callable:
        if name not in self._entries:
            raise ValueError(f"unknown {self.flag} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def names(self) -> list[str]:
        return sorted(self._entries)

    # -- building from keywords ----------------------------------------------------------------------------
    def build(self, name: str, *args, **kwargs):
        """``self[name](*args, **kw)`` with ``kw`` = the ``kwargs`` its constructor accepts (the rest is ignored,
        so one set of parsed hyper-parameters builds any entry)."""
        target = self[name]
        return target(*args, **accepted_kwargs(target, kwargs))

    def hyperparameters(self) -> list[HyperParameter]:
        """Every flag the entries declare, merged by destination (first default and help win; owners listed).

        Two entries that use one destination with different defaults are a declaration error."""
        found: dict[str, HyperParameter] = {}
        for name, target in self._entries.items():
            for hp in declared(target, self.context, owner=name):
                seen = found.get(hp.dest)
                if seen is None:
                    found[hp.dest] = hp
                    continue
                if seen.default != hp.default or seen.type is not hp.type:
                    raise ValueError(f"{self.kind}s {seen.owners[0]!r} and {name!r} declare --{hp.dest} with "
                                     f"different defaults ({seen.default!r}, {hp.default!r})")
                found[hp.dest] = HyperParameter(seen.dest, seen.keyword, seen.default, seen.type,
                                                seen.help or hp.help, (*seen.owners, name), seen.nargs)
        return list(found.values())


def _parameters(target: Callable) -> dict[str, inspect.Parameter]:
    init = target.__init__ if inspect.isclass(target) else target
    params = dict(inspect.signature(init).parameters)
    params.pop("self", None)
    return params


def accepted_kwargs(target: Callable, kwargs: dict) -> dict:
    """The part of ``kwargs`` that ``target`` takes by keyword (all of it if it has ``**kwargs``)."""
    params = _parameters(target)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def declared(target: Callable, context: Iterable[str] = (), owner: str = "") -> list[HyperParameter]:
    """The hyper-parameters ``target`` declares: keyword parameters with a flag-typed default, not in ``context``."""
    renames = getattr(target, "flag_names", {})
    helps = getattr(target, "flag_help", {})
    out = []
    for keyword, param in _parameters(target).items():
        if keyword in context or param.default is inspect.Parameter.empty:
            continue
        typed = _flag_type(param.default)
        if typed is None:
            continue
        out.append(HyperParameter(renames.get(keyword, keyword), keyword, param.default, typed[0],
                                  helps.get(keyword, ""), (owner or getattr(target, "__name__", "?"),), typed[1]))
    return out


def kwargs_from(target: Callable, values: dict, context: Iterable[str] = ()) -> dict:
    """Constructor keywords of ``target`` from ``values`` keyed by flag destination (parsed flags as a dict)."""
    return {hp.keyword: values[hp.dest] for hp in declared(target, context) if hp.dest in values}
