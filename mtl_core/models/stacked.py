"""K replicas of one model run as one: the layers of a stacked run (mtl_core.replicas).

Activations are *folded*: replica r's batch is rows r·B .. (r+1)·B−1 of one (K·B, ...) tensor,
so every parameter-free step of an architecture (flatten, stack, einsum over experts, softmax,
pooling, activations, squeeze) runs unchanged on all replicas at once. Only the layers with
parameters are swapped for stacked versions that read their weights from a (K, ...) leaf:

- Linear: one batched matmul (`baddbmm`) over the replica dimension;
- Conv2d: one grouped convolution (groups = K);
- BatchNorm: one batch norm over K·C channels (each replica its own statistics);
- the cross-stitch unit: one einsum with a (K, T, T) mixing tensor.

Hand-written rather than `torch.vmap(functional_call)`: on the 2-core CPU the vmapped step of
the default MLP cost 2.3-3.4× one model's step for 5 replicas, these layers 1.3-1.4×
(bench/replicas.py). `fold` returns None for a model with a parameterised layer it does not
know; the run then steps each replica's own model (the "loop" engine).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_core.models.base import MTLModel
from mtl_core.models.cross_stitch import Stitch


class LeafLayout:
    """Where replica r's own parameter sits in its stacked leaf.

    "plain": the leaf is (K, *shape) and replica r's tensor is slice r. "linear_weight": a
    Linear's (out, in) weight is stored transposed, (K, in, out); "linear_bias": its bias as
    (K, 1, out). `baddbmm` then takes both as they are: the transpose and unsqueeze a (K, out,
    in) leaf needs on every forward cost two autograd nodes per layer, ~20 % of a stacked step
    of the default MLP (bench/replicas.py)."""

    def __init__(self, kind: str = "plain") -> None:
        self.kind = kind

    def stack(self, tensors: list[Tensor]) -> Tensor:
        if self.kind == "linear_weight":
            return torch.stack([t.t() for t in tensors]).contiguous()
        if self.kind == "linear_bias":
            return torch.stack(tensors).unsqueeze(1)
        return torch.stack(tensors)

    def view(self, leaf: Tensor, r: int) -> Tensor:
        """Replica r's tensor, in its own shape, sharing the leaf's storage."""
        if self.kind == "linear_weight":
            return leaf[r].t()
        if self.kind == "linear_bias":
            return leaf[r, 0]
        return leaf[r]

    def to_slice(self, t: Tensor, slice_shape: torch.Size) -> Tensor:
        """A tensor shaped as the replica's (its gradient) in the layout of its slice."""
        return (t.t() if self.kind == "linear_weight" else t).reshape(slice_shape)

    def replica_order(self, block: Tensor, slice_shape: torch.Size) -> Tensor:
        """(T, K, slice numel) in the slice's element order -> in the replica's own order."""
        if self.kind != "linear_weight":
            return block
        t, k = block.shape[:2]
        return block.reshape(t, k, *slice_shape).transpose(2, 3).reshape(t, k, -1)


