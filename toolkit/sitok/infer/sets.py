"""Whole-set inference for recipe stages: dump codes of a feature dir, resynthesise a set.

    dump_codes(tok, "dump/test", "exp/tok/codes/test")        # codes.ark/scp ([CN, T] int32)
    resynth_set(tok, "dump/test", "exp/tok/codes/test", "exp/tok/resynth/test", steps=16)
    vocode_set(tok, "dump/test", "exp/tok/resynth/test_gt")  # ground-truth mel -> same vocoder

Outputs are Kaldi-style data dirs (wav.scp, text, utt2spk, ...) so the judges read them like
any other set. Every file is written atomically; finished utterances are kept on a re-run when
they were made from the same model, vocoder, codes and options (recorded in ``out_dir/wav/.stamp``);
otherwise the old audio is removed and the set is made again.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import soundfile as sf
import torch

from sitok.data.audio import write_wav_atomic
from sitok.data.kaldi import DataDir, read_mat, read_scp, read_table, write_table
from sitok.fileio import atomic_open
from sitok.stamp import digest, digest_dump, fresh_cache

logger = logging.getLogger(__name__)


def _progress(items, desc, enable):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="utt", disable=not enable, mininterval=2)


def length_batches(lengths: dict[str, int], max_frames: int = 20000) -> list[list[str]]:
    """Utterance ids grouped by similar length, each batch at most ``max_frames`` padded frames."""
    batches, cur, cur_max = [], [], 0
    for u in sorted(lengths, key=lambda k: (lengths[k], k)):
        if cur and max(cur_max, lengths[u]) * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(u)
        cur_max = max(cur_max, lengths[u])
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def encode_mels(tok, mels: dict, batch_frames: int = 20000, progress: bool = False, desc: str = "encode"):
    """Codes [CN, T] (CPU) of every un-normalised log-mel [T50, 128] in ``mels``, encoded in
    length-sorted padded batches (codes do not depend on the padding); also the encoder seconds."""
    import time

    codes, seconds = {}, 0.0
    for batch in _progress(length_batches({u: m.shape[0] for u, m in mels.items()}, batch_frames), desc, progress):
        t0 = time.perf_counter()
        codes.update(zip(batch, tok.encode_mels([mels[u] for u in batch])))
        seconds += time.perf_counter() - t0
    return codes, seconds


@torch.no_grad()
def dump_codes(tok, dump_dir: str, out_dir: str, batch_frames: int = 20000, progress: bool = True) -> int:
    """Encode every utterance of a feature dump dir (feats.scp) into ``out_dir/codes.{ark,scp}``.

    Batches of similar length are padded together; codes do not depend on the padding.
    """
    feats = read_scp(os.path.join(dump_dir, "feats.scp"))
    mels = {u: torch.from_numpy(read_mat(p).copy()) for u, p in feats.items()}
    codes, _ = encode_mels(tok, mels, batch_frames, progress, f"encode {os.path.basename(dump_dir)}")
    return write_codes(codes, out_dir)


def write_codes(codes: dict, out_dir: str) -> int:
    """``out_dir/codes.{ark,scp}`` and ``utt2num_tokens`` of {utt: codes [CN, T]} (int32, sorted)."""
    import kaldiio

    ark = os.path.join(out_dir, "codes.ark")  # atomic_open makes out_dir
    codes_all = {u: np.asarray(c).astype(np.int32) for u, c in codes.items()}
    scp = {}
    with atomic_open(ark, "wb") as fh:
        for u in sorted(codes_all):  # kaldiio's numpy format keeps the int32 dtype
            scp[u] = f"{ark}:{fh.tell() + len(u.encode()) + 1}"
            kaldiio.save_ark(fh, {u: codes_all[u]}, write_function="numpy")
    write_table(os.path.join(out_dir, "codes.scp"), scp)
    write_table(os.path.join(out_dir, "utt2num_tokens"), {u: c.shape[1] for u, c in codes_all.items()})
    return len(codes_all)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, shapes, dtypes and values)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_stamp(tok, inputs: dict[str, str], options: dict) -> dict:
    """The stamp of a set made by ``tok``: its weights, its vocoder, the digests of its inputs
    (``sitok.stamp.digest`` / ``digest_dump``) and its options."""
    vocoder = getattr(tok.vocoder, "name", type(tok.vocoder).__name__)
    return {
        "inputs": {
            "model": state_digest(tok.model),
            "cmvn": state_digest(tok.cmvn),
            "vocoder": f"{vocoder}:{state_digest(tok.vocoder)}",
            **dict(sorted(inputs.items())),
        },
        "options": {k: str(v) for k, v in sorted(options.items())},
    }


def _write_set(utts, dump_dir: str, out_dir: str, render, desc: str, progress: bool, stamp: dict) -> int:
    """``render(utt)`` -> (wav, rate) of every utterance not kept from before; then the data dir: wav.scp,
    utt2dur and the dump's text, utt2spk, utt2label."""
    wav_dir = os.path.join(out_dir, "wav")
    fresh_cache(wav_dir, stamp, out_dir)  # audio made from another model, vocoder, input or option goes
    wav_scp, done = {}, 0
    for u in _progress(utts, desc, progress):
        path = os.path.abspath(os.path.join(wav_dir, f"{u}.wav"))
        if not os.path.exists(path):
            wav, sr = render(u)
            write_wav_atomic(path, wav, sr)
            done += 1
        wav_scp[u] = path
    logger.info(
        "%s: %d utterances (%d synthesised now, %d kept from before)", out_dir, len(wav_scp), done, len(wav_scp) - done
    )
    dd = DataDir.load(dump_dir).subset(wav_scp)
    tables = {k: v for k, v in dd.tables.items() if k in ("text", "utt2spk", "utt2label")}
    tables["wav.scp"] = wav_scp
    tables["utt2dur"] = {u: f"{sf.info(p).duration:.4f}" for u, p in wav_scp.items()}
    DataDir(tables).save(out_dir)
    return len(wav_scp)


