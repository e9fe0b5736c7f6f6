"""Validation: speed, energy conservation and agreement with the teacher."""

from .suite import SECTIONS, ValidateConfig, validate  # noqa: F401
