"""Llama-style transformer blocks: pre-RMSNorm, multi-head attention with RoPE through
``F.scaled_dot_product_attention``, SwiGLU MLP, residuals. Causal or not by flag; padding masks
honoured; optional adaptive norms (AdaRMSNorm) conditioned on a timestep embedding ``c``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sitok.layers.norm import AdaRMSNorm, RMSNorm
from sitok.layers.rope import RotaryEmbedding, apply_rope


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, causal: bool):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.causal = heads, hidden // heads, causal
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is not None:  # [B, T]: keys that are padding are never attended to; [B, T, T]: the keys each query sees
            attn_mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]  # [B, 1, 1 or T, T]
            if self.causal:
                attn_mask = attn_mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            # a padded query whose every key is masked would give NaN: let it see itself
            attn_mask = attn_mask | torch.eye(t, dtype=torch.bool, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def forward_cached(
        self, x, rope: tuple[torch.Tensor, torch.Tensor], cache: dict, chunk: bool = False
    ) -> torch.Tensor:
        """Attention of new positions x [B, t, D] over the earlier positions whose keys and values
        ``cache`` holds ({"k", "v"}: [B, H, P, hd]; extended in place) and over themselves:
        causally, or all of them (``chunk``: the new positions are one chunk of a chunk-causal
        stack); ``rope``: the tables of positions P .. P + t - 1."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        past = k.shape[2] - t
        mask = (
            None if chunk else torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        )  # keys <= past + i
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x)). With ``cond_dim`` the norms are AdaRMSNorm(c)."""

    def __init__(
        self, hidden: int, intermediate: int, heads: int, causal: bool, cond_dim: int | None = None, eps: float = 1e-6
    ):
        super().__init__()
        norm = (lambda: AdaRMSNorm(hidden, cond_dim, eps)) if cond_dim else (lambda: RMSNorm(hidden, eps))
        self.adaptive = cond_dim is not None
        self.attn_norm, self.mlp_norm = norm(), norm()
        self.attn = Attention(hidden, heads, causal)
        self.mlp = SwiGLU(hidden, intermediate)

    def _norm(self, norm, x, c):
        return norm(x, c) if self.adaptive else norm(x)

    def forward(self, x, rope, mask=None, c=None):
        x = x + self.attn(self._norm(self.attn_norm, x, c), rope, mask)
        return x + self.mlp(self._norm(self.mlp_norm, x, c))

    def forward_cached(self, x, rope, cache: dict, c=None, chunk: bool = False):
        """``forward`` of new positions after cached ones (see ``Attention.forward_cached``)."""
        x = x + self.attn.forward_cached(self._norm(self.attn_norm, x, c), rope, cache, chunk)
        return x + self.mlp(self._norm(self.mlp_norm, x, c))


def cached_positions(caches: list[dict]) -> int:
    """How many positions the per-block key/value ``caches`` of ``forward_cached`` hold."""
    return caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0


class LlamaStack(nn.Module):
    """``num_layers`` blocks + final norm. x [B, T, hidden], c [B, C]; mask [B, T] (True = valid) or
    [B, T, T] (True where query i may attend to key j)."""

    def __init__(
        self,
        num_layers: int,
        hidden: int,
        intermediate: int,
        heads: int,
        causal: bool,
        cond_dim: int | None = None,
        final_norm: bool = True,
        rope_base: float = 10000.0,
        checkpointing: bool = False,
    ):
        super().__init__()
        self.causal = causal
        self.checkpointing = checkpointing
        self.rope = RotaryEmbedding(hidden // heads, rope_base)
        self.blocks = nn.ModuleList(
            LlamaBlock(hidden, intermediate, heads, causal, cond_dim) for _ in range(num_layers)
        )
        self.norm = (AdaRMSNorm(hidden, cond_dim) if cond_dim else RMSNorm(hidden)) if final_norm else None

    def forward(self, x, mask=None, c=None):
        rope = self.rope(x.shape[1], device=x.device, dtype=x.dtype)
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, mask, c, use_reentrant=False)
            else:
                x = block(x, rope, mask, c)
        if self.norm is not None:
            x = self.norm(x, c) if c is not None and isinstance(self.norm, AdaRMSNorm) else self.norm(x)
        return x

    @torch.no_grad()
    def forward_cached(self, x, caches: list[dict], c=None, chunk: bool = False):
        """The outputs of new positions x [B, t, hidden] that follow the positions whose keys and
        values ``caches`` (one dict per block, empty at the start) hold; the caches are extended,
        so feeding a sequence in pieces gives the outputs of feeding it whole. A causal stack
        takes pieces of any size; a stack trained chunk-causally takes one chunk at a time
        (``chunk``: the piece's positions see each other and everything before, nothing after).
        ``c``: the conditioning of adaptive norms."""
        if not (self.causal or chunk):
            raise ValueError("forward_cached: a stack that looks both ways runs incrementally only chunk by chunk")
        if any(b.adaptive for b in self.blocks) != (c is not None):
            raise ValueError("forward_cached: give c exactly when the blocks have adaptive norms")
        past = cached_positions(caches)
        cos, sin = self.rope(past + x.shape[1], device=x.device, dtype=x.dtype)
        rope = (cos[past:], sin[past:])
        for block, cache in zip(self.blocks, caches):
            x = block.forward_cached(x, rope, cache, c, chunk)
        if self.norm is None:
            return x
        return self.norm(x, c) if c is not None and isinstance(self.norm, AdaRMSNorm) else self.norm(x)
