"""LoRA layers whose update is one ``addmm``: ``base(x) + s * (x Aᵀ) Bᵀ`` without a separate scale and add.

peft computes a vanilla LoRA Linear as ``result + lora_B(lora_A(dropout(x))) * scaling``: besides the two thin
matmuls, it scales a (tokens x out) tensor and adds it to the base output, and the backward pass scales the
(tokens x out) gradient again. Those elementwise passes over the widest tensors of the layer cost about as much
as the thin matmuls themselves on a CPU. ``torch.addmm(result, x Aᵀ, Bᵀ, alpha=s)`` computes the same sum in the
matmul's epilogue, and its backward scales only the thin (tokens x r) and (r x out) gradients.

:func:`fuse_lora_layers` gives peft's LoRA ``Linear`` layers of a model this forward. A layer takes the fused
path only in the vanilla case (one active adapter, no dropout, no DoRA or other variant, no LoRA bias, unmerged,
one dtype, parameters not partitioned by DeepSpeed ZeRO-3); anything else runs peft's own forward. Outputs and
gradients equal peft's to float rounding (tests/model/test_fused_lora.py).
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class FusedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` with the vanilla single-adapter update fused into one ``addmm``."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = None if args or kwargs else self._fusable(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        low = self.lora_A[adapter](x)  # called as a module: its hooks (FSDP, offloading) run as in peft's path
        fused = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]),
                            self.lora_B[adapter].weight.t(), alpha=self.scaling[adapter])
        return fused.view(result.shape)

    def _fusable(self, x: torch.Tensor) -> str | None:
        """The one active adapter when the update is vanilla LoRA, else None."""
        if self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or not isinstance(self.lora_dropout[name], nn.Identity):
            return None
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        weights = (self.base_layer.weight, lora_a.weight, lora_b.weight)
        if lora_b.bias is not None or any(hasattr(w, "ds_id") for w in weights):  # ZeRO-3 gathers per module call
            return None
        return name if all(w.dtype == x.dtype for w in weights) else None


def fuse_lora_layers(model: nn.Module) -> int:
    """Give every peft LoRA ``Linear`` of ``model`` (exactly that class) the fused forward -> how many."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
