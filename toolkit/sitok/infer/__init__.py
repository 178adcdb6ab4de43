"""Inference: the ``Tokenizer`` API (encode/decode), ODE samplers, vocoders."""

from sitok.infer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
