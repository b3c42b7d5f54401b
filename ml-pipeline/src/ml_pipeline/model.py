"""The autoencoder: it learns to reconstruct ordinary pull requests' features, so a large
reconstruction error marks an unusual one."""

from __future__ import annotations

import torch
from torch import nn


class Autoencoder(nn.Module):
    def __init__(self, n_features: int, hidden: int = 8, bottleneck: int = 3):
        super().__init__()
        self.n_features, self.hidden, self.bottleneck = n_features, hidden, bottleneck
        self.encoder = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck)
        )
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, n_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def config(self) -> dict[str, int]:
        return {"n_features": self.n_features, "hidden": self.hidden, "bottleneck": self.bottleneck}
