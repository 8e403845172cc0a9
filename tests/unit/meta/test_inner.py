import torch

from taalm_dist.meta.inner import (AdamState, InnerStep, adam_direction, adam_direction_derivative, adam_moments,
                                   adamw_update_, apply_adamw)


def test_apply_adamw_matches_torch_adamw_for_two_steps():
    g = torch.Generator().manual_seed(0)
    p_ours = torch.randn(5, 3, generator=g, dtype=torch.float64)
    p_torch = torch.nn.Parameter(p_ours.clone())
    grads = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    step = InnerStep("adamw", 1e-2, (0.9, 0.999), 1e-8, 0.1)
    opt = torch.optim.AdamW([p_torch], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    state = None
    for gr in grads:
        state = apply_adamw([p_ours], [gr], state, step)
        p_torch.grad = gr.clone()
        opt.step()
    assert torch.allclose(p_ours, p_torch.detach(), rtol=0, atol=1e-14)


def test_direction_derivative_matches_autograd_including_zero_moment():
    g = torch.Generator().manual_seed(1)
    betas, eps = (0.9, 0.999), 1e-8
    grad = torch.randn(50, generator=g, dtype=torch.float64)
    grad[:5] = 0.0
    m_prev = torch.randn(50, generator=g, dtype=torch.float64) * 0.1
    v_prev = torch.rand(50, generator=g, dtype=torch.float64) * 0.01
    v_prev[:3] = 0.0  # zero second moment and zero gradient: the limit case
    m_prev[:3] = 0.0
    x = grad.clone().requires_grad_(True)
    m, v = adam_moments(x, m_prev, v_prev, betas)
    a = adam_direction(m, v, 2, betas, eps)
    (jac_diag,) = torch.autograd.grad(a.sum(), x)  # elementwise, so the sum's grad is the diagonal
    m0, v0 = adam_moments(grad, m_prev, v_prev, betas)
    ours = adam_direction_derivative(grad, m0, v0, 2, betas, eps)
    assert torch.allclose(ours, jac_diag, rtol=1e-10, atol=0)
    assert torch.isfinite(ours).all()


def test_fused_update_and_derivative_match_the_spec_and_autograd():
    """adamw_update_ (the fused path the meta-step runs) against adam_direction / autograd, zero moments included."""
    g = torch.Generator().manual_seed(2)
    betas, eps, lr = (0.9, 0.999), 1e-8, 1e-2
    grad = torch.randn(50, generator=g, dtype=torch.float64)
    grad[:5] = 0.0
    m_prev = torch.randn(50, generator=g, dtype=torch.float64) * 0.1
    v_prev = torch.rand(50, generator=g, dtype=torch.float64) * 0.01
    v_prev[:3] = 0.0
    m_prev[:3] = 0.0
    x = grad.clone().requires_grad_(True)
    m, v = adam_moments(x, m_prev, v_prev, betas)
    a = adam_direction(m, v, 2, betas, eps)
    (jac_diag,) = torch.autograd.grad(a.sum(), x)
    p = torch.zeros(50, dtype=torch.float64)
    state, dadg = adamw_update_([p], [grad], AdamState([m_prev], [v_prev], 1), InnerStep("adamw", lr, betas, eps),
                                derivative=True)
    assert torch.allclose(dadg[0], jac_diag, rtol=1e-10, atol=0) and torch.isfinite(dadg[0]).all()
    assert torch.allclose(p, -lr * a.detach(), rtol=1e-12, atol=1e-18)
    assert state.t == 2 and torch.allclose(state.m[0], m.detach()) and torch.allclose(state.v[0], v.detach())
