"""Weight aligning (Zhao et al., CVPR 2020, "Maintaining Discrimination and Fairness in Class Incremental
Learning", eqs. 5–7).

After an update that added classes, the head's new-class rows have larger norms than the old ones (the new
classes were seen far more often), so their logits win too often.  WA rescales the new rows by
    γ = mean(‖w_old‖) / mean(‖w_new‖),   ŵ_new = γ · w_new.
Our head has a bias, so the new rows' biases are scaled by the same γ: every new-class logit is multiplied by γ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def align_weights(head: nn.Linear, new_classes: Sequence[int]) -> float | None:
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
    if head.bias is not None:
        head.bias[is_new] *= gamma
    return gamma
