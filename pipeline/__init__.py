"""sem-defect-pipeline: synthetic SEM data, distilled students and int8 edge models."""

__version__ = "0.1.0"
