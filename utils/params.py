"""Parameters and modules chosen by name: glob patterns (fnmatch syntax, case-sensitive) over a model's
named_parameters() (trainer.freeze, optimizer.param_groups) or named_modules() (trainer.activation_checkpointing).
A pattern that matches nothing is a problem naming the config key, the pattern and the nearest names."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Iterable

from utils.errors import UserError, did_you_mean

DEFAULT_GROUP = "default"  # the name of the optimizer's group of the parameters no optimizer.param_groups entry names


def as_patterns(spec: str | Iterable[str]) -> list[str]:
    """A pattern or a list of them, as a list."""
    return [spec] if isinstance(spec, str) else list(spec)


def matching(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The names, in their order, that any of the patterns matches."""
    patterns = list(patterns)
    return [name for name in names if any(fnmatchcase(name, p) for p in patterns)]


def unmatched(names: list[str], patterns: Iterable[str], path: str, owner: str, kind: str = "parameter") -> list[str]:
    """'<path>: 'x.*' matches no <kind> of <owner>. Did you mean ...?' for each pattern matching none of names."""
    return [f"{path}: {pattern!r} matches no {kind} of {owner}.{_nearest(pattern, names, kind)}"
            for pattern in patterns if not matching(names, [pattern])]


def outermost(names: list[str], patterns: Iterable[str]) -> list[str]:
    """The names the patterns match, less those inside another matched one ('a.b' inside 'a')."""
    chosen = matching(names, patterns)
    return [name for name in chosen if not any(name.startswith(other + ".") for other in chosen)]


def _nearest(pattern: str, names: list[str], kind: str = "parameter") -> str:
    """The nearest names or module prefixes ('features.*'), else the model's top-level prefixes."""
    prefixes = {".".join(name.split(".")[:i]) + ".*": None for name in names for i in range(1, name.count(".") + 1)}
    hint = did_you_mean(pattern, [*names, *prefixes])
    if hint or not names:
        return hint
    tops = list(dict.fromkeys(name.split(".")[0] + (".*" if "." in name else "") for name in names))
    more = ", ..." if len(tops) > 8 else ""
    return f" Its {kind}s are under {', '.join(repr(t) for t in tops[:8])}{more}"


def parameter_groups(named: list[tuple[str, Any]], entries: list[dict], no_decay_bias_norm: bool,
                     arch: str) -> list[dict]:
    """The optimizer's parameter groups for optimizer.param_groups entries: first the default group of the
    parameters no entry names, then one group per entry with its options, each with a name (the entry's "name",
    else 'group<i>'; the default group's is 'default'). With no_decay_bias_norm each is split into its >1-D
    parameters and its 1-D ones (weight_decay 0), sharing the name; empty groups are left out. Parameters that
    do not require a gradient are left out. A pattern matching nothing and a parameter two entries name are
    UserErrors (all of them at once)."""
    names = [name for name, _ in named]
    problems: list[str] = []
    owner: dict[str, int] = {}  # parameter name -> the entry that named it first
    for i, entry in enumerate(entries):
        path = f"optimizer.param_groups.{i}.params"
        problems.extend(unmatched(names, as_patterns(entry["params"]), path, arch))
        clashes: dict[int, list[str]] = {}
        for name in matching(names, as_patterns(entry["params"])):
            if owner.setdefault(name, i) != i:
                clashes.setdefault(owner[name], []).append(name)
        problems.extend(f"{path}: {len(clash)} parameter(s) already in optimizer.param_groups.{j}, e.g. {clash[0]!r}; "
                        f"a parameter may be in one group only: narrow the patterns" for j, clash in clashes.items())
    if problems:
        raise UserError(problems)
    members: list[list] = [[] for _ in range(len(entries) + 1)]
    for name, param in named:
        if param.requires_grad:
            members[owner.get(name, -1) + 1].append(param)
    options = [{"name": DEFAULT_GROUP}] + [
        {**{k: v for k, v in entry.items() if k != "params"}, "name": entry.get("name") or f"group{i}"}
        for i, entry in enumerate(entries)]
    groups = []
    for opts, params in zip(options, members):
        halves = ([p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]) if no_decay_bias_norm \
            else (params, [])
        groups += [{"params": half, **opts, **({"weight_decay": 0.0} if k else {})}
                   for k, half in enumerate(halves) if half]
    return groups
