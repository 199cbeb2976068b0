import torch

from omnifuse.fuse.cra import CRA, backward_loss, forward_loss


def test_cascade_follows_eq4_5():
    torch.manual_seed(0)
    c = CRA(6, K=3, hidden=8, latent=4)
    v = torch.randn(2, 6)
    out, lat = c(v)
    acc = torch.zeros_like(v)
    for k, phi in enumerate(c.blocks):
        dz, _ = phi(v if k == 0 else v + acc)
        acc = acc + dz
    assert torch.allclose(out, v + acc)
    assert lat.shape == (2, 12)


def test_losses_only_on_selected_and_truth_detached():
    vp = torch.zeros(2, 3, 4, requires_grad=True)
    truth = torch.ones(2, 3, 4, requires_grad=True)
    sel = torch.tensor([[True, False, False], [False, False, False]])
    loss = forward_loss(vp, truth, sel)
    assert loss.item() == 1.0
    loss.backward()
    assert truth.grad is None and vp.grad[0, 0].abs().sum() > 0 and vp.grad[1].abs().sum() == 0
    assert forward_loss(vp, truth, torch.zeros_like(sel)).item() == 0.0
    assert backward_loss(vp, truth, sel).item() == 1.0


def test_cra_reconstructs_held_out_better_than_zero_fill():
    """Two correlated 'modalities': after training, imputing the dropped one beats the zero fill."""
    torch.manual_seed(0)
    d = 4
    W = torch.randn(d, d)

    def sample(n):
        a = torch.randn(n, d)
        return a, a @ W + 0.05 * torch.randn(n, d)

    cra = CRA(2 * d, K=3, hidden=32, latent=8)
    opt = torch.optim.Adam(cra.parameters(), lr=3e-3)
    for _ in range(300):
        a, b = sample(64)
        v = torch.cat([a, torch.zeros_like(b)], 1)  # b dropped on purpose
        vp, _ = cra(v)
        loss = forward_loss(vp.view(-1, 2, d), torch.stack([a, b], 1), torch.tensor([[False, True]]).expand(64, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = sample(500)  # held out
    with torch.no_grad():
        vp, _ = cra(torch.cat([a, torch.zeros_like(b)], 1))
    err_cra = ((vp[:, d:] - b) ** 2).mean()
    err_zero = (b**2).mean()
    assert err_cra < 0.3 * err_zero
