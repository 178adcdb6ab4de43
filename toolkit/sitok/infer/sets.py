"""Whole-set inference for recipe stages: dump codes of a feature dir, resynthesise a set.

    dump_codes(tok, "dump/test", "exp/tok/codes/test")        # codes.ark/scp ([CN, T] int32)
    resynth_set(tok, "dump/test", "exp/tok/codes/test", "exp/tok/resynth/test", steps=16)
    vocode_set(tok, "dump/test", "exp/tok/resynth/test_gt")  # ground-truth mel -> same vocoder

Outputs are Kaldi-style data dirs (wav.scp, text, utt2spk, ...) so the judges read them like
any other set. Every file is written atomically; finished utterances are kept on a re-run when
they were made from the same model, vocoder, codes and options (recorded in ``out_dir/wav/.stamp``);
otherwise the old audio is removed and the set is made again. ``dump_codes`` keeps its work in
parts under ``out_dir/.parts`` (layout above it), resumes after a kill and shares the parts
among torchrun ranks.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import soundfile as sf
import torch

from sitok.data.audio import write_wav_atomic
from sitok.data.kaldi import DataDir, read_mat, read_scp, read_table, write_table
from sitok.data.ranks import process_rank
from sitok.fileio import atomic_open, write_text_atomic
from sitok.stamp import changes, digest, digest_dump, fresh_cache, read_stamp, write_stamp

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


# ---- dump-codes: a set's codes in parts, resumable and shared among ranks -------------------
# Layout while running (a hidden directory, so ``sitok.stamp.digest`` of out_dir never sees it):
#
#   out_dir/.parts/stamp.json          what the parts are made from (``codes_stamp`` + part size)
#   out_dir/.parts/part-00000.ark      codes of part 0, kaldiio numpy format, in encoding order
#   out_dir/.parts/part-00000.done     JSON {"utts": [[utt, start, nbytes, tokens], ...]}, written
#                                      after the part's ark is fsynced and renamed into place
#
# and when finished: out_dir/codes.ark, codes.scp, utt2num_tokens (byte for byte what
# ``write_codes`` writes for the same codes), then out_dir/.codes.stamp (``codes_stamp``: a re-run
# with the same keeps them), then .parts is removed.
PARTS_DIR = ".parts"
FINAL_STAMP = ".codes.stamp"
PART_UTTS = 2000
BATCH_FRAMES = 20000


def _header_frames(spec: str) -> int | None:
    """Rows of the float matrix at a plain ``file:offset`` entry, from its 15-byte Kaldi binary
    header (b"\\0B", b"FM " or b"DM ", then int32 rows and int32 cols); None for any other entry."""
    path, sep, offset = spec.rpartition(":")
    if not sep or not offset.isdigit() or "|" in spec or not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        fh.seek(int(offset))
        head = fh.read(15)
    if len(head) < 15 or head[:2] != b"\0B" or head[2:5] not in (b"FM ", b"DM ") or head[5] != 4:
        return None
    return int.from_bytes(head[6:10], "little", signed=True)


def frame_counts(dump_dir: str, feats: dict[str, str]) -> dict[str, int]:
    """Frames of every utterance of ``feats`` without loading the features: ``utt2num_frames`` of
    the dump when it lists them all, else each matrix's header (an entry of another kind is read
    whole, one at a time)."""
    path = os.path.join(dump_dir, "utt2num_frames")
    if os.path.isfile(path):
        table = read_table(path)
        if all(u in table for u in feats):
            return {u: int(table[u]) for u in feats}
        logger.info("%s does not list every utterance of feats.scp; reading the frame counts from the features", path)
    scp = os.path.join(dump_dir, "feats.scp")
    out = {}
    for u, spec in feats.items():
        n = _header_frames(spec)
        out[u] = n if n is not None else read_mat(spec, f"{scp}: utterance {u}").shape[0]
    return out


def plan_parts(lengths: dict[str, int], batch_frames: int, part_utts: int) -> list[list[list[str]]]:
    """The parts of a set: ``length_batches`` of all its utterances (the batches the in-memory
    encoding makes, so the codes are the same), cut into runs of whole batches of at least
    ``part_utts`` utterances (the last may be smaller). Depends only on its arguments."""
    parts, cur, n = [], [], 0
    for batch in length_batches(lengths, batch_frames):
        cur.append(batch)
        n += len(batch)
        if n >= part_utts:
            parts.append(cur)
            cur, n = [], 0
    if cur:
        parts.append(cur)
    return parts


def _part_paths(parts_dir: str, i: int) -> tuple[str, str]:
    return os.path.join(parts_dir, f"part-{i:05d}.ark"), os.path.join(parts_dir, f"part-{i:05d}.done")


def _finished_part(parts_dir: str, i: int, utts: list[str]) -> list | None:
    """The index [[utt, start, nbytes, tokens], ...] of part ``i`` when its marker lists exactly
    ``utts`` and its ark holds every byte the marker names; None when it has to be (re)made."""
    import json

    ark, done = _part_paths(parts_dir, i)
    try:
        with open(done, encoding="utf-8") as fh:
            index = json.load(fh)["utts"]
        size = os.path.getsize(ark)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if [e[0] for e in index] != utts or (index and index[-1][1] + index[-1][2] != size):
        return None
    return index


def _encode_part(tok, feats: dict, lengths: dict, batches: list, ark: str, done: str, scp: str, bar) -> None:
    """Encode one part batch by batch, appending each batch's codes to the part's ark as it is
    done (only the current batch's mels are in memory); the marker is written after the ark is
    fsynced and renamed, so a killed run leaves either a finished part or none."""
    import json

    import kaldiio

    index = []
    with atomic_open(ark, "wb") as fh:
        for batch in batches:
            mels = []
            for u in batch:
                mel = torch.from_numpy(read_mat(feats[u], f"{scp}: utterance {u}").copy())
                if mel.shape[0] != lengths[u]:
                    raise ValueError(
                        f"{os.path.dirname(scp)}/utt2num_frames: utterance {u} has {lengths[u]} frames, its features "
                        f"in feats.scp have {mel.shape[0]}: the dump is inconsistent, make it again (stage 3)"
                    )
                mels.append(mel)
            for u, c in zip(batch, tok.encode_mels(mels)):
                c = np.asarray(c).astype(np.int32)  # as write_codes stores them
                start = fh.tell()
                kaldiio.save_ark(fh, {u: c}, write_function="numpy")
                index.append([u, start, fh.tell() - start, int(c.shape[1])])
            bar.update(len(batch))
    write_text_atomic(done, json.dumps({"utts": index}) + "\n")


def _remove_temporaries(parts_dir: str, mine) -> None:
    """Temporary files a killed run left of the parts in ``mine`` (another rank's are its own)."""
    for name in os.listdir(parts_dir):
        stem, _, tmp = name.partition(".tmp")
        if tmp and stem.startswith("part-") and int(stem[5:10]) in mine:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(parts_dir, name))


def _wait(ready, what, poll_seconds: float, every: float = 60.0) -> None:
    """Poll ``ready()`` until true, logging ``what()`` (what is awaited) about every ``every`` seconds."""
    import time

    t0 = last = time.monotonic()
    while not ready():
        if time.monotonic() - last >= every:
            logger.info("still waiting (%.0f s) for %s", time.monotonic() - t0, what())
            last = time.monotonic()
        time.sleep(poll_seconds)


def _assemble(parts_dir: str, indexes: list[list], out_dir: str) -> int:
    """``out_dir/codes.{ark,scp}`` and ``utt2num_tokens`` from the parts, in sorted utterance
    order, copying each entry's bytes (one at a time) from its part's ark."""
    where = {e[0]: (i, e[1], e[2], e[3]) for i, index in enumerate(indexes) for e in index}
    handles = {}
    ark = os.path.join(out_dir, "codes.ark")
    scp, tokens = {}, {}
    try:
        with atomic_open(ark, "wb") as out:
            for u in sorted(where):
                i, start, nbytes, n = where[u]
                if i not in handles:
                    handles[i] = open(_part_paths(parts_dir, i)[0], "rb")
                handles[i].seek(start)
                scp[u] = f"{ark}:{out.tell() + len(u.encode()) + 1}"
                out.write(handles[i].read(nbytes))
                tokens[u] = n
    finally:
        for fh in handles.values():
            fh.close()
    write_table(os.path.join(out_dir, "codes.scp"), scp)
    write_table(os.path.join(out_dir, "utt2num_tokens"), tokens)
    return len(scp)


def codes_stamp(tok, dump_dir: str, batch_frames: int) -> dict:
    """What a set's codes are made from: the weights of the model and its CMVN, the compute dtype,
    the feature dump (``sitok.stamp.digest_dump``) and the batch size (which utterances share a
    padded batch)."""
    return {
        "inputs": {"model": state_digest(tok.model), "cmvn": state_digest(tok.cmvn), "feats": digest_dump(dump_dir)},
        "options": {"dtype": str(getattr(tok, "dtype", "")), "batch_frames": str(batch_frames)},
    }


def _finished_output(out_dir: str, stamp: dict) -> bool:
    names = ("codes.ark", "codes.scp", "utt2num_tokens")
    return read_stamp(os.path.join(out_dir, FINAL_STAMP)) == stamp and all(
        os.path.isfile(os.path.join(out_dir, f)) for f in names
    )


@torch.no_grad()
def dump_codes(
    tok,
    dump_dir: str,
    out_dir: str,
    batch_frames: int = BATCH_FRAMES,
    progress: bool = True,
    part_utts: int = PART_UTTS,
    poll_seconds: float = 1.0,
) -> int:
    """Encode every utterance of a feature dump dir (feats.scp) into ``out_dir/codes.{ark,scp}``
    and ``utt2num_tokens``; returns the number of utterances.

    Memory stays flat: feats.scp is read as a table of entries, the batches are planned from the
    frame counts (``frame_counts``), and only the current batch's mels are loaded. Batches of
    similar length are padded together; codes do not depend on the padding, and the batches are
    those of the in-memory ``encode_mels``, so the output is the same byte for byte.

    Work is saved in parts of about ``part_utts`` utterances (layout above), so a killed run
    resumes with the parts it finished; parts made from another model, features or batching are
    removed first (logged). A finished output with the same stamp is kept as it is.

    Under torchrun (RANK / WORLD_SIZE in the environment, or an initialised process group) rank r
    encodes parts r, r + world, r + 2 world, ...; rank 0 polls for the other ranks' part markers
    (no collective call, so a long wait cannot hit a process-group timeout), then assembles. The
    other ranks return once their parts are written.
    """
    import shutil

    from tqdm import tqdm

    rank, world, group = process_rank("dump-codes")
    scp_path = os.path.join(dump_dir, "feats.scp")
    feats = read_scp(scp_path)
    stamp = codes_stamp(tok, dump_dir, batch_frames)  # of the output; the parts' adds their size
    parts_stamp = {**stamp, "options": {**stamp["options"], "part_utts": str(part_utts)}}
    parts_dir = os.path.join(out_dir, PARTS_DIR)
    stamp_path = os.path.join(parts_dir, "stamp.json")
    if _finished_output(out_dir, stamp):
        if rank == 0:
            shutil.rmtree(parts_dir, ignore_errors=True)  # a run killed after its last step
        logger.info(
            "%s: codes of %d utterances already made from the same model and features, kept", out_dir, len(feats)
        )
        return len(feats)

    if rank == 0:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, FINAL_STAMP))  # the outputs below are replaced one by one
        diff = changes(read_stamp(stamp_path), parts_stamp)
        if diff and os.path.isdir(parts_dir):
            logger.info("%s: parts of an earlier run removed, starting over (%s)", parts_dir, "; ".join(diff))
            shutil.rmtree(parts_dir)
        if diff:
            os.makedirs(parts_dir, exist_ok=True)
            write_stamp(stamp_path, parts_stamp)
    else:  # the others write nothing until rank 0 has cleared stale parts and recorded the stamp
        _wait(lambda: read_stamp(stamp_path) == parts_stamp, lambda: f"rank 0 to prepare {stamp_path}", poll_seconds)
    if group:
        torch.distributed.barrier()

    lengths = frame_counts(dump_dir, feats)
    parts = plan_parts(lengths, batch_frames, part_utts)
    mine = [i for i in range(len(parts)) if i % world == rank]
    _remove_temporaries(parts_dir, set(mine))
    todo = [i for i in mine if _finished_part(parts_dir, i, [u for b in parts[i] for u in b]) is None]
    if len(todo) < len(mine):
        logger.info(
            "%s: %d of the %d parts of rank %d finished before, kept", parts_dir, len(mine) - len(todo), len(mine), rank
        )
    total = sum(len(b) for i in todo for b in parts[i])
    desc = f"encode {os.path.basename(os.path.normpath(dump_dir))}" + (f" (rank {rank}/{world})" if world > 1 else "")
    with tqdm(total=total, desc=desc, unit="utt", disable=not progress, mininterval=2) as bar:
        for i in todo:
            _encode_part(tok, feats, lengths, parts[i], *_part_paths(parts_dir, i), scp_path, bar)
    if rank != 0:
        logger.info("%s: rank %d wrote its %d parts; rank 0 assembles codes.scp", parts_dir, rank, len(mine))
        return len(feats)

    def missing():
        return [i for i in range(len(parts)) if not os.path.exists(_part_paths(parts_dir, i)[1])]

    _wait(
        lambda: not missing(),
        lambda: f"parts {missing()[:8]} of ranks {sorted({i % world for i in missing()})}",
        poll_seconds,
    )
    indexes = []
    for i, part in enumerate(parts):
        utts = [u for b in part for u in b]
        index = _finished_part(parts_dir, i, utts)
        if index is None:  # a marker that does not match its ark: made again here
            logger.info("%s: part %d is damaged, encoding it again", parts_dir, i)
            with tqdm(total=len(utts), desc=desc, unit="utt", disable=not progress, mininterval=2) as bar:
                _encode_part(tok, feats, lengths, part, *_part_paths(parts_dir, i), scp_path, bar)
            index = _finished_part(parts_dir, i, utts)
        indexes.append(index)
    n = _assemble(parts_dir, indexes, out_dir)
    write_stamp(os.path.join(out_dir, FINAL_STAMP), stamp)
    shutil.rmtree(parts_dir)
    logger.info("%s: %d utterances in %d parts (%d encoded by this process now)", out_dir, n, len(parts), len(todo))
    return n


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