@torch.no_grad()
def resynth_set(
    tok,
    dump_dir: str,
    codes_dir: str,
    out_dir: str,
    steps: int = 16,
    seed: int = 0,
    progress: bool = True,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
) -> int:
    """Decode ``codes_dir/codes.scp`` to wavs, cut to each utterance's original frame count."""
    codes = read_scp(os.path.join(codes_dir, "codes.scp"))
    frames = {u: int(n) for u, n in read_table(os.path.join(dump_dir, "utt2num_frames")).items()}
    hop = tok.mel_cfg.hop_length

    def render(u):
        c = torch.from_numpy(read_mat(codes[u]).astype(np.int64))
        wav, sr = tok.decode(c, steps=steps, seed=seed, cfg_scale=cfg_scale, temperature=temperature)
        return wav[: frames[u] * hop], sr

    inputs = {"codes": digest(codes_dir), "frames": digest(os.path.join(dump_dir, "utt2num_frames"))}
    options = {"steps": steps, "seed": seed, "cfg_scale": cfg_scale, "temperature": temperature}
    stamp = tokenizer_stamp(tok, inputs, options)
    return _write_set(sorted(codes), dump_dir, out_dir, render, f"resynth {steps} steps", progress, stamp)


@torch.no_grad()
def vocode_set(tok, dump_dir: str, out_dir: str, progress: bool = True) -> int:
    """Ground-truth log-mel -> the tokenizer's vocoder: the reference row of every table."""
    feats = read_scp(os.path.join(dump_dir, "feats.scp"))

    def render(u):
        mel = torch.from_numpy(read_mat(feats[u]).copy()).to(tok.device)
        return tok.vocoder(mel).cpu(), tok.sample_rate

    stamp = tokenizer_stamp(tok, {"feats": digest_dump(dump_dir)}, {})
    return _write_set(sorted(feats), dump_dir, out_dir, render, "vocode ground truth", progress, stamp)
