"""The speaker encoder's network (torch): imported only when the encoder loads its weights."""

from __future__ import annotations

import torch
from torch import nn

from service.diarization.encoder import EMBEDDING_SIZE, N_MELS


class Network(nn.Module):
    """The encoder's layers, named as in the checkpoint so its state dict loads as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBEDDING_SIZE)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-8)
