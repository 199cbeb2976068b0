"""DrFuse (omnifuse.fuse.methods.drfuse): logit pooling against the authors' two-modality formula, the JSD,
orthogonality and attention-ranking losses against hand computations, the disease-aware attention over the
available tokens, the loss as the weighted sum of its terms, learning end to end, and one fold through
``run_fold`` for every task kind and every pattern of missing modalities."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import omnifuse.fuse.methods.drfuse  # noqa: F401  (registers the method)
from omnifuse.fuse.base import ModalityInfo, ModelInfo
from omnifuse.fuse.methods import build_method
from omnifuse.fuse.methods.drfuse import (
    attention_rank_loss,
    distinct_loss,
    jsd_loss,
    logit_pool,
    per_class_loss,
)
from tests.helpers import (
    TASK_OUTPUTS,
    TWO,
    assert_learns,
    assert_run_fold_every_combination,
    sigmoid,
    vector_batch,
    write_synthetic_cache,
)


def test_logit_pool_is_their_formula_and_the_mean_probability() -> None:
    torch.manual_seed(0)
    s = torch.randn(3, 2, 4)
    h1, h2 = s[:, 0], s[:, 1]
    # their DrFuseModel.forward: logsumexp([h1+h2, h1+h2, h1, h2]) - logsumexp([0, 0, h1, h2])
    theirs = torch.logsumexp(torch.stack([h1 + h2, h1 + h2, h1, h2], 2), 2) - torch.logsumexp(
        torch.stack([0 * h1, 0 * h1, h1, h2], 2), 2
    )
    torch.testing.assert_close(logit_pool(s, torch.ones(3, 2, dtype=torch.bool)), theirs)
    s3 = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    p = torch.sigmoid(logit_pool(s3, mask))
    torch.testing.assert_close(p[0], torch.sigmoid(s3[0]).mean(0))  # the mean probability of the present ones
    torch.testing.assert_close(logit_pool(s3, mask)[1], s3[1, 0])  # one present: itself (an unpaired stay)
    assert torch.equal(logit_pool(s3, torch.zeros(2, 3, dtype=torch.bool)), torch.zeros(2, 4))


def test_jsd_hand_computed() -> None:
    s = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [5.0, 5.0]], [[1.0, 1.0], [0.0, 0.0], [0.0, 3.0]]])
    mask = torch.tensor([[True, True, False], [True, False, True]])  # row 0: a, b; row 1: a, c

    def kl(p: float, q: float, bern: bool) -> float:
        out = p * math.log(p / q)
        return out + ((1 - p) * math.log((1 - p) / (1 - q)) if bern else 0.0)

    def row(vals: list[list[float]], bern: bool) -> float:
        tot = 0.0
        for i in range(2):
            ps = [sigmoid(v[i]) for v in vals]
            mix = sum(ps) / len(ps)
            tot += sum(kl(p, mix, bern) for p in ps) / len(ps)
        return tot

    for form, bern in (("authors", False), ("bernoulli", True)):
        want = (row([[0.0, 1.0], [2.0, -1.0]], bern) + row([[1.0, 1.0], [0.0, 3.0]], bern)) / 2
        assert float(jsd_loss(s, mask, form)) == pytest.approx(want, rel=1e-5)
    # their JSD class, 2 modalities on paired rows: 0.5 (KL(p||m) + KL(q||m)) summed over features, mean over rows
    p, q = torch.sigmoid(s[:, 0]), torch.sigmoid(s[:, 1])
    m = 0.5 * (p + q)
    theirs = (0.5 * (p * (p / m).log() + q * (q / m).log())).sum() / 2
    both = torch.ones(2, 2, dtype=torch.bool)
    torch.testing.assert_close(jsd_loss(s[:, :2], both), theirs)
    # no row with two modalities: zero
    assert float(jsd_loss(s, torch.tensor([[True, False, False], [False, False, True]]))) == 0.0


def test_distinct_loss_hand_computed() -> None:
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 0.0]]])
    t = torch.tensor([[[1.0, 1.0], [-1.0, 1.0]], [[1.0, -1.0], [0.0, 5.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    # modality a on both rows: |cos| = 1/sqrt2 and 1/sqrt2; modality b on row 0 only: |cos| = 0
    want = (1 / math.sqrt(2) + 1 / math.sqrt(2)) / 2 + 0.0
    assert float(distinct_loss(s, t, mask)) == pytest.approx(want, rel=1e-6)


def test_attention_rank_loss_hand_computed() -> None:
    # two rows, one class, three tokens
    attn = torch.tensor([[[0.5, 0.3, 0.2]], [[0.2, 0.2, 0.6]]])
    losses = torch.tensor([[[0.1, 0.9, 0.5]], [[1.0, 0.2, 0.3]]])
    rows = torch.tensor([[True, True, True], [True, True, False]])
    # pair (0,1): row 0 loss0 < loss1 -> r=+1, max(0, -(0.5-0.3)) = 0; row 1 r=-1: max(0, 0.2-0.2) = 0 -> 0
    # pair (0,2): row 0 r=+1: max(0, -(0.5-0.2)) = 0; row 1 token 2 unavailable -> 0
    # pair (1,2): row 0 loss1 > loss2 -> r=-1: max(0, 0.3-0.2) = 0.1 (one positive term); row 1 excluded
    want = (0.0 + 0.0 + 0.1 / 1) / 3
    assert float(attention_rank_loss(attn, losses, rows)) == pytest.approx(want, abs=1e-7)
    # a wrongly ordered pair on two rows: the sum over its positive terms divided by their number
    attn2 = torch.tensor([[[0.2, 0.8]], [[0.4, 0.6]]])
    losses2 = torch.tensor([[[0.1, 0.5]], [[0.1, 0.5]]])
    both = torch.ones(2, 2, dtype=torch.bool)
    assert float(attention_rank_loss(attn2, losses2, both)) == pytest.approx((0.6 + 0.2) / 2, rel=1e-6)


def _rank_loss_per_pair(attn, token_loss, rows):
    """The ranking loss as first written, one pair of tokens at a time (the reference of the vectorised one)."""
    terms = []
    for a, b in itertools.combinations(range(attn.shape[-1]), 2):
        r = torch.where(token_loss[..., a] < token_loss[..., b], 1.0, -1.0)
        both = (rows[:, a] & rows[:, b]).float().unsqueeze(1)
        lossab = both * F.margin_ranking_loss(attn[..., a], attn[..., b], r, margin=0.0, reduction="none")
        terms.append(lossab.sum() / (lossab > 0).sum().clamp(min=1).float())
    return torch.stack(terms).mean()


@pytest.mark.parametrize("tokens", [2, 4, 9])
def test_vectorised_rank_loss_equals_the_loop_over_pairs(tokens: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    logits = torch.randn(7, 3, tokens, generator=g, requires_grad=True)
    losses = torch.rand(7, 3, tokens, generator=g).round(decimals=1)  # ties included
    rows = torch.rand(7, tokens, generator=g) < 0.7
    got = attention_rank_loss(torch.softmax(logits, -1), losses, rows)
    (g1,) = torch.autograd.grad(got, logits)
    want = _rank_loss_per_pair(torch.softmax(logits, -1), losses, rows)
    (g2,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g1, g2)
    assert float(want) > 0
    one = torch.ones(2, 1, 1)
    assert float(attention_rank_loss(one, one, torch.ones(2, 1, dtype=torch.bool))) == 0.0  # one token: no pair


@pytest.mark.parametrize("kind,c", [("binary", 1), ("multilabel", 2), ("multiclass", 3)])
def test_token_losses_of_the_loss_equal_one_call_per_token(kind: str, c: int) -> None:
    torch.manual_seed(0)
    mods = TWO + [ModalityInfo("c", "vector", (6,))]
    model = build_method("drfuse", ModelInfo(mods, kind, c), d=8).eval()
    mask = torch.tensor([[True, False, True], [False, True, False], [True, True, True], [True, True, False]])
    y = torch.tensor([0, 2, 1, 2]) if kind == "multiclass" else (torch.arange(4 * c).view(4, c) % 2).float()
    batch = vector_batch(mask, y, names=("a", "b", "c"))
    with torch.no_grad():
        out = model(batch)
        _, terms = model.loss(batch, out)
        ex = out.extra
        token_logits = torch.cat([ex["distinct_logits"], ex["shared_logits"].unsqueeze(1)], dim=1)
        tl = torch.stack([per_class_loss(token_logits[:, j], y, kind) for j in range(4)], dim=-1)
        want = _rank_loss_per_pair(ex["attention"], tl, ex["available"])
    assert terms["rank"] == pytest.approx(float(want), rel=1e-6, abs=1e-8)


def test_attention_reads_only_available_tokens_and_the_pooled_shared_one() -> None:
    torch.manual_seed(0)
    mods = TWO + [ModalityInfo("c", "vector", (6,))]
    model = build_method("drfuse", ModelInfo(mods, "multilabel", 2), d=8).eval()
    mask = torch.tensor([[True, False, True], [False, True, False], [True, True, True]])
    batch = vector_batch(mask, torch.zeros(3, 2), names=("a", "b", "c"))
    with torch.no_grad():
        out = model(batch)
    ex = out.extra
    attn = ex["attention"]  # [B, C, M+1]
    assert attn.shape == (3, 2, 4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2))
    assert float(attn[0, :, 1].abs().max()) == 0.0 and float(attn[1, :, [0, 2]].abs().max()) == 0.0
    assert bool((attn[:, :, 3] > 0).all())  # the shared token is always available
    torch.testing.assert_close(ex["pooled"], logit_pool(ex["shared"], mask))
    # the prediction of class c: w_c . (attention-weighted values) + b_c, by hand for row 0
    d = 8
    tokens = torch.cat([ex["distinct"], ex["pooled"].unsqueeze(1)], dim=1)
    with torch.no_grad():
        q, v, k = model.attn_proj(tokens).split([d, d, 2 * d], dim=-1)
    k = k.reshape(3, 4, 2, d)
    avail = [0, 2, 3]
    qm = q[0, avail].mean(0)
    for c in range(2):
        a = torch.softmax(torch.stack([qm @ k[0, t, c] for t in avail]) / math.sqrt(d), 0)
        rep = (a.unsqueeze(1) * v[0, avail]).sum(0)
        want = model.final.weight[c] @ rep + model.final.bias[c]
        torch.testing.assert_close(out.logits[0, c], want)


def test_loss_is_the_weighted_sum_of_its_terms() -> None:
    torch.manual_seed(0)
    info = ModelInfo(TWO, "binary", 1)
    lam = {"lambda_pred_shared": 0.5, "lambda_pred_distinct": 2.0, "lambda_shared": 3.0, "lambda_distinct": 0.25}
    model = build_method("drfuse", info, d=8, lambda_attn=0.7, **lam).train()
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    batch = vector_batch(mask, torch.tensor([[1.0], [0.0], [1.0], [0.0]]))
    loss, t = model.loss(batch, model(batch))
    want = t["final"] + 0.5 * t["shared"] + 2.0 * t["distinct"] + 3.0 * t["jsd"] + 0.25 * t["orthogonal"]
    assert float(loss) == pytest.approx(want + 0.7 * t["rank"], rel=1e-5)
    assert t["jsd"] > 0 and t["orthogonal"] > 0
    with pytest.raises(ValueError, match="drfuse jsd must be one of"):
        build_method("drfuse", info, jsd="kl")


def test_learns_with_the_trainer() -> None:
    assert_learns("drfuse", {})


# ------------------------------------------------------------------------------------------------------
# one fold through run_fold: every task kind, every combination of modalities
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("drfuse") / "c.zarr", n=120, seed=1)


@pytest.mark.parametrize("task,c", TASK_OUTPUTS)
def test_run_fold_every_task_and_missing_pattern(cache, task: str, c: int) -> None:
    assert_run_fold_every_combination(cache, "drfuse", {"d": 8}, task, c)
