"""Fine classes, phase taxonomies, folder-name aliases and the fine→phase mapping tables.

Everything comes from the `taxonomy` config section (conf/taxonomy/default.yaml), so a
mapping is changed in one place. A `via`/`vias` mismatch once cost a hackathon team a whole
class; `resolve_folder` is the single place where folder names become class names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

_DEFECT_WORD = re.compile(r"^(defects?_)|(_defects?)$")


def normalise_name(name: str) -> str:
    """Lower case, spaces/hyphens/dots to underscores, a leading or trailing 'defect(s)' dropped."""
    key = re.sub(r"[\s\-.]+", "_", name.strip().lower()).strip("_")
    stripped = _DEFECT_WORD.sub("", key)
    return stripped or key


def clean_classes(classes: Sequence[str]) -> list[str]:
    """The defect-free classes among `classes` (clean, CLEAN_LAYER, CLEAN_VIA, ...): what
    defect recall and the clean false-alarm rate are measured against."""
    return [c for c in classes if normalise_name(c).startswith("clean")]


@dataclass(frozen=True)
class Phase:
    name: str
    classes: tuple[str, ...]
    from_fine: Mapping[str, str]

    def index(self, class_name: str) -> int:
        return self.classes.index(class_name)

    @property
    def clean_classes(self) -> list[str]:
        return clean_classes(self.classes)


@dataclass(frozen=True)
class Taxonomy:
    fine_classes: tuple[str, ...]
    phases: Mapping[str, Phase]
    aliases: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Taxonomy:
        """Build and validate from the `taxonomy` config section."""
        fine = tuple(cfg["fine_classes"])
        phases = {}
        for name, p in cfg["phases"].items():
            classes = tuple(p["classes"])
            from_fine = dict(p["from_fine"])
            missing = [f for f in fine if f not in from_fine]
            if missing:
                raise UserError(
                    f"taxonomy.phases.{name}.from_fine has no entry for fine classes {missing}; "
                    "add one per fine class in conf/taxonomy/"
                )
            bad = {f: c for f, c in from_fine.items() if c not in classes or f not in fine}
            if bad:
                raise UserError(
                    f"taxonomy.phases.{name}.from_fine maps {bad} onto unknown names; "
                    f"keys must be fine classes {list(fine)} and values in {list(classes)}"
                )
            phases[name] = Phase(name, classes, from_fine)
        aliases = {normalise_name(k): normalise_name(v) for k, v in cfg.get("aliases", {}).items()}
        return cls(fine, phases, aliases)

    def phase(self, name: str) -> Phase:
        if name not in self.phases:
            raise UserError(f"unknown phase {name!r}; known phases: {sorted(self.phases)}")
        return self.phases[name]

    def canonical(self, name: str) -> str:
        """The canonical key of a class or folder name ('Vias', 'VIA', 'via defects' → 'via')."""
        key = normalise_name(name)
        return self.aliases.get(key, key)

    def resolve_folder(self, folder: str, classes: Sequence[str]) -> str | None:
        """The class in `classes` that a folder name means, or None when it matches none."""
        key = self.canonical(folder)
        matches = [c for c in classes if self.canonical(c) == key]
        if not matches and key.startswith("clean_"):
            # A context-specific clean folder (clean_via) is plain clean in a coarser taxonomy.
            matches = [c for c in classes if self.canonical(c) == "clean"]
        return matches[0] if len(matches) == 1 else None

    def suggest(self, folder: str, classes: Sequence[str]) -> list[str]:
        """Close matches among `classes`, for error messages."""
        by_key = {self.canonical(c): c for c in classes}
        close = get_close_matches(self.canonical(folder), list(by_key), n=3, cutoff=0.5)
        return [by_key[k] for k in close]

    def map_fine(self, fine_class: str, phase: str) -> str:
        return self.phase(phase).from_fine[fine_class]


def load_taxonomy_file(path: str | Path) -> Taxonomy:
    """Read a taxonomy YAML file (conf/taxonomy/*.yaml); used by tools and tests."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        return Taxonomy.from_config(yaml.safe_load(fh))
