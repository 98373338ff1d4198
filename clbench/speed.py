"""`clbench speed`: importance estimation and penalty cost on the protocol's MLP, measured side by side.

* Importance (true Fisher, empirical Fisher, MAS) over the same samples by: the per-sample factorisation (what
  runs), the general torch.func path forced onto every parameter, a per-sample Python loop (the definition), and,
  when installed, Opacus's per-sample gradients and BackPACK's second-order extensions.  Every path's values are
  compared with the loop's.
* One training step (Adam, batch 128) plain, with the EWC penalty's closed-form gradient (what runs), and with the
  penalty through autograd.  Steps are interleaved so that a noisy machine slows all variants alike.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import fisher_diagonal, mas_importance
from cl_core.methods import EWC, FineTune
from cl_core.methods.base import ContinualMethod
from cl_core.models import Classifier
from cl_core.protocol import protocol_model
from cl_core.reference import fisher_diagonal_loop, mas_importance_loop
from cl_core.trainer import TrainConfig, make_optimizer, training_step

Importance = dict[str, Tensor]
QUANTITIES = ("fisher-true", "fisher-empirical", "mas")


@dataclass
class ImportanceRow:
    quantity: str
    path: str
    seconds: float
    max_abs_diff: float | None  # against the per-sample loop
    speedup_vs_loop: float | None = None
    note: str = ""


@dataclass
class StepRow:
    variant: str
    median_ms: float
    ratio_to_plain: float


@dataclass
class SpeedReport:
    samples: int
    threads: int
    importance: list[ImportanceRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _timed(fn: Callable[[], Importance], repeats: int) -> tuple[float, Importance]:
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _max_diff(a: Importance, b: Importance) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b)


def _ours(quantity: str, model: nn.Module, x: Tensor, y: Tensor, path: str) -> Callable[[], Importance]:
    if quantity == "mas":
        return lambda: mas_importance(model, x, path=path)  # type: ignore[arg-type]
    mode = quantity.removeprefix("fisher-")
    return lambda: fisher_diagonal(model, x, y, mode=mode, path=path)  # type: ignore[arg-type]


def _loop(quantity: str, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Importance]:
    if quantity == "mas":
        return lambda: mas_importance_loop(model, x)
    return lambda: fisher_diagonal_loop(model, x, y, mode=quantity.removeprefix("fisher-"))


def _opacus(quantity: str, model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Importance] | None:
    """Opacus materialises per-sample gradients; the true Fisher needs one backward pass per class."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None

    def run() -> Importance:
        gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
        gsm.train()  # Opacus captures activations in training mode only (this MLP has no dropout or BatchNorm)
        params = dict(gsm._module.named_parameters())
        acc = {k: torch.zeros_like(p) for k, p in params.items()}
        for start in range(0, len(x), 256):
            xb, yb = x[start : start + 256], y[start : start + 256]
            with torch.no_grad():
                probs = torch.softmax(model(xb), dim=1)
            # Opacus captures activations per forward and consumes them in backward: one forward per row
            rows = [None] if quantity != "fisher-true" else list(range(probs.shape[1]))
            for c in rows:
                gsm.zero_grad(set_to_none=True)
                z = gsm(xb)
                logp = torch.log_softmax(z, dim=1)
                if quantity == "mas":
                    scalar, weight = z.square().sum(), None
                elif c is None:
                    scalar, weight = logp.gather(1, yb[:, None]).sum(), None
                else:
                    scalar, weight = logp[:, c].sum(), probs[:, c]
                scalar.backward()
                for k, prm in params.items():
                    g = prm.grad_sample
                    v = g.abs() if quantity == "mas" else g.square()
                    if weight is not None:
                        v = v * weight.reshape(-1, *([1] * (v.dim() - 1)))
                    acc[k] += v.sum(0)
        return {k: v / len(x) for k, v in acc.items()}

    return run


def _as_plain_sequential(model: Classifier) -> nn.Sequential:
    """The protocol MLP as a flat nn.Sequential of standard layers with copied weights."""
    body = copy.deepcopy(model.body)
    head = nn.Linear(model.head.in_features, model.head.out_features)
    head.load_state_dict(model.head.state_dict())
    return nn.Sequential(*body.children(), head)


