"""Probe data: features read from disk once extracted, labels from the data dir.

Features are never recomputed by a probe: tokens come from the codes a recipe stage dumped
(``<exp>/codes/<set>/codes.scp``: int32 [CN, T] per utterance, see ``sitok.infer.sets.dump_codes``),
continuous features from the feature dump (``dump/<set>/feats.scp``: log-mel [T, 128] at 50 Hz),
normalised with the training set's global CMVN. Labels: ``utt2label`` (ER, KS), ``utt2spk`` (SV),
``text`` (ASR), all from the same dump dir.
"""

from __future__ import annotations

import logging
import os

import torch

from sitok.data.kaldi import read_mat, read_scp, read_table
from sitok.data.mel import GlobalCMVN

logger = logging.getLogger(__name__)


class FeatureReader:
    """utt -> feature tensor: codes [T, CN] (long) or normalised mel [T, n_mels] (float). Several
    lists (one per set) read as one; an utterance in two of them is an error."""

    def __init__(self, scp: str | list[str], cmvn: str | None = None):
        scps = [scp] if isinstance(scp, str) else list(scp)
        self.table, self.where = {}, {}
        for path in scps:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no feature list (run the stage that extracts the features first)")
            for utt, entry in read_scp(path).items():
                if utt in self.table:
                    raise ValueError(f"{path}: utterance {utt} is also in {self.where[utt]}")
                self.table[utt], self.where[utt] = entry, path
        self.scp = scps[0] if len(scps) == 1 else " + ".join(scps)
        self.cmvn = GlobalCMVN.load(cmvn) if cmvn is not None else None

    def __call__(self, utt: str) -> torch.Tensor:
        try:
            entry = self.table[utt]
        except KeyError:
            raise KeyError(f"{self.scp}: no entry for utterance {utt}") from None
        x = torch.from_numpy(read_mat(entry, f"{self.where[utt]}: utterance {utt}").copy())
        if self.cmvn is None:  # codes [CN, T] -> [T, CN]
            return x.long().T.contiguous()
        with torch.no_grad():
            return self.cmvn(x.float())


def feature_paths(
    features: str, set_name: str, dump_dir: str, codes_root: str | None, cmvn: str
) -> tuple[str, str | None]:
    """(scp, cmvn or None) of one set for ``features`` in {"tokens", "mel12.5", "mel50"}."""
    if features == "tokens":
        if not codes_root:
            raise ValueError("token features need codes_root (<tokenizer exp>/codes)")
        return os.path.join(codes_root, set_name, "codes.scp"), None
    return os.path.join(dump_dir, set_name, "feats.scp"), cmvn


def load_set(dump_dir: str, set_name: str, label_file: str | None, scp: str) -> tuple[dict, dict]:
    """{utt: label} (or text) of a set restricted to utterances that have features, and counts.

    Every utterance without features or without a label is counted (and logged), never silently
    dropped."""
    set_dir = os.path.join(dump_dir, set_name)
    feats = read_table(scp)
    labels = read_table(os.path.join(set_dir, label_file)) if label_file else {u: "" for u in feats}
    kept = {u: labels[u] for u in labels if u in feats}
    no_features, no_label = sum(u not in feats for u in labels), sum(u not in labels for u in feats)
    counts = {"utterances": len(labels), "kept": len(kept), "no_features": no_features, "no_label": no_label}
    if no_features or no_label:
        msg = "%s: %d utterances without features in %s, %d with features but no %s (left out)"
        logger.warning(msg, set_dir, no_features, scp, no_label, label_file)
    if not kept:
        raise ValueError(f"{set_dir}: no utterance has both a {label_file} entry and features in {scp}")
    return kept, counts


def make_dataset(items: dict, reader: FeatureReader, encode=None):
    """A speechbrain DynamicItemDataset of (id, feats, target) from {utt: label}. ``encode`` maps a
    label to its target (class index or unit ids)."""
    import speechbrain as sb

    data = {u: {"label": lab} for u, lab in items.items()}
    ds = sb.dataio.dataset.DynamicItemDataset(data)
    ds.add_dynamic_item(reader, takes="id", provides="feats")
    ds.add_dynamic_item(encode if encode is not None else (lambda label: label), takes="label", provides="target")
    ds.set_output_keys(["id", "feats", "target", "label"])
    return ds


def train_set_names(hparams: dict) -> list[str]:
    """The sets that make the training set: ``train_set`` and any ``extra_train_sets``."""
    return [hparams["train_set"], *(hparams.get("extra_train_sets") or [])]


def probe_sets(hparams: dict, label_file: str | None) -> tuple[dict, dict]:
    """{split: (items, reader)} for the train / valid / test sets named in ``hparams`` (features,
    dump_dir, codes_root, cmvn, <split>_set; ``extra_train_sets`` join the training set), with each
    set's counts (summed over the sets of a split)."""
    sets, counts = {}, {}
    for split in ("train", "valid", "test"):
        names = train_set_names(hparams) if split == "train" else [hparams[f"{split}_set"]]
        items, scps, counts[split] = {}, [], {}
        for name in names:
            scp, cmvn = feature_paths(
                hparams["features"], name, hparams["dump_dir"], hparams.get("codes_root"), hparams["cmvn"]
            )
            kept, n = load_set(hparams["dump_dir"], name, label_file, scp)
            items.update(kept)  # an utterance in two sets: refused by the reader below
            scps.append(scp)
            for k, v in n.items():
                counts[split][k] = counts[split].get(k, 0) + v
        sets[split] = (items, FeatureReader(scps, cmvn))
    return sets, counts


def transcribed_sets(hparams: dict) -> tuple[dict, dict]:
    """``probe_sets`` with transcripts, utterances whose text is a non-speech marker (<silence>,
    <no_transcript>) left out, counted and logged; a set left empty is an error."""
    sets, counts = probe_sets(hparams, "text")
    for split, (items, reader) in list(sets.items()):
        name = "+".join(train_set_names(hparams)) if split == "train" else hparams[f"{split}_set"]
        kept = {u: t for u, t in items.items() if not t.startswith("<")}
        if len(kept) < len(items):
            n = len(items) - len(kept)
            logger.warning("%s: %d utterances with a non-speech marker instead of a transcript: left out", name, n)
            counts[split]["no_transcript"] = n
            if not kept:
                raise ValueError(f"{name}: no transcribed utterance")
            sets[split] = (kept, reader)
    return sets, counts


def read_sets_table(dump_dir: str, set_name: str | list[str], filename: str) -> dict:
    """{utt: value} of ``<dump_dir>/<set>/<filename>`` for one set or every set of a list."""
    names = [set_name] if isinstance(set_name, str) else set_name
    return {u: v for name in names for u, v in read_table(os.path.join(dump_dir, name, filename)).items()}


def durations(dump_dir: str, set_name: str | list[str]) -> dict:
    """{utt: seconds} of ``<dump_dir>/<set_name>/utt2dur`` (of every set of a list)."""
    return {u: float(d) for u, d in read_sets_table(dump_dir, set_name, "utt2dur").items()}
