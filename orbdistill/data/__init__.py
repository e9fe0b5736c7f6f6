"""Training data: seeds, teacher-labelled generation, datasets and splits."""

from .dataset import Sample, collate, frames_to_samples, split_arguments, split_by_trajectory
from .generate import GenerateConfig, generate, plan_tasks, read_frames
from orbdistill.structures import supercell

from .seeds import load_seeds

__all__ = ["GenerateConfig", "generate", "read_frames", "plan_tasks", "load_seeds", "supercell",
           "Sample", "collate", "frames_to_samples", "split_arguments", "split_by_trajectory"]
