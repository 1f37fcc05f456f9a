"""The guide's ablation priority order and the short forms used in cell names, read from
priority.yaml (the one place they are written down)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

OTHER = "other"  # the stage of axes no listed stage claims; it runs last


@dataclass(frozen=True)
class Stage:
    name: str
    prefixes: tuple[str, ...]
    why: str = ""


@dataclass(frozen=True)
class Priority:
    stages: tuple[Stage, ...]
    abbrev: dict[str, str]
    values: dict[str, str]

    def stage_of(self, key: str) -> str:
        """The stage whose prefix matches `key` longest; OTHER when none does."""
        best, best_len = OTHER, -1
        for stage in self.stages:
            for p in stage.prefixes:
                if _matches(key, p) and len(p) > best_len:
                    best, best_len = stage.name, len(p)
        return best

    def rank(self, key: str) -> tuple[int, int]:
        """Where an axis sorts in cell names: its stage, then its prefix's place in that stage."""
        stage = self.stage_of(key)
        for i, s in enumerate(self.stages):
            if s.name == stage:
                match = max((p for p in s.prefixes if _matches(key, p)), key=len)
                return i, s.prefixes.index(match)
        return len(self.stages), 0

    def order(self, stage: str) -> int:
        names = [s.name for s in self.stages]
        return names.index(stage) if stage in names else len(names)

    def why(self, stage: str) -> str:
        return next((s.why for s in self.stages if s.name == stage), "axes no priority stage claims")

    def abbrev_of(self, key: str) -> str:
        """The name token prefix for an axis: the longest listed prefix of `key`, else the
        initials of its last key (train.learning_rate -> lr)."""
        best = max((p for p in self.abbrev if _matches(key, p)), key=len, default=None)
        if best == key:
            return self.abbrev[best]
        last = key.rsplit(".", 1)[-1]
        initials = "".join(w[0] for w in last.split("_") if w)
        if best is not None:
            return self.abbrev[best] + initials
        return initials or "x"


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


@lru_cache(maxsize=1)
def load_priority() -> Priority:
    text = resources.files("distillc.compiler.ablation").joinpath("priority.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    stages = tuple(Stage(s["name"], tuple(s["prefixes"]), " ".join(str(s.get("why", "")).split())) for s in doc["stages"])
    return Priority(stages, dict(doc.get("abbrev") or {}), {str(k): str(v) for k, v in (doc.get("values") or {}).items()})