def _backpack(quantity: str, model: Classifier, x: Tensor, y: Tensor) -> Callable[[], Importance] | None:
    """BackPACK: DiagGGNExact (= true Fisher for softmax cross-entropy), SumGradSquared, BatchGrad for MAS."""
    try:
        import backpack
        from backpack import extensions
    except ImportError:
        return None

    def run() -> Importance:
        # BackPACK knows only its own layer types inside a flat nn.Sequential (its torch.fx converter fails on the
        # growable head), so it gets a plain Sequential copy with the same weights, names mapped back in order.
        net = backpack.extend(_as_plain_sequential(model))
        net.eval()
        names = [name for name, _ in model.named_parameters()]
        params = dict(zip(names, net.parameters(), strict=True))
        acc = {k: torch.zeros_like(p) for k, p in params.items()}
        if quantity == "mas":
            lossfn, ext, attr = (
                backpack.extend(nn.MSELoss(reduction="sum")),
                extensions.BatchGrad(),
                "grad_batch",
            )
        elif quantity == "fisher-empirical":
            lossfn, ext, attr = (
                backpack.extend(nn.CrossEntropyLoss(reduction="sum")),
                extensions.SumGradSquared(),
                "sum_grad_squared",
            )
        else:
            lossfn, ext, attr = (
                backpack.extend(nn.CrossEntropyLoss(reduction="sum")),
                extensions.DiagGGNExact(),
                "diag_ggn_exact",
            )
        for start in range(0, len(x), 256):
            xb, yb = x[start : start + 256], y[start : start + 256]
            net.zero_grad(set_to_none=True)
            z = net(xb)
            loss = lossfn(z, torch.zeros_like(z)) if quantity == "mas" else lossfn(z, yb)
            with backpack.backpack(ext):
                loss.backward()
            for k, p in params.items():
                value = getattr(p, attr)
                acc[k] += value.abs().sum(0) if quantity == "mas" else value
        return {k: v / len(x) for k, v in acc.items()}

    return run


def measure_importance(
    samples: int, repeats: int, libraries: bool, on_step: Callable[[str], None] = lambda _: None
) -> list[ImportanceRow]:
    torch.manual_seed(0)
    model = protocol_model(10, seed=0)
    x = torch.rand(samples, 784)
    with torch.no_grad():
        y = model(x).argmax(1)
    rows: list[ImportanceRow] = []
    for quantity in QUANTITIES:
        on_step(f"{quantity}: per-sample loop")
        loop_s, reference = _timed(_loop(quantity, model, x, y), 1)
        rows.append(ImportanceRow(quantity, "per-sample loop (definition)", loop_s, 0.0, 1.0))
        candidates: list[tuple[str, Callable[[], Importance] | None, int, str]] = [
            ("factorised (runs)", _ours(quantity, model, x, y, "auto"), repeats, ""),
            ("torch.func vmap", _ours(quantity, model, x, y, "func"), 1, ""),
        ]
        if libraries:
            candidates += [
                ("Opacus grad samplers", _opacus(quantity, model, x, y), 1, ""),
                ("BackPACK", _backpack(quantity, model, x, y), 1, ""),
            ]
        for label, fn, reps, note in candidates:
            on_step(f"{quantity}: {label}")
            if fn is None:
                rows.append(ImportanceRow(quantity, label, float("nan"), None, None, "not installed"))
                continue
            with warnings.catch_warnings():  # the libraries warn about their own hooks
                warnings.simplefilter("ignore")
                seconds, values = _timed(fn, reps)
            rows.append(ImportanceRow(quantity, label, seconds, _max_diff(values, reference), loop_s / seconds, note))
    return rows


def measure_steps(steps: int, on_step: Callable[[str], None] = lambda _: None) -> list[StepRow]:
    """Median time of one Adam step (batch 128) plain, with EWC's closed-form gradient, and with autograd."""
    torch.manual_seed(0)
    x = torch.rand(128, 784)
    y = torch.randint(0, 10, (128,))
    model = protocol_model(10, seed=0)
    ewc = EWC(lam=100.0)
    ewc.consolidate(model, Experience(torch.rand(256, 784)))
    optimizer = make_optimizer(model, TrainConfig())
    variants: list[tuple[str, ContinualMethod, bool]] = [
        ("plain (fine-tune)", FineTune(), True),
        ("EWC, closed-form gradient (runs)", ewc, True),
        ("EWC, penalty through autograd", ewc, False),
    ]
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    for i in range(steps + 20):
        for label, method, closed in variants:
            start = time.perf_counter()
            training_step(model, method, optimizer, x, y, closed_form=closed)
            if i >= 20:  # warm-up
                times[label].append(time.perf_counter() - start)
        if i % 20 == 0:
            on_step(f"training steps {i}/{steps + 20}")
    plain = statistics.median(times[variants[0][0]])
    return [
        StepRow(label, 1e3 * statistics.median(times[label]), statistics.median(times[label]) / plain)
        for label, _, _ in variants
    ]
