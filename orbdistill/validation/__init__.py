"""Validation: speed, energy conservation and agreement with the teacher."""
