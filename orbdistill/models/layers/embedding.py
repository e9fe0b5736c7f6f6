"""Element embeddings."""

from __future__ import annotations

import math

import torch

MAX_Z = 118


class SpeciesEmbedding(torch.nn.Module):
    """A learned vector per atomic number (table of 119 rows, Z = 0..118).

    z: [N] int64 -> [N, dim]
    """

    def __init__(self, dim: int):
        super().__init__()
        self.table = torch.nn.Embedding(MAX_Z + 1, dim)
        torch.nn.init.uniform_(self.table.weight, -math.sqrt(3), math.sqrt(3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.table(z)
