"""The ``onpolicy`` section of a distillation config (the loop is :mod:`orbdistill.onpolicy`)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, List, Literal, Tuple

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from orbdistill.config import build_config, config_dataclass

STARTS = ("bulk", "surface", "defect", "cluster")


@config_dataclass
class OnPolicyConfig:
    """The on-policy loop (temperatures in K, times in fs, lengths in Å, forces in eV/Å)."""

    rounds: NonNegativeInt = 0                      # 0: off
    starts: List[Literal[STARTS]] = field(default_factory=lambda: list(STARTS))
    size: PositiveInt = 64                          # atoms of the bulk, slab and defect cells
    surface_millers: Annotated[List[Tuple[int, int, int]], Field(min_length=1)] = field(
        default_factory=lambda: [(1, 1, 1)])           # one slab start per facet
    cluster_sizes: Annotated[List[Annotated[int, Field(ge=2)]], Field(min_length=1)] = field(
        default_factory=lambda: [38])                  # one cluster start per size
    temperatures_k: List[PositiveFloat] = field(default_factory=lambda: [300.0, 900.0])
    steps: PositiveInt = 500
    timestep_fs: Annotated[float, Field(gt=0, le=10)] = 2.0
    sample_interval: PositiveInt = 10
    uncertainty_factor: PositiveFloat = 1.0
    frames_before_failure: NonNegativeInt = 3
    max_new_frames: PositiveInt = 100
    # the teacher also labels this many evenly spaced frames of every run that the signal did
    # not pick; those whose force MAE exceeds audit_factor x the student's held-out MAE are
    # added too (confident but wrong), and a round with such a frame has not converged
    audit_frames: NonNegativeInt = 0
    audit_factor: PositiveFloat = 3.0
    min_distance: PositiveFloat = 0.7
    max_force: PositiveFloat = 30.0
    max_temperature_factor: Annotated[float, Field(gt=1)] = 3.0
    epochs: PositiveInt = 10
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    seed: NonNegativeInt = 0

    @classmethod
    def from_dict(cls, d: dict) -> "OnPolicyConfig":
        d = dict(d)
        for old, new in (("surface_miller", "surface_millers"), ("cluster_size", "cluster_sizes")):
            if old in d:  # configs written before a start list: one facet, one size
                if new in d:
                    raise ValueError(f"onpolicy: give {new} (a list) or {old}, not both")
                d[new] = [d.pop(old)]
        return build_config(cls, d, "onpolicy")
