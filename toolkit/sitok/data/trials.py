"""Speaker-verification trial lists: ``<1|0> <enrol utt> <test utt>`` per line (the VoxCeleb
``veri_test2.txt`` layout, with utterance ids); Kaldi's ``<utt> <utt> target|nontarget`` is read too."""

from __future__ import annotations

import random
from collections import defaultdict

from sitok.fileio import atomic_open


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
        pos.add(tuple(sorted(rng.sample(spk2utt[rng.choice(speakers)], 2))))
    while len(neg) < half:
        s1, s2 = rng.sample(speakers, 2)
        neg.add(tuple(sorted((rng.choice(spk2utt[s1]), rng.choice(spk2utt[s2])))))
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
