"""Building blocks: Llama-style transformer (RoPE, SDPA, SwiGLU), (Ada)RMSNorm, timestep
embeddings, frame stacking."""

from sitok.layers.embedding import TimestepEmbedding, sinusoidal_embedding
from sitok.layers.norm import AdaRMSNorm, RMSNorm
from sitok.layers.rope import RotaryEmbedding, apply_rope
from sitok.layers.stacking import lengths_to_mask, stack_frames, stacked_lengths, unstack_frames
from sitok.layers.transformer import Attention, LlamaBlock, LlamaStack, SwiGLU, cached_positions

__all__ = [
    "AdaRMSNorm",
    "Attention",
    "LlamaBlock",
    "LlamaStack",
    "cached_positions",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "TimestepEmbedding",
    "apply_rope",
    "lengths_to_mask",
    "sinusoidal_embedding",
    "stack_frames",
    "stacked_lengths",
    "unstack_frames",
]
