"""Models: the SiTok tokenizer (diffusion or regression decoder)."""

from sitok.models.sitok import SiTok, SiTokConfig, count_parameters

__all__ = ["SiTok", "SiTokConfig", "count_parameters"]
