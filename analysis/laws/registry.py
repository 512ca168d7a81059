"""The law registry: ``@register`` adds a law form (and its aliases, e.g. ``chinchilla-tied``), ``make_law`` builds
one by name, ``law_names`` lists them, ``Option`` declares a form's command-line flags (``law_options``: all of
them, for ``scaling fit``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analysis.errors import FitError

# Law (analysis.laws.base) is named in annotations only: base imports this module, not the other way round.


@dataclass(frozen=True)
class Option:
    """A fit option a law form declares: its command-line flag (``scaling fit``) and the keyword argument of the
    law's constructor it sets. ``invert``: a store_true flag that sets the argument False (``--no-offset``);
    ``only``: passing the flag with another law is refused (else it is ignored by laws that do not declare it)."""

    flag: str
    kwarg: str
    help: str
    store_true: bool = False
    invert: bool = False
    choices: tuple | None = None
    type: Any = None
    default: Any = None
    only: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def law_options() -> list[tuple[Option, list[str]]]:
    """Every registered law's options, each with the laws that declare it (first declaration of a flag wins)."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for name, cls in LAWS.items():
        for opt in cls.options:
            out.setdefault(opt.flag, (opt, []))[1].append(name)
    return list(out.values())


LAWS: dict[str, type["Law"]] = {}
LAW_ALIASES: dict[str, tuple[str, dict]] = {}


def register(cls: type["Law"] | None = None, *, aliases: dict[str, dict] | None = None):
    """Class decorator adding a law to the registry (``@register`` or ``@register(aliases={name: kwargs})``)."""

    def deco(c: type["Law"]) -> type["Law"]:
        LAWS[c.name] = c
        for alias, kw in (aliases or {}).items():
            LAW_ALIASES[alias] = (c.name, dict(kw))
        return c

    return deco(cls) if cls is not None else deco


def law_names(aliases: bool = True) -> list[str]:
    """Registered law names (and aliases such as ``chinchilla-tied``), in registration order."""
    return list(LAWS) + (list(LAW_ALIASES) if aliases else [])


def law_kwargs(name: str) -> set[str]:
    """The constructor arguments the options of a registered law (or alias) set (``Option.kwarg``)."""
    base = LAW_ALIASES[name][0] if name in LAW_ALIASES else name
    return {o.kwarg for o in LAWS[base].options} if base in LAWS else set()


def make_law(name: str, **kw) -> "Law":
    """A registered law by name or alias; keyword arguments override the alias's."""
    if name in LAW_ALIASES:
        base, extra = LAW_ALIASES[name]
        return LAWS[base](**{**extra, **kw})
    if name not in LAWS:
        raise FitError(f"unknown law {name!r}; known: {', '.join(law_names())}")
    return LAWS[name](**kw)
