"""Built-in architectures, the growable classifier head, and the JSON spec that rebuilds a model.

Every model here is a `Classifier`: a ``body`` that maps inputs to a flat feature vector and a ``head`` whose
rows are the classes.  New classes append rows to the head; every existing weight, and so every existing logit,
is kept, and the parameter names (``head.weight``, ``head.bias``) never change, so importance already measured
for the old rows stays valid while the new rows start with none.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cl_core.persample import LinearRule
from cl_core.validation import shown

BodyFactory = Callable[..., nn.Module]
"""``factory(input_shape, **options)`` → a module mapping (batch, *input_shape) to (batch, features)."""


class GrowableHead(nn.Linear):
    """A linear classifier whose output rows (classes) can be appended."""

    def per_sample_rule(self) -> LinearRule:
        return LinearRule()

    def grow(self, new_classes: int, generator: torch.Generator | None = None) -> None:
        """Append ``new_classes`` rows initialised like `nn.Linear` (old rows, and their logits, unchanged)."""
        if new_classes < 0:
            raise ValueError(f"cannot grow by {new_classes} classes")
        if new_classes == 0:
            return
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        device, dtype = self.weight.device, self.weight.dtype
        rows = (torch.rand(new_classes, self.in_features, generator=generator, dtype=dtype) * 2 - 1) * bound
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), rows.to(device)]))
        if self.bias is not None:
            bias = (torch.rand(new_classes, generator=generator, dtype=dtype) * 2 - 1) * bound
            self.bias = nn.Parameter(torch.cat([self.bias.detach(), bias.to(device)]))
        self.out_features += new_classes


class Classifier(nn.Module):
    """body → growable head."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = GrowableHead(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    @property
    def num_classes(self) -> int:
        return self.head.out_features


def mlp_body(input_shape: Sequence[int], hidden: Sequence[int] = (400, 400), dropout: float = 0.0) -> nn.Module:
    """Flatten → (Linear → ReLU [→ Dropout])×len(hidden); van de Ven & Tolias use 784-400-400."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = math.prod(input_shape)
    for i, out in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, out)
        layers[f"relu{i}"] = nn.ReLU()
        if dropout:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        width = out
    return nn.Sequential(layers)


def cnn_body(input_shape: Sequence[int], channels: Sequence[int] = (16, 32), hidden: int = 128) -> nn.Module:
    """A small CNN for (C, H, W) images (or flat square grey images): (conv3×3 → ReLU → maxpool2)× → fc → ReLU."""
    shape = tuple(input_shape)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(f"cnn needs (C, H, W) inputs or a flat square image, got shape {shape}")
        shape = (1, side, side)
        layers["unflatten"] = nn.Unflatten(1, shape)
    if len(shape) != 3:
        raise ValueError(f"cnn needs (C, H, W) inputs, got shape {tuple(input_shape)}")
    c, h, w = shape
    for i, out in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, out, kernel_size=3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        c, h, w = out, h // 2, w // 2
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(c * h * w, hidden)
    layers["relu_fc"] = nn.ReLU()
    return nn.Sequential(layers)


_ARCHITECTURES: dict[str, BodyFactory] = {"mlp": mlp_body, "cnn": cnn_body}


def register_architecture(name: str, factory: BodyFactory) -> None:
    """Make ``factory`` buildable by name (an operator's own body; never code received over the network)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"architecture names are letters, digits, '-' and '_', got {name!r}")
    _ARCHITECTURES[name] = factory


def architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's structure; JSON-able.  ``classes[i]`` names output i."""

    architecture: str
    input_shape: tuple[int, ...]
    classes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            raise ValueError(f"input_shape must be positive dimensions, got {self.input_shape}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {self.classes}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            architecture=data["architecture"],
            input_shape=tuple(data["input_shape"]),
            classes=list(data.get("classes", [])),
            options=dict(data.get("options", {})),
        )


def build_model(spec: ModelSpec, *, seed: int | None = None) -> Classifier:
    """A freshly initialised model for ``spec`` (deterministic when ``seed`` is given)."""
    factory = _ARCHITECTURES.get(spec.architecture)
    if factory is None:
        raise ValueError(f"unknown architecture {shown(spec.architecture)}; known: {', '.join(architectures())}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            body = factory(spec.input_shape, **spec.options)
        except TypeError as exc:
            raise ValueError(f"bad options for architecture {shown(spec.architecture)}: {shown(str(exc))}") from exc
        with torch.no_grad():
            was_training = body.training
            body.eval()
            features = body(torch.zeros(1, *spec.input_shape))
            body.train(was_training)
        if features.dim() != 2:
            raise ValueError(
                f"architecture {spec.architecture!r} must map inputs to flat features, got {tuple(features.shape)}"
            )
        with warnings.catch_warnings():  # a head without classes yet is legitimate; nn.Linear warns about it
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            return Classifier(body, features.shape[1], len(spec.classes))


def grow_classes(model: Classifier, spec: ModelSpec, names: Sequence[str], *, seed: int = 0) -> list[int]:
    """Add the unseen class ``names`` to the model and the spec; returns their new output indices."""
    new = [n for n in dict.fromkeys(names) if n not in spec.classes]
    if not new:
        return []
    start = len(spec.classes)
    model.head.grow(len(new), generator=torch.Generator().manual_seed(seed + start))
    spec.classes.extend(new)
    return list(range(start, start + len(new)))
