"""The one shape every config takes: a frozen dataclass that round-trips through plain dicts.

Recipes are saved configs, so `from_dict` names unknown keys instead of
failing inside the constructor.
"""

from __future__ import annotations

from dataclasses import asdict, fields


class ConfigDict:
    """Mixin for frozen, keyword-only config dataclasses."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
