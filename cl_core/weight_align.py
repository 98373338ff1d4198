"""Weight aligning (Zhao et al., CVPR 2020, "Maintaining Discrimination and Fairness in Class Incremental
Learning", eqs. 5–7).

After an update that added classes, the head's new-class rows have larger norms than the old ones (the new
classes were seen far more often), so their logits win too often.  WA rescales the new rows by
    γ = mean(‖w_old‖) / mean(‖w_new‖),   ŵ_new = γ · w_new.
The norm only measures a logit's scale when the features and the weights are non-negative: the paper clips the
head's weights to be non-negative after every optimisation step (Sec. 3.3; features are ReLU outputs), and so
do we while a `+wa` method trains (`clip_nonnegative`).  Without the clipping, old rows that kept training grow
larger than the new ones, γ exceeds 1 and aligning makes the bias worse (we measured this on split MNIST).
The biases are left as they are by default, as the reference implementations do (PyCIL, FACIL).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def clip_nonnegative(head: nn.Linear) -> None:
    """Keep the head's weights non-negative (applied after every optimisation step)."""
    head.weight.clamp_(min=0.0)


@torch.no_grad()
def align_weights(head: nn.Linear, new_classes: Sequence[int], *, scale_bias: bool = False) -> float | None:
    """Rescale the rows of ``new_classes`` to the old rows' mean norm; returns γ (None when nothing to align)."""
    new = sorted(set(int(c) for c in new_classes))
    if not new:
        return None
    if new[0] < 0 or new[-1] >= head.out_features:
        raise ValueError(f"new classes {new} are outside the head's {head.out_features} outputs")
    is_new = torch.zeros(head.out_features, dtype=torch.bool, device=head.weight.device)
    is_new[new] = True
    if bool(is_new.all()):
        return None  # no old classes to align to
    norms = head.weight.norm(dim=1)
    gamma = float(norms[~is_new].mean() / norms[is_new].mean().clamp_min(1e-12))
    head.weight[is_new] *= gamma
    if scale_bias and head.bias is not None:
        head.bias[is_new] *= gamma
    return gamma
