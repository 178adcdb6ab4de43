"""Data: audio loading (``audio``), text normalisation (``text``), Kaldi-style data dirs
(``kaldi``), corpus preparation (``prep``, ``synth``), long-audio segmentation (``segment``), the
mel frontend (``mel``), feature dumps (``features``), WebDataset audio shards streamed with the mel
computed on the fly (``shards``) and the CTC vocabulary (``vocab``).

Submodules are imported explicitly (``from sitok.data.mel import MelFrontend``) so that light
tools such as data-dir validation do not pay for importing torch.
"""
