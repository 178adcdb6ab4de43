"""Probe data: features read from disk once extracted, labels from the data dir, SV trial lists.

Features are never recomputed by a probe: tokens come from the codes a recipe stage dumped
(``<exp>/codes/<set>/codes.scp``: int32 [CN, T] per utterance, see ``sitok.infer.sets.dump_codes``),
continuous features from the feature dump (``dump/<set>/feats.scp``: log-mel [T, 128] at 50 Hz),
normalised with the training set's global CMVN. Labels: ``utt2label`` (ER, KS), ``utt2spk`` (SV),
``text`` (ASR), all from the same dump dir.
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict

import torch

from sitok.data.kaldi import read_mat, read_scp, read_table
from sitok.fileio import atomic_open

logger = logging.getLogger(__name__)


class FeatureReader:
    """utt -> feature tensor: codes [T, CN] (long) or normalised mel [T, n_mels] (float)."""

    def __init__(self, scp: str, cmvn: str | None = None):
        if not os.path.exists(scp):
            raise FileNotFoundError(f"{scp}: no feature list (run the stage that extracts the features first)")
        self.scp = scp
        self.table = read_scp(scp)
        self.cmvn = None
        if cmvn is not None:
            from sitok.data.mel import GlobalCMVN

            self.cmvn = GlobalCMVN.load(cmvn)

    def __call__(self, utt: str) -> torch.Tensor:
        try:
            x = torch.from_numpy(read_mat(self.table[utt], f"{self.scp}: utterance {utt}").copy())
        except KeyError:
            raise KeyError(f"{self.scp}: no entry for utterance {utt}") from None
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
    counts = {
        "utterances": len(labels),
        "kept": len(kept),
        "no_features": sum(u not in feats for u in labels),
        "no_label": sum(u not in labels for u in feats),
    }
    if counts["no_features"] or counts["no_label"]:
        logger.warning(
            "%s: %d utterances without features in %s, %d with features but no %s (left out)",
            set_dir,
            counts["no_features"],
            scp,
            counts["no_label"],
            label_file,
        )
    if not kept:
        raise ValueError(f"{set_dir}: no utterance has both a {label_file} entry and features in {scp}")
    return kept, counts


def make_dataset(items: dict, reader: FeatureReader, encode=None, length_file: str | None = None):
    """A speechbrain DynamicItemDataset of (id, feats, target) from {utt: label}. ``encode`` maps a
    label to its target (class index or unit ids)."""
    import speechbrain as sb

    data = {u: {"label": lab} for u, lab in items.items()}
    ds = sb.dataio.dataset.DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("feats")
    def feats_pipeline(utt):
        return reader(utt)

    @sb.utils.data_pipeline.takes("label")
    @sb.utils.data_pipeline.provides("target")
    def target_pipeline(label):
        return encode(label) if encode is not None else label

    ds.add_dynamic_item(feats_pipeline)
    ds.add_dynamic_item(target_pipeline)
    ds.set_output_keys(["id", "feats", "target", "label"])
    return ds


# ---------------------------------------------------------------------------------------
# speaker-verification trials
# ---------------------------------------------------------------------------------------
def make_trials(utt2spk: dict, n_trials: int = 2000, seed: int = 0, exclude_speakers=()) -> list[tuple[int, str, str]]:
    """A balanced trial list (label 1 = same speaker) over the speakers of ``utt2spk``.

    Half the trials pair two different utterances of one speaker, half pair utterances of two
    speakers; pairs are unique and unordered, drawn with a fixed seed (same list every run).
    Raises if a speaker of ``exclude_speakers`` (the probe's training speakers) is among them:
    enrolment and test speakers must be held out from training."""
    spk2utt = defaultdict(list)
    for u, s in sorted(utt2spk.items()):
        spk2utt[s].append(u)
    overlap = sorted(set(spk2utt) & set(exclude_speakers))
    if overlap:
        raise ValueError(f"trial speakers overlap the training speakers: {overlap[:5]}")
    speakers = sorted(s for s in spk2utt if len(spk2utt[s]) >= 2)
    if len(speakers) < 2:
        raise ValueError(f"need >= 2 held-out speakers with >= 2 utterances each, got {len(speakers)}")
    n_pos_possible = sum(len(spk2utt[s]) * (len(spk2utt[s]) - 1) // 2 for s in speakers)
    half = min(n_trials // 2, n_pos_possible)
    rng = random.Random(seed)
    pos, neg = set(), set()
    while len(pos) < half:
        s = rng.choice(speakers)
        a, b = sorted(rng.sample(spk2utt[s], 2))
        pos.add((a, b))
    while len(neg) < half:
        s1, s2 = rng.sample(speakers, 2)
        a, b = sorted((rng.choice(spk2utt[s1]), rng.choice(spk2utt[s2])))
        neg.add((a, b))
    trials = [(1, a, b) for a, b in sorted(pos)] + [(0, a, b) for a, b in sorted(neg)]
    rng.shuffle(trials)
    return trials


def write_trials(path: str, trials: list[tuple[int, str, str]]) -> None:
    """``<label> <enrol utt> <test utt>`` per line (the VoxCeleb ``veri_test2.txt`` layout, utt ids)."""
    with atomic_open(path) as fh:
        for lab, a, b in trials:
            fh.write(f"{lab} {a} {b}\n")


def read_trials(path: str) -> list[tuple[int, str, str]]:
    """Trials as (label, enrol, test): ``<1|0> <utt> <utt>`` (VoxCeleb layout) or Kaldi's
    ``<utt> <utt> target|nontarget``."""
    trials = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 3 and parts[0] in ("0", "1"):
                trials.append((int(parts[0]), parts[1], parts[2]))
            elif len(parts) == 3 and parts[2] in ("target", "nontarget"):
                trials.append((int(parts[2] == "target"), parts[0], parts[1]))
            else:
                raise ValueError(
                    f"{path}:{n}: expected '<0|1> <utt> <utt>' or '<utt> <utt> target|nontarget', got {line.strip()!r}"
                )
    if not trials:
        raise ValueError(f"{path}: empty trial list")
    return trials
