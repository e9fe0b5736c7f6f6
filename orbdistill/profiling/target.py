"""What the analyser analyses: a root module plus how to run one MD step through it.

A :class:`Target` gives the analyser a root ``torch.nn.Module`` (for parameters and
per-module hooks), a function that builds the model's input graph from ``ase.Atoms``
(timed as graph construction), and a ``step`` function that evaluates energy, forces and
stress exactly as the model's own calculator does. ``step`` calls ``mark()`` when the
forward pass is over and the gradient pass (conservative forces and stress) starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class Target:
    name: str
    kind: str  # "teacher" or "student"
    family: str
    module: torch.nn.Module
    make_inputs: Callable[[Any], Any]
    step: Callable[[Any, Callable[[], None]], Any]
    conservative: bool
    cutoff: Optional[float] = None
    max_neighbors: Optional[int] = None
    random_weights: bool = False
    count_edges: Callable[[Any], int] = lambda inputs: -1
    notes: list = field(default_factory=list)


def _noop():
    return None
