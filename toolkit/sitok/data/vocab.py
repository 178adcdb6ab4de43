"""The CTC vocabulary: a SentencePiece model trained on the training transcripts.

CTC blank is id 0 (SentencePiece's pad piece, named ``<blank>``, which ``encode`` never
emits); ``<unk>`` is id 1. The CTC branch of the tokenizer runs at the token rate (12.5 Hz):
a target fits its alignment only if (units + adjacent repeats) <= token frames, so
:func:`ctc_fit_report` measures that ratio over a data dir, worst case first.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os

from sitok.data.kaldi import read_table
from sitok.fileio import atomic_open

logger = logging.getLogger(__name__)

BLANK_ID = 0
UNK_ID = 1


def _drop_training_paths(path: str) -> None:
    """SentencePiece records its (temporary, per-process) input and output paths in the model's
    trainer spec; cleared, the same transcripts always give the same sp.model bytes."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as fh:
        proto.ParseFromString(fh.read())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())


def train_sentencepiece(
    texts: list[str],
    out_dir: str,
    vocab_size: int = 256,
    model_type: str = "unigram",
    num_threads: int = 1,
    seed_sentencepiece_size: int = 100000,
) -> str:
    """Train ``out_dir/sp.model`` (+ ``sp.vocab``, ``tokens.txt``) atomically; returns the model path."""
    import sentencepiece as spm

    if not texts:
        raise ValueError("train_sentencepiece: no training transcripts")
    os.makedirs(out_dir, exist_ok=True)
    tmp_prefix = os.path.join(out_dir, f"sp.tmp{os.getpid()}")
    train_txt = tmp_prefix + ".txt"
    with open(train_txt, "w", encoding="utf-8") as fh:
        fh.write("\n".join(texts) + "\n")
    try:
        spm.SentencePieceTrainer.train(
            input=train_txt,
            model_prefix=tmp_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            pad_id=BLANK_ID,
            pad_piece="<blank>",
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            hard_vocab_limit=False,
            num_threads=num_threads,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            seed_sentencepiece_size=seed_sentencepiece_size,
            minloglevel=2,
        )
        os.replace(tmp_prefix + ".vocab", os.path.join(out_dir, "sp.vocab"))
        model = os.path.join(out_dir, "sp.model")
        _drop_training_paths(tmp_prefix + ".model")
        os.replace(tmp_prefix + ".model", model)
    finally:
        for f in glob.glob(tmp_prefix + "*"):
            os.remove(f)
    sp = spm.SentencePieceProcessor(model_file=model)
    with atomic_open(os.path.join(out_dir, "tokens.txt")) as fh:
        for i in range(sp.get_piece_size()):
            fh.write(f"{sp.id_to_piece(i)} {i}\n")
    return model


def ctc_length(ids: list[int]) -> int:
    """Frames a CTC alignment needs: one per unit plus a blank between adjacent repeats."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


def ctc_fit_report(sp_model: str, data_dir: str, token_rate: float = 12.5, top: int = 10) -> dict:
    """Ratio (CTC target length / token frames) over ``data_dir`` (text + utt2dur)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=sp_model)
    text = read_table(os.path.join(data_dir, "text"))
    dur = read_table(os.path.join(data_dir, "utt2dur"))
    ratios = []
    n_units = 0
    for utt, t in text.items():
        if t.startswith("<"):
            continue
        ids = sp.encode(t)
        n_units += len(ids)
        frames = max(1, math.ceil(float(dur[utt]) * token_rate))
        ratios.append((ctc_length(ids) / frames, utt, len(ids), frames))
    ratios.sort(reverse=True)
    if not ratios:
        raise ValueError(f"{data_dir}/text: no transcripts")
    total_s = sum(float(dur[u]) for _, u, _, _ in ratios)
    values = sorted(r for r, *_ in ratios)
    return {
        "data_dir": data_dir,
        "token_rate": token_rate,
        "vocab_size": sp.get_piece_size(),
        "utterances": len(ratios),
        "units_per_second": n_units / total_s,
        "ratio_max": ratios[0][0],
        "ratio_p99": values[min(len(values) - 1, int(0.99 * len(values)))],
        "ratio_mean": sum(values) / len(values),
        "not_fitting": sum(1 for r in values if r > 1.0),
        "worst": [{"utt": u, "ratio": round(r, 3), "units": n, "frames": f} for r, u, n, f in ratios[:top]],
    }


def train_vocabulary(
    data_dir: str, out: str, vocab_size: int, model_type: str, token_rate: float, ctc_upsample: int, nj: int = 1
) -> dict:
    """The CTC vocabulary of a training data dir: ``out/sp.model`` and ``out/ctc_fit.json``, the fit
    checked at ``token_rate`` x ``ctc_upsample`` CTC frames per second. Returns the fit report."""
    texts = [t for t in read_table(os.path.join(data_dir, "text")).values() if not t.startswith("<")]
    model = train_sentencepiece(texts, out, vocab_size=vocab_size, model_type=model_type, num_threads=nj)
    rate = token_rate * ctc_upsample
    report = ctc_fit_report(model, data_dir, token_rate=rate)
    report["ctc_upsample"] = ctc_upsample
    with atomic_open(os.path.join(out, "ctc_fit.json")) as fh:
        json.dump(report, fh, indent=1)
    logger.info(
        "%s: %d pieces (%s) from %d transcripts; %.2f units/s; CTC fit at %.2f Hz (%g Hz tokens x %d): worst "
        "%.3f, p99 %.3f, mean %.3f, %d utterances do not fit",
        model,
        report["vocab_size"],
        model_type,
        len(texts),
        report["units_per_second"],
        rate,
        token_rate,
        ctc_upsample,
        report["ratio_max"],
        report["ratio_p99"],
        report["ratio_mean"],
        report["not_fitting"],
    )
    if report["not_fitting"]:
        logger.warning(
            "%d training targets are longer than their token sequence (worst: %s); use a coarser "
            "vocabulary (larger --vocab_size) or a larger --ctc-upsample; see %s/ctc_fit.json",
            report["not_fitting"],
            report["worst"][0],
            out,
        )
    return report
