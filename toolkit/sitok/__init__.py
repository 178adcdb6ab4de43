"""SiTok: a recipe toolkit for the Speech Diffusion Tokenizer.

Flow of data through the package (lower layers never import higher ones):
``data`` (wav -> mel) -> ``models`` (mel -> codes -> mel) -> ``infer`` (public API)
-> ``eval`` / ``report``.
"""

__version__ = "0.1.0"


def __getattr__(name):  # ``from sitok import Tokenizer`` without importing torch for the CLI
    if name == "Tokenizer":
        from sitok.infer import Tokenizer

        return Tokenizer
    raise AttributeError(name)
