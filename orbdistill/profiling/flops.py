"""An operation counter that misses nothing silently.

``torch.utils.flop_counter.FlopCounterMode`` counts matrix products only: scatter,
index_add, gather, embeddings, activations and norms all count as zero, which hides most
of the work of a message-passing potential. :class:`OpCounter` sees every ATen operation
through a dispatch mode and files it under one of five rules:

==============  =======================================================================
category        FLOPs counted
==============  =======================================================================
``matmul``      torch's own formulas (mm, addmm, bmm, baddbmm, convolution, attention):
                2 * M * N * K multiply-adds
``elementwise`` one per output element (arithmetic, activations, transcendental functions)
``reduction``   one per input element (sum, mean, norms, softmax, ...)
``scatter``     one per source element (scatter_add, index_add, index_put with accumulate,
                embedding backward): the additions of the aggregation
``gather``      one per output element (index, index_select, gather, embedding): a
                memory operation, counted so its volume shows up in the tables
==============  =======================================================================

Views, copies, dtype conversions and tensor creation cost zero and are listed as such.
Any operation not recognised falls under the elementwise rule *and* is listed in
``unclassified_ops`` of the result, so a reader sees what was estimated.

Every operation is also filed by phase, ``forward`` or ``backward`` (ops run by autograd,
e.g. the gradient pass that gives conservative forces), and by the innermost module that
was executing it (``""`` for operations outside any module).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry as _torch_flop_registry

aten = torch.ops.aten

#: operations that do no arithmetic (views, copies, creation, metadata)
ZERO_COST = {
    "view", "_unsafe_view", "reshape", "expand", "expand_as", "t", "transpose", "permute",
    "squeeze", "unsqueeze", "select", "slice", "narrow", "alias", "detach", "clone",
    "contiguous", "copy_", "_to_copy", "to", "empty", "empty_like", "empty_strided",
    "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros", "ones", "ones_like",
    "new_ones", "full", "full_like", "new_full", "fill_", "fill", "zero_", "arange", "lift_fresh",
    "cat", "stack", "split", "split_with_sizes", "unbind", "chunk", "as_strided",
    "_reshape_alias", "unfold", "repeat", "flatten", "unflatten", "lift_fresh_copy",
    "scalar_tensor", "_local_scalar_dense", "_has_compatible_shallow_copy_type",
    "is_same_size", "sym_size", "sym_stride", "sym_numel", "_efficientzerotensor",
    "diagonal", "movedim", "roll", "flip", "tril", "triu", "masked_fill", "masked_fill_",
    "where", "resize_", "set_", "as_strided_", "view_as", "slice_backward", "select_backward",
    "expand_copy", "view_copy", "permute_copy", "transpose_copy", "split_copy", "diag_embed",
    "bernoulli_", "uniform_", "normal_", "randn", "rand", "randint", "_unsafe_index",
    "sort", "argsort", "topk", "searchsorted", "bincount", "nonzero", "unique", "_unique2",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "isnan",
    "isinf", "isfinite", "any", "all", "argmax", "argmin", "repeat_interleave", "one_hot",
    "detach_", "resolve_conj", "resolve_neg", "_conj", "item", "new_tensor",
    "pad", "constant_pad_nd", "_pad_enum", "dim", "size", "stride", "numel",
    "_assert_async", "_assert_tensor_metadata", "_functional_assert_async", "record_stream",
}
REDUCTION = {
    "sum", "mean", "prod", "amax", "amin", "max", "min", "norm", "linalg_vector_norm",
    "var", "std", "var_mean", "std_mean", "_softmax", "_log_softmax", "softmax", "log_softmax",
    "logsumexp", "cumsum", "cumprod", "_softmax_backward_data", "_log_softmax_backward_data",
    "native_layer_norm", "native_layer_norm_backward", "_fused_rms_norm",
    "_fused_rms_norm_backward", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "native_batch_norm_backward", "linalg_det",
    "_linalg_det", "matrix_exp", "linalg_matrix_exp", "dot", "vdot", "aminmax",
}
SCATTER = {
    "scatter_add", "scatter_add_", "index_add", "index_add_", "scatter_reduce",
    "scatter_reduce_", "index_reduce", "index_reduce_", "embedding_dense_backward",
    "_embedding_bag", "_embedding_bag_backward", "_embedding_bag_dense_backward",
    "segment_reduce", "_segment_reduce_backward",
}
GATHER = {"index", "index_select", "gather", "embedding", "take", "take_along_dim", "scatter", "scatter_"}
ELEMENTWISE = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "abs", "pow", "sqrt",
    "rsqrt", "exp", "log", "sin", "cos", "tanh", "sigmoid", "silu", "gelu", "relu",
    "softplus", "clamp", "clamp_min", "clamp_max", "reciprocal", "addcmul", "addcdiv",
    "lerp", "sign", "sgn", "floor", "ceil", "round", "fmod", "remainder", "maximum",
    "minimum", "silu_backward", "sigmoid_backward", "softplus_backward", "gelu_backward",
    "tanh_backward", "threshold_backward", "rsub", "square", "exp2", "expm1", "log1p",
    "erf", "atan2", "acos", "asin", "atan", "sinc", "hardtanh", "leaky_relu", "elu",
    "mish", "mish_backward", "elu_backward", "leaky_relu_backward", "xlogy", "heaviside",
    "nan_to_num", "bitwise_and", "bitwise_or", "copysign", "hypot", "logit", "frac",
    "_foreach_add", "_foreach_mul", "lerp_", "addcmul_", "addcdiv_", "sqrt_", "div_",
    "mul_", "clamp_", "neg_", "masked_scatter",
}


def _numel(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (list, tuple)):
        return sum(_numel(v) for v in x)
    return 0


def _first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)):
            t = _first_tensor(a)
            if t is not None:
                return t
    return None


def classify(func) -> str:
    """The category of an ATen op: matmul, elementwise, reduction, scatter, gather, zero, unknown."""
    packet = func.overloadpacket
    if packet in _torch_flop_registry:
        return "matmul"
    name = packet.__name__
    if name in ("mv", "addmv"):
        return "matmul"
    if name in ZERO_COST:
        return "zero"
    if name in REDUCTION:
        return "reduction"
    if name in SCATTER:
        return "scatter"
    if name in GATHER:
        return "gather"
    if name in ELEMENTWISE:
        return "elementwise"
    if name == "index_put" or name == "index_put_" or name == "_index_put_impl_":
        return "scatter"
    return "unknown"


def count_flops(func, args, kwargs, out) -> tuple:
    """(category, flops) of one op call under the rules of the module docstring."""
    cat = classify(func)
    if cat == "zero":
        return cat, 0
    if cat == "matmul" and func.overloadpacket.__name__ in ("mv", "addmv"):
        mat = args[1] if func.overloadpacket.__name__ == "addmv" else args[0]
        return cat, 2 * _numel(mat)
    if cat == "matmul":
        return cat, int(_torch_flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
    name = func.overloadpacket.__name__
    if cat == "reduction":
        t = _first_tensor(args)
        return cat, _numel(t) if t is not None else _numel(out)
    if cat == "scatter":
        if name in ("index_put", "index_put_", "_index_put_impl_"):
            values = args[2] if len(args) > 2 else kwargs.get("values")
            return cat, _numel(values)
        if name in ("embedding_dense_backward",):
            return cat, _numel(args[0])
        src = kwargs.get("source", kwargs.get("src"))
        if src is None:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            src = tensors[-1] if tensors else out
        return cat, _numel(src)
    # gather, elementwise, unknown: one per output element
    return cat, _numel(out)


@dataclass
class OpRecord:
    calls: int = 0
    flops: int = 0


@dataclass
class CountResult:
    """Totals of one counted region.

    Attributes:
        by_phase: {"forward": flops, "backward": flops}
        by_module: {(phase, module_name): flops} (innermost module, "" for none)
        by_category: {(phase, category): flops}
        by_op: {(phase, op_name): OpRecord}
        unclassified_ops: op names counted with the default (elementwise) rule
    """

    by_phase: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_module: Dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    by_category: Dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    by_op: Dict[tuple, OpRecord] = field(default_factory=lambda: defaultdict(OpRecord))
    unclassified_ops: set = field(default_factory=set)
    ops_seen: set = field(default_factory=set)

    @property
    def forward(self) -> int:
        return int(self.by_phase.get("forward", 0))

    @property
    def backward(self) -> int:
        return int(self.by_phase.get("backward", 0))


class OpCounter(TorchDispatchMode):
    """Count the FLOPs of everything run inside ``with OpCounter(model) as c:``.

    Args:
        root: optional module; its submodules get forward hooks so that every op is
            attributed to the innermost module running it (names relative to ``root``)

    Example:
        >>> lin = torch.nn.Linear(4, 8)
        >>> with OpCounter(lin) as c:
        ...     _ = lin(torch.randn(5, 4))
        >>> c.result.forward  # 2 * 5 * 4 * 8 for the product (+ nothing else)
        320
    """

    def __init__(self, root: Optional[torch.nn.Module] = None):
        super().__init__()
        self.root = root
        self.result = CountResult()
        self._stack: list = []
        self._handles: list = []

    def __enter__(self):
        if self.root is not None:
            for name, mod in self.root.named_modules():
                self._handles.append(mod.register_forward_pre_hook(self._make_pre(name)))
                self._handles.append(mod.register_forward_hook(self._make_post(name), always_call=True))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def _make_pre(self, name):
        def hook(mod, args):
            self._stack.append(name)

        return hook

    def _make_post(self, name):
        def hook(mod, args, out):
            if self._stack and self._stack[-1] == name:
                self._stack.pop()

        return hook

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        cat, flops = count_flops(func, args, kwargs, out)
        name = func.overloadpacket.__name__
        r = self.result
        r.ops_seen.add(name)
        if cat == "unknown":
            r.unclassified_ops.add(name)
            cat = "elementwise"
        module = self._stack[-1] if (self._stack and phase == "forward") else ""
        r.by_phase[phase] += flops
        r.by_module[(phase, module)] += flops
        r.by_category[(phase, cat)] += flops
        rec = r.by_op[(phase, name)]
        rec.calls += 1
        rec.flops += flops
        return out
