import pytest

from pipeline.errors import UserError
from pipeline.taxonomy import Taxonomy, normalise_name

PHASE1 = ["clean", "bridge", "open", "ler", "crack", "cmp", "particle", "via", "other"]
PHASE2 = ["Bridge", "Clean", "CMP", "Crack", "LER", "Open", "Other", "Particle", "VIA"]
PHASE3 = ["BRIDGE", "CLEAN_CRACK", "CLEAN_LAYER", "CLEAN_VIA", "CMP", "CRACK", "LER", "OPEN",
          "OTHERS", "PARTICLE", "VIA"]


def test_phase_class_lists(taxonomy):
    assert list(taxonomy.phase("phase1").classes) == PHASE1
    assert list(taxonomy.phase("phase2").classes) == PHASE2
    assert list(taxonomy.phase("phase3").classes) == PHASE3


def test_every_fine_class_maps_into_every_phase(taxonomy):
    for phase in ("phase1", "phase2", "phase3"):
        classes = taxonomy.phase(phase).classes
        mapped = {taxonomy.map_fine(f, phase) for f in taxonomy.fine_classes}
        assert mapped == set(classes), f"{phase}: some class has no synthetic source"


@pytest.mark.parametrize(
    ("folder", "p1", "p2", "p3"),
    [
        ("via", "via", "VIA", "VIA"),
        ("vias", "via", "VIA", "VIA"),
        ("Vias", "via", "VIA", "VIA"),
        ("via defects", "via", "VIA", "VIA"),
        ("defect bridge", "bridge", "Bridge", "BRIDGE"),
        ("Bridges", "bridge", "Bridge", "BRIDGE"),
        ("scratch", "cmp", "CMP", "CMP"),
        ("CMP-Scratches", "cmp", "CMP", "CMP"),
        ("OTHERS", "other", "Other", "OTHERS"),
        ("Other", "other", "Other", "OTHERS"),
        ("Particles", "particle", "Particle", "PARTICLE"),
        ("line edge roughness", "ler", "LER", "LER"),
        ("clean_via", "clean", "Clean", "CLEAN_VIA"),
        ("CLEAN_CRACK", "clean", "Clean", "CLEAN_CRACK"),
        ("Clean", "clean", "Clean", None),  # ambiguous in phase 3: three clean classes
        ("banana", None, None, None),
    ],
)
def test_folder_aliases(taxonomy, folder, p1, p2, p3):
    assert taxonomy.resolve_folder(folder, PHASE1) == p1
    assert taxonomy.resolve_folder(folder, PHASE2) == p2
    assert taxonomy.resolve_folder(folder, PHASE3) == p3


def test_normalise_name():
    assert normalise_name("  Defect Bridge ") == "bridge"
    assert normalise_name("via-defects") == "via"
    assert normalise_name("defect") == "defect"


def test_suggestions_for_typos(taxonomy):
    assert "PARTICLE" in taxonomy.suggest("partcle", PHASE3)


def test_mapping_table_must_be_complete():
    cfg = {"fine_classes": ["a", "b"], "phases": {"p": {"classes": ["x"], "from_fine": {"a": "x"}}}}
    with pytest.raises(UserError, match="'b'"):
        Taxonomy.from_config(cfg)
    cfg["phases"]["p"]["from_fine"] = {"a": "x", "b": "y"}
    with pytest.raises(UserError, match="unknown names"):
        Taxonomy.from_config(cfg)
