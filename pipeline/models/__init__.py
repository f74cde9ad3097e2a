"""Backbones, losses, the preprocessing spec and the training LightningModule.

Import the submodules directly (`from pipeline.models.backbones import build_backbone`); this
package does not re-export them, so importing it stays cheap.
"""
