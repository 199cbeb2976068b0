"""SMIL (omnifuse.fuse.methods.smil): the reconstruction as a weighted mean of the k-means priors (against a
hand computation and scikit-learn), the reconstruction target at the dropped slots, the perturbation of
incomplete rows only (random in training, its mean in evaluation), the one-step meta-learning loss, learning
end to end, and one fold through ``run_fold`` for every task kind and every missing pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

import omnifuse.fuse.methods.smil  # noqa: F401  (registers the method)
from omnifuse.fuse.base import DroppedBatch, ModalityInfo, ModelInfo
from omnifuse.fuse.layers import task_loss
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.smil import kmeans_priors, presence_input, reconstruct
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    FakeTrainer,
    assert_learns,
    assert_run_fold_every_combination,
    vector_batch,
    write_synthetic_cache,
)

THREE = TWO + [ModalityInfo("c", "vector", (6,))]
QUIET = {"dropout": 0.0, "encoder": {"dropout": 0.0}}  # deterministic in training mode


def test_reconstruction_is_the_softplus_weighted_mean_of_the_priors() -> None:
    logits = torch.tensor([[0.0, math.log(math.e - 1)]])  # softplus: ln 2 and 1
    priors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([math.log(2.0), 1.0])
    torch.testing.assert_close(reconstruct(logits, priors), (w / w.sum()).view(1, 2))
    E = torch.arange(12, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    z = presence_input(E, mask)
    assert z[0].tolist() == [0.0, 1.0, 0.0, 0.0, 4.0, 5.0, 1.0, 0.0, 1.0] and not z[1].any()


def test_priors_are_kmeans_centroids_of_the_rows_holding_each_modality() -> None:
    torch.manual_seed(0)
    model = build_method("smil", ModelInfo(TWO, "binary", 1), d=4, priors=3)
    mask = torch.ones(20, 2, dtype=torch.bool)
    mask[:12, 1] = False  # modality b on 8 rows
    batches = [vector_batch(mask[:10], torch.zeros(10, 1), seed=1), vector_batch(mask[10:], torch.zeros(10, 1), seed=2)]
    model.on_train_start(FakeTrainer(batches, seed=7))
    model.eval()
    with torch.no_grad():
        E = torch.cat([model.enc(b) for b in batches])
    for j in range(2):
        want = KMeans(n_clusters=3, random_state=7, n_init="auto").fit(E[mask[:, j], j].numpy()).cluster_centers_
        np.testing.assert_allclose(model.priors[j].numpy(), want, rtol=1e-5, atol=1e-6)
    # fewer distinct rows than priors: the rows in turn; none: zeros
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    assert kmeans_priors(x, 3, 0).tolist() == [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]
    assert not kmeans_priors(np.zeros((0, 2), np.float32), 2, 0).any()


def test_reconstruction_target_at_the_dropped_slots() -> None:
    torch.manual_seed(0)
    model = build_method("smil", ModelInfo(THREE, "binary", 1), d=4, priors=2, **QUIET)
    with torch.no_grad():
        model.priors.normal_()
    model.train()
    source = vector_batch(
        torch.ones(4, 3, dtype=torch.bool), torch.tensor([[1.0], [0.0], [1.0], [0.0]]), names=("a", "b", "c")
    )
    keep = torch.tensor([[True, False, True], [True, True, True], [False, True, True], [True, False, False]])
    batch = DroppedBatch.drop(source, keep)
    out = model(batch)
    with torch.no_grad():
        real = model.enc(source)
    torch.testing.assert_close(out.extra["embeddings"], real)  # the source's embeddings, dropped slots included
    U, f = out.extra["reconstructed"], out.extra["fused"].view(4, 3, 4)
    torch.testing.assert_close(f[0, 1], U[0, 1])  # the method sees the reconstruction at a dropped slot ...
    torch.testing.assert_close(f[0, 0], real[0, 0])  # ... and the embedding at a present one
    with torch.no_grad():  # the reconstruction of b in row 0 reads a and c only
        want = reconstruct(
            model.recon[1](presence_input(real, torch.tensor([[True, False, True]] * 4))), model.priors[1]
        )
    torch.testing.assert_close(U[0, 1], want[0])
    clean = model.clean_fused(batch, out).view(4, 3, 4)
    torch.testing.assert_close(clean, real)  # the target: every real embedding
    # the target is detached: with b dropped on every row, b's encoder gets no gradient from the loss
    everywhere = DroppedBatch.drop(source, torch.tensor([[True, False, True]] * 4))
    loss, terms = model.loss(everywhere, model(everywhere))
    model.zero_grad(set_to_none=True)
    loss.backward()
    assert {"meta_train", "meta_val", "align_f", "align_h"} <= set(terms) and terms["align_f"] > 0
    grads_b = [p.grad for p in model.enc.encoders[1].parameters()]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in grads_b)
    assert float(model.enc.encoders[0].net[0].weight.grad.abs().max()) > 0


def test_perturbation_on_incomplete_rows_only_random_in_training_its_mean_in_evaluation() -> None:
    torch.manual_seed(0)
    model = build_method("smil", ModelInfo(TWO, "multiclass", 3), d=4, priors=2, hidden=5, **QUIET)
    mask = torch.tensor([[True, True], [True, False]])
    batch = vector_batch(mask, torch.tensor([0, 2]))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        f, z = out.extra["fused"], out.extra["z"]
        plain = model.fc2(F.relu(model.fc1(f)))
        f1 = f + F.softplus(model.noise1(z))
        h = F.relu(model.fc1(f1)) + F.softplus(model.noise2(f1))
        perturbed = model.fc2(h)
    torch.testing.assert_close(out.logits[0], plain[0])  # a complete row: no perturbation
    torch.testing.assert_close(out.logits[1], perturbed[1])  # an incomplete row: the perturbations' mean
    model.train()
    a, b = model(batch).logits, model(batch).logits
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])  # e ~ N(0, I) in training


def test_meta_loss_takes_one_inner_step_of_the_classifier() -> None:
    torch.manual_seed(0)
    info = ModelInfo(THREE, "binary", 1)
    model = build_method("smil", info, d=4, priors=2, inner_lr=0.5, alpha=0.3, beta=0.2, **QUIET).train()
    source = vector_batch(
        torch.ones(6, 3, dtype=torch.bool), (torch.arange(6) % 2).float().view(6, 1), names=("a", "b", "c")
    )
    keep = torch.ones(6, 3, dtype=torch.bool)
    keep[[0, 3], 2] = False
    batch = DroppedBatch.drop(source, keep)
    out = model(batch)
    loss, terms = model.loss(batch, out)
    train = task_loss(out.logits, batch.y, "binary", batch.y_mask)
    theta = model.head_params()
    grads = torch.autograd.grad(train, theta, retain_graph=True)
    star = [p - 0.5 * g for p, g in zip(theta, grads, strict=True)]
    r = torch.tensor([True, False, False, True, False, False])
    ex = out.extra
    logits, f_n, h_n = model.classify(star, ex["fused"][r], ex["z"][r], ex["incomplete"][r], noise=False)
    f_c = model.clean_fused(batch, out)[r]
    _, _, h_c = model.classify(star, f_c, ex["z"][r], torch.zeros(2, dtype=torch.bool), noise=False)
    want = train + task_loss(logits, batch.y[r], "binary") + 0.3 * F.mse_loss(f_n, f_c) + 0.2 * F.mse_loss(h_n, h_c)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    # inner_lr = 0 is the first-order ("joint") loss
    model.inner_lr = 0.0
    joint = build_method("smil", info, d=4, priors=2, meta="joint", alpha=0.3, beta=0.2, **QUIET)
    joint.load_state_dict(model.state_dict())
    joint.train()
    assert float(model.loss(batch, out)[0]) == pytest.approx(float(joint.loss(batch, out)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="smil meta must be one of"):
        build_method("smil", info, meta="reptile")


def test_learns_with_the_trainer() -> None:
    assert_learns("smil", {"priors": 4, "hidden": 16})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("smil") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    run = assert_run_fold_every_combination(cache, "smil", {"d": 8, "priors": 3, "hidden": 8}, task, c)
    assert float(run.model.priors.abs().sum()) > 0  # k-means priors of the training rows
