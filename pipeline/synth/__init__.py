"""Synthetic SEM image generator: scenes, defects, an SEM imaging model, tool profiles."""

from pipeline.synth.dataset import build_dataset
from pipeline.synth.grid import make_grids
from pipeline.synth.profiles import DEFAULT_HELDOUT_PROFILES, PROFILES, ToolProfile
from pipeline.synth.render import FINE_CLASSES, Sample, render_sample, render_scene_sample

__all__ = ["DEFAULT_HELDOUT_PROFILES", "FINE_CLASSES", "PROFILES", "Sample", "ToolProfile",
           "build_dataset", "make_grids", "render_sample", "render_scene_sample"]
