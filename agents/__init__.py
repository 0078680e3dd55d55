"""Proposal policies behind one interface (agents.base.Policy); ``create_policy(name, space)`` builds one.

A registry of lazy importers, as in Ray Tune's ``create_searcher``: each name maps to
"module:Class", imported only when asked for, so listing or creating the offline policies never
loads optuna, anthropic or google-genai.

    >>> from agents import create_policy, list_policies
    >>> policy = create_policy("evolution", space, seed=0, immigrant_rate=0.1)
    >>> proposals = policy.propose(view, n=12)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crashsearch.lab.errors import UserError

if TYPE_CHECKING:
    from crashsearch.agents.base import Policy
    from crashsearch.lab.space import Space

_REGISTRY: dict[str, str] = {
    "random": "crashsearch.agents.random_search:RandomPolicy",
    "tpe": "crashsearch.agents.tpe:TPEPolicy",
    "evolution": "crashsearch.agents.evolution:EvolutionPolicy",
    "claude": "crashsearch.agents.claude:ClaudePolicy",
    "gemini": "crashsearch.agents.gemini:GeminiPolicy",
}

# Policies that need no API key or network: the demo's and the tests' default set.
OFFLINE_POLICIES = ("random", "tpe", "evolution")


def list_policies() -> list[str]:
    """The registered policy names, in registration order."""
    return list(_REGISTRY)


def register_policy(name: str, target: str) -> None:
    """Register (or replace) a policy as ``"module:Class"``; imported only when created."""
    if ":" not in target:
        raise UserError(f"policy target {target!r} must look like 'package.module:ClassName'")
    _REGISTRY[name.strip().lower()] = target


def create_policy(name: str, space: "Space", seed: int = 0, **kwargs: Any) -> "Policy":
    """Build the policy registered as ``name`` (case-insensitive) for ``space``.

    Returns a Policy. Raises ValueError for an unknown name (listing the valid ones) or an option
    the policy does not take (listing its options), and
    PolicyUnavailable when the policy's module or a library it needs cannot be imported; the
    policy's own constructor may raise PolicyUnavailable too (e.g. an LLM agent without a key).
    """
    cls = _policy_class(name)
    options = policy_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise UserError(f"policy {str(name).strip().lower()!r} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(options) or 'none'}")
    return cls(space, seed=seed, **kwargs)


def policy_options(name: str) -> list[str]:
    """The keyword options the policy ``name`` takes (beyond space and seed), from its constructors."""
    import inspect

    options: list[str] = []
    for klass in _policy_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and \
                    param.name not in ("self", "space", "seed") and param.name not in options:
                options.append(param.name)
    return options


def _policy_class(name: str) -> type:
    """The class registered as ``name`` (case-insensitive), imported on first use."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise UserError(f"unknown policy {name!r}; valid policies: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        from crashsearch.agents.base import PolicyUnavailable

        raise PolicyUnavailable(f"policy {key!r} cannot be imported: {exc}") from exc
    return getattr(module, class_name)
