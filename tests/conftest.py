from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def taxonomy():
    from pipeline.taxonomy import load_taxonomy_file

    return load_taxonomy_file(ROOT / "conf" / "taxonomy" / "default.yaml")