def leaf_layouts(model: nn.Module) -> dict[str, LeafLayout]:
    """The layout of every parameter of `model` (by `named_parameters` name) in its leaf."""
    layouts = {name: LeafLayout() for name, _ in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            prefix = f"{name}." if name else ""
            layouts[prefix + "weight"] = LeafLayout("linear_weight")
            if module.bias is not None:
                layouts[prefix + "bias"] = LeafLayout("linear_bias")
    return layouts


class StackedLinear(nn.Module):
    def __init__(self, weight: Tensor, bias: Tensor | None, replicas: int) -> None:
        super().__init__()
        self.weight, self.bias, self.replicas = weight, bias, replicas  # (K, in, out), (K, 1, out)

    def forward(self, x: Tensor) -> Tensor:
        k = self.replicas
        if x.dim() == 3 and getattr(self, "unfolded", False):  # (K, B, in): see `unfoldable`
            if self.bias is None:
                return torch.bmm(x, self.weight)
            return torch.baddbmm(self.bias, x, self.weight)
        folded = x.reshape(k, -1, x.shape[-1])
        if self.bias is None:
            out = torch.bmm(folded, self.weight)
        else:
            out = torch.baddbmm(self.bias, folded, self.weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _to_channels(x: Tensor, k: int) -> Tensor:
    """(K·B, C, ...) -> (B, K·C, ...): the replicas side by side as channel groups."""
    b = x.shape[0] // k
    return x.reshape(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, k * x.shape[1], *x.shape[2:])


def _from_channels(x: Tensor, k: int) -> Tensor:
    b, c = x.shape[0], x.shape[1] // k
    return x.reshape(b, k, c, *x.shape[2:]).transpose(0, 1).reshape(k * b, c, *x.shape[2:])


class StackedConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None,
                 replicas: int) -> None:
        super().__init__()
        self.conv, self.weight, self.bias, self.replicas = conv, weight, bias, replicas

    def forward(self, x: Tensor) -> Tensor:
        k, c = self.replicas, self.conv
        weight = self.weight.reshape(-1, *self.weight.shape[2:])
        bias = None if self.bias is None else self.bias.reshape(-1)
        out = F.conv2d(_to_channels(x, k), weight, bias, c.stride, c.padding, c.dilation,
                       c.groups * k)
        return _from_channels(out, k)


class StackedBatchNorm(nn.Module):
    """Batch norm of each replica on its own rows; the running statistics are the stacked
    (K, C) buffers, updated in place in training mode as each replica's own module would,
    and used in evaluation mode."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, tensors: dict[str, Tensor],
                 replicas: int) -> None:
        super().__init__()
        self.bn, self.tensors, self.replicas = bn, tensors, replicas

    def forward(self, x: Tensor) -> Tensor:
        k, bn, t = self.replicas, self.bn, self.tensors
        if not self.training:  # evaluation: each replica's running statistics
            return _from_channels(F.batch_norm(
                _to_channels(x, k), t["running_mean"].view(-1), t["running_var"].view(-1),
                None if t.get("weight") is None else t["weight"].reshape(-1),
                None if t.get("bias") is None else t["bias"].reshape(-1),
                False, 0.0, bn.eps), k)
        tracked = t.get("num_batches_tracked")
        momentum = bn.momentum
        if tracked is not None:
            tracked.add_(1)
            if momentum is None:  # cumulative average, as _BatchNorm.forward
                momentum = 1.0 / float(tracked[0])
        weight, bias = t.get("weight"), t.get("bias")
        running_mean, running_var = t.get("running_mean"), t.get("running_var")
        out = F.batch_norm(
            _to_channels(x, k),
            None if running_mean is None else running_mean.view(-1),
            None if running_var is None else running_var.view(-1),
            None if weight is None else weight.reshape(-1),
            None if bias is None else bias.reshape(-1),
            True, 0.0 if momentum is None else momentum, bn.eps)
        return _from_channels(out, k)


class StackedStitch(nn.Module):
    def __init__(self, stitch: Stitch, alpha: Tensor, replicas: int) -> None:
        super().__init__()
        self.label, self.alpha, self.replicas = stitch.label, alpha, replicas  # (K, T, T)

    def forward(self, columns: list[Tensor]) -> list[Tensor]:
        stacked = torch.stack(columns)  # (T, K·B, ...)
        t, k = stacked.shape[0], self.replicas
        folded = stacked.reshape(t, k, -1)
        mixed = torch.einsum("kts,skn->tkn", self.alpha, folded)
        return list(mixed.reshape(stacked.shape).unbind(0))


_PARAMETER_FREE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU,
                   nn.Flatten, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


def fold(model: MTLModel, params: dict[str, Tensor], buffers: dict[str, Tensor],
         replicas: int) -> MTLModel | None:
    """A copy of `model` whose layers read the stacked `params`/`buffers` (by the names
    `named_parameters`/`named_buffers` give, in the layouts of `leaf_layouts`) and take
    folded (K·B, ...) activations; None
    when a layer is not one this module can stack (or is a Dropout with p > 0: each replica
    must draw its own masks)."""
    # The parameters are not copied (the memo keeps them): every layer that holds one is
    # swapped below (or fold returns None), so a copy would be thrown away.
    template = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    template.train()
    covered: set[str] = set()
    for name, module in list(template.named_modules()):
        prefix = f"{name}." if name else ""

        if isinstance(module, nn.Linear):
            swap: nn.Module = StackedLinear(params[prefix + "weight"],
                                            params.get(prefix + "bias"), replicas)
            covered |= {prefix + "weight", prefix + "bias"}
        elif isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            swap = StackedConv2d(module, params[prefix + "weight"],
                                 params.get(prefix + "bias"), replicas)
            covered |= {prefix + "weight", prefix + "bias"}
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            found = _named(prefix, ("weight", "bias"), params) | _named(
                prefix, ("running_mean", "running_var", "num_batches_tracked"), buffers)
            if not module.track_running_stats or len(module.weight.shape) != 1:
                return None
            swap = StackedBatchNorm(module, found, replicas)
            covered |= {prefix + k for k in found}
        elif isinstance(module, Stitch):
            swap = StackedStitch(module, params[prefix + "alpha"], replicas)
            covered.add(prefix + "alpha")
        elif isinstance(module, nn.Dropout):
            if module.p > 0:
                return None
            continue
        elif isinstance(module, _PARAMETER_FREE) or not any(
                True for _ in module.parameters(recurse=False)):
            continue
        else:
            return None
        if not name:
            return None  # the model itself is a bare layer: nothing to fold into
        owner_name, _, attr = name.rpartition(".")
        owner = template.get_submodule(owner_name)
        owner._modules[attr] = swap
    if not set(params) <= covered or not set(buffers) <= covered:
        return None
    return template


# What a template may hold to take unfolded (K, B, features) activations: routing containers
# and elementwise activations of the MLP blocks, and the stacked Linear (models.blocks).
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SiLU,
                nn.Identity, nn.Sequential, nn.ModuleList)


def unfoldable(template: MTLModel) -> bool:
    """Whether the folded `template` can run on (K, B, features) inputs as they are: a hard
    sharing MLP (stacked Linears and elementwise activations only; each Linear then takes its
    (K, B, in) activations without the two reshapes per layer a folded one needs, ~5 % of the
    stacked step of the default model). Marks its Linears when it can."""
    from mtl_core.models.blocks import Branch, Head, Stage
    from mtl_core.models.hard_sharing import HardSharing

    if type(template) is not HardSharing:
        return False
    modules = [m for _, m in template.named_modules()][1:]
    allowed = (StackedLinear, Stage, Branch, Head, *_ELEMENTWISE)
    if not all(type(m) in allowed or (type(m) is nn.Dropout and m.p == 0) for m in modules):
        return False
    for m in modules:
        if isinstance(m, StackedLinear):
            m.unfolded = True
    return True


def _named(prefix: str, keys: tuple[str, ...], store: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: store[prefix + k] for k in keys if prefix + k in store}


def stacked_task_loss(spec, output: Tensor, target: Tensor, replicas: int) -> Tensor:
    """Each replica's mean task loss (K,) from folded outputs and targets (or unfolded
    (K, B, ...) ones, for the kinds other than "another"), as
    `metrics.task_loss` computes it on one replica's batch."""
    if spec.kind == "classification":
        if output.dim() == 3:  # unfolded (K, B, C) logits: cross_entropy wants (N, C)
            output, target = output.reshape(-1, output.shape[-1]), target.reshape(-1)
        each = F.cross_entropy(output, target, reduction="none")
    elif spec.kind == "binary":
        each = F.binary_cross_entropy_with_logits(output, target, reduction="none")
    elif spec.kind == "regression":
        each = F.mse_loss(output, target, reduction="none")
    else:  # another kind: its own loss on each replica's rows
        from mtl_core.metrics import task_loss

        return torch.stack([task_loss(spec, o, t) for o, t in
                            zip(output.chunk(replicas), target.chunk(replicas), strict=True)])
    if each.dim() != 2 or each.shape[0] != replicas:  # folded: (K·B, ...) -> (K, B·...)
        each = each.reshape(replicas, -1)
    return each.mean(1)
