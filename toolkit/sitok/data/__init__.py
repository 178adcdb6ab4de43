"""Data: audio loading (``audio``), text normalisation (``text``), Kaldi-style data dirs
(``kaldi``), corpus preparation (``prep``, ``synth``), the mel frontend (``mel``), feature
dumps (``features``) and the CTC vocabulary (``vocab``).

Submodules are imported explicitly (``from sitok.data.mel import MelFrontend``) so that light
tools such as data-dir validation do not pay for importing torch.
"""
