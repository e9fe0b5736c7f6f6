"""Training: losses, trainer with exact resume, evaluation and plots."""

from .trainer import Trainer, TrainConfig, evaluate, fit_element_references

__all__ = ["Trainer", "TrainConfig", "evaluate", "fit_element_references"]
