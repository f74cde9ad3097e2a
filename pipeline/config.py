"""Compose conf/ into params.yaml, and load params.yaml (plus overrides) for a stage.

Composition goes through DVC's own `compose_and_dump`, so `python -m pipeline compose` and
`dvc exp run -S ...` write byte-identical params.yaml files.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.files import atomic_path
from pipeline.schema import problem

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"

def find_root(start: str | Path | None = None) -> Path:
    """The project root: the nearest folder at or above `start` holding conf/config.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONF_DIR / "config.yaml").is_file():
            return folder
    raise UserError(f"no {CONF_DIR}/config.yaml at or above {here}; run from the project folder")


def _hydra_error(exc: Exception, overrides: Sequence[str]) -> UserError:
    text = str(exc).split("\nConfig search path")[0].strip()
    key = re.search(r"Could not override '([^']+)'", text)
    if key:
        parent = key.group(1).rpartition(".")[0]
        hint = f"check the spelling against the keys under '{parent}' in params.yaml" if parent else ""
        return UserError(f"unknown config key '{key.group(1)}' in overrides {list(overrides)}; {hint}")
    return UserError(f"config overrides {list(overrides)} refused: {text}")


def compose(root: Path, overrides: Sequence[str] = ()) -> str:
    """Compose conf/ with Hydra overrides and return the params.yaml text (validated)."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir) / PARAMS_FILE
        GlobalHydra.instance().clear()
        try:
            compose_and_dump(tmp, str(root / CONF_DIR), None, "config", str(root), list(overrides))
        except (HydraException, OmegaConfBaseException) as exc:
            raise _hydra_error(exc, overrides) from None
        finally:
            GlobalHydra.instance().clear()
        text = tmp.read_text(encoding="utf-8")
    validate(yaml.safe_load(text))
    return text


def write_params(root: Path, overrides: Sequence[str] = ()) -> Path:
    """Compose and write params.yaml atomically, refusing (and leaving the old file) params
    that cannot run on this machine (pipeline.preflight, all but the server check)."""
    from pipeline.preflight import problems

    text = compose(root, overrides)
    found = problems(yaml.safe_load(text), root, server=False)
    if found:
        raise UserError(f"overrides {list(overrides)} cannot run on this machine; "
                        f"{PARAMS_FILE} is unchanged:\n  - " + "\n  - ".join(found))
    target = root / PARAMS_FILE
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"dotted.key": leaf value} (what overrides and MLflow params name)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def validate(cfg: dict) -> None:
    """Refuse a config that does not fit pipeline.schema: one message naming the bad key."""
    message = problem(cfg)
    if message is not None:
        raise UserError(message)


def load_params(root: Path, overrides: Sequence[str] = ()) -> dict:
    """Read params.yaml and apply `key=value` overrides (existing keys only), validated."""
    path = root / PARAMS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; create it with `python -m pipeline compose`")
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    return with_overrides(cfg, overrides)


def with_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """A copy of params `cfg` with `key=value` overrides (existing keys only), validated."""
    cfg = copy.deepcopy(cfg)
    leaves = flatten(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form key=value")
        if key not in leaves:
            close = [k for k in leaves if k.split(".")[-1] == key.split(".")[-1]]
            raise UserError(
                f"unknown config key '{key}' in override {item!r}"
                + (f"; did you mean {close}?" if close else "; see params.yaml for the keys")
            )
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(raw) if raw else None
    validate(cfg)
    return cfg


def params_hash(cfg: dict) -> str:
    """Short stable hash of a config (key order independent)."""
    text = yaml.safe_dump(cfg, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
