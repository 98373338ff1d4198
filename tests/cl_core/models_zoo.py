"""Small models for the mathematics tests: each exercises one path of the per-sample machinery."""

import torch
from torch import nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 4))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(3, 4, 2, bias=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 4),
    )


class Unusual(nn.Module):
    """LayerNorm, a free parameter, a linear layer used twice and one applied to a sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.seq = nn.Linear(3, 2)
        self.out = nn.Linear(6 + 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.shared(x))) * self.scale
        h = torch.tanh(self.shared(h))  # second use of the same layer
        s = torch.tanh(self.seq(x.reshape(-1, 2, 3))).flatten(1)  # (B, 2, 3) → (B, 2, 2)
        return self.out(torch.cat([h, s], dim=1))


def inputs_for(name: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, 8, 8) if name == "cnn" else (n, 6)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {"mlp": mlp, "cnn": cnn, "unusual": Unusual}[name]()
    return model.double()
