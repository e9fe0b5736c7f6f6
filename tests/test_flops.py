"""The op counter against counts worked out by hand."""

import torch

from orbdistill.profiling.flops import OpCounter


def test_linear_silu_scatter_embedding_counted_by_hand():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 8)
    emb = torch.nn.Embedding(10, 4)
    z = torch.tensor([1, 2, 3, 4, 5])
    idx = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    with OpCounter() as c:
        x = emb(z)  # gather: 5 * 4 = 20
        h = torch.nn.functional.silu(lin(x))  # addmm 2*5*4*8 = 320; silu 5*8 = 40
        edges = h[idx]  # gather: 10 * 8 = 80
        agg = torch.zeros(5, 8).index_add(0, idx, edges)  # scatter: 10 * 8 = 80
        s = agg.sum()  # reduction: 40
    r = c.result
    cats = {k[1]: v for k, v in r.by_category.items()}
    assert cats["matmul"] == 320
    assert cats["elementwise"] == 40
    assert cats["gather"] == 20 + 80
    assert cats["scatter"] == 80
    assert cats["reduction"] == 40
    assert r.forward == 320 + 40 + 100 + 80 + 40
    assert r.backward == 0
    assert not r.unclassified_ops


def test_gradient_pass_is_counted_as_backward():
    lin = torch.nn.Linear(4, 8, bias=False)
    for p in lin.parameters():
        p.requires_grad_(False)
    x = torch.randn(5, 4, requires_grad=True)
    with OpCounter() as c:
        y = lin(x).sum()
        (g,) = torch.autograd.grad(y, x)
    r = c.result
    assert r.by_category[("forward", "matmul")] == 2 * 5 * 4 * 8
    # dL/dx = ones[5,8] @ W[8,4]: 2 * 5 * 8 * 4
    assert r.by_category[("backward", "matmul")] == 2 * 5 * 8 * 4


def test_ops_are_attributed_to_the_innermost_module():
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.SiLU(), torch.nn.Linear(6, 2))
    with OpCounter(net) as c:
        net(torch.randn(7, 3))
    bm = c.result.by_module
    assert bm[("forward", "0")] == 2 * 7 * 3 * 6
    assert bm[("forward", "1")] == 7 * 6
    assert bm[("forward", "2")] == 2 * 7 * 6 * 2
    assert bm.get(("forward", ""), 0) == 0


def test_unknown_ops_are_listed_not_silently_dropped():
    x = torch.rand(4, 3) * 0.5
    with OpCounter() as c:
        torch.erfinv(x)
    assert "erfinv" in c.result.unclassified_ops
    assert c.result.forward == 12
