"""DWFuse, the down-weighting fusion of OmniFuse (paper eq. 9-14).

- eq. 9: ``p_m = g_m(u_m)``, one classifier head per modality on its (imputed where missing) representation;
- eq. 10: ``w_m = [prod_{n != m} (1 - p_n)]^(beta / (M - 1))`` with ``p_n`` the probability head ``n`` gives the
  true class, computed without gradient; for multilabel tasks per label; ``M = 1`` gives ``w = 1``;
- eq. 11: ``o = g_rp(concat(s_1..s_K))``, the joint head on the forward CRA's latents;
- eq. 12: the paper writes ``L_ens = -sum_m H(w_m p_m, y)``; read literally with ``w`` detached,
  ``-log(w p_y) = -log w - log p_y`` has the gradient of the unweighted loss, so we take
  ``L_ens = sum_m w_m * CE(p_m, y)`` (the weight scales each row's loss);
- eq. 13: ``L_rp = CE(o, y)``; eq. 14: ``L_DWFuse = L_ens + alpha * L_rp``.

The heads ``g_m`` and ``g_rp`` are :func:`omnifuse.fuse.layers.mlp_head`; the cross-entropies and true-class
probabilities are :mod:`omnifuse.fuse.layers`' (binary and multilabel: a sigmoid and binary cross-entropy per
label; multiclass: softmax and cross-entropy, labels [B] class indices).
"""

from __future__ import annotations

import torch

from omnifuse.fuse.layers import task_loss, true_class_probability


def predicted_class_probability(logits: torch.Tensor, joint_logits: torch.Tensor, task_kind: str) -> torch.Tensor:
    """As :func:`omnifuse.fuse.layers.true_class_probability` (per label for binary/multilabel: [B, C];
    multiclass [B]) with the class predicted by the joint output ``o`` [B, C] in place of the label
    (label-free, for inference)."""
    yhat = joint_logits.argmax(dim=-1) if task_kind == "multiclass" else (joint_logits > 0).float()
    return true_class_probability(logits, yhat, task_kind)


def down_weights(p_true: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 10 without gradient. ``p_true`` [M, B] or [M, B, C] (the true-class probability of each head)
    -> ``w`` of the same shape: ``w_m = prod_{n != m} (1 - p_n) ** (beta / (M - 1))``; all ones when M = 1."""
    with torch.no_grad():
        M = p_true.shape[0]
        if M == 1:
            return torch.ones_like(p_true)
        log1m = torch.log1p(-p_true.clamp(max=1 - 1e-7))  # log(1 - p_n), finite
        others = log1m.sum(0, keepdim=True) - log1m  # sum over n != m
        return torch.exp(others * (beta / (M - 1)))


def dwfuse_loss(
    per_modality_logits: list[torch.Tensor],
    joint_logits: torch.Tensor,
    y: torch.Tensor,
    task_kind: str,
    beta: float = 0.5,
    alpha: float = 0.1,
    y_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 12-14: ``L_DWFuse = sum_m mean(w_m * CE(p_m, y)) + alpha * CE(o, y)``.

    ``per_modality_logits``: M tensors [B, C]; ``joint_logits`` [B, C]. Returns the loss and its terms
    (``ens``, ``rp``, and the mean weight per modality ``w`` [M])."""
    p_true = torch.stack([true_class_probability(z.detach(), y, task_kind) for z in per_modality_logits])
    w = down_weights(p_true, beta)
    ens = sum(
        (task_loss(z, y, task_kind, y_mask, weight=w[m]) for m, z in enumerate(per_modality_logits)),
        joint_logits.new_zeros(()),
    )
    rp = task_loss(joint_logits, y, task_kind, y_mask)
    return ens + alpha * rp, {"ens": ens, "rp": rp, "w": w.reshape(w.shape[0], -1).mean(1)}
