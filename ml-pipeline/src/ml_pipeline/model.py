"""The autoencoder: it learns to reconstruct ordinary pull requests' features, so a large
reconstruction error marks an unusual one."""

from __future__ import annotations

import torch
from torch import nn

from pipeline_contracts.scorer import DenseNetwork


class Autoencoder(nn.Module):
    def __init__(self, n_features: int, hidden: int = 8, bottleneck: int = 2):
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

    def dense_network(self) -> DenseNetwork:
        """The trained layers as arrays, for inference without torch."""
        weights, biases, relu = [], [], []
        for layer in [*self.encoder, *self.decoder]:
            if isinstance(layer, nn.Linear):
                weights.append(layer.weight.detach().cpu().numpy().T.copy())
                biases.append(layer.bias.detach().cpu().numpy().copy())
                relu.append(False)
            elif isinstance(layer, nn.ReLU):
                relu[-1] = True
            else:
                raise TypeError(f"no array form for {type(layer).__name__}")
        return DenseNetwork(tuple(weights), tuple(biases), tuple(relu))
