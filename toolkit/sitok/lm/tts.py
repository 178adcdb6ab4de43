"""AR-TTS on the tokens: a SpeechTTS (``sitok.models.tts_lm``) trained on the train split's
(transcript, codes) pairs, then zero-shot synthesis of the test sentences judged through the
evaluation engine (the recipe body of recipes/tts/train.py).

    python recipes/tts/train.py recipes/tts/hparams/mini.yaml --model_dir exp/tokenizer_mini/model \\
        --codes_root exp/tokenizer_mini/codes --exp_dir exp/tokenizer_mini/tts

Training is the loop shared with LLM-ASR (``sitok.lm.brain``). Evaluation synthesises the sentence
of every test utterance once per prompting, by continuation of a prompt utterance (its transcript
before the target text, its codes as the start of the speech):

  * ``same``: another utterance of the same speaker from the test set;
  * ``unseen``: an utterance of a held-out speaker (``unseen_set``), the speakers taken in turn.

With ``candidates`` > 1 each sentence is the best of that many token sequences by the tokenizer's
own CTC head (``generate_ranked``). The generated codes are decoded by the tokenizer at each of
``eval_steps`` and vocoded, then judged by the engine: WER of the ASR judge against the target
sentence, SIM against the prompt's recording, DNSMOS. The tokenizer's own reconstruction of the
same test utterances (their codes, same judge) is scored beside them, and the real-time factor
is split into the LM's part and the decoder's and vocoder's.

Outputs in ``exp_dir``: ``model/`` (a SpeechTTS model directory), ``gen_<prompting>/`` (generated
codes as codes.scp/ark, ``prompts.tsv``: utterance, prompt utterance), ``eval_<prompting>/`` and
``eval_resynthesis/`` (the engine's summaries), ``examples/`` (a few generated wavs with their
prompts) and ``results.json`` (the rows of the report's TTS table).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import replace

import torch

from sitok.checks import check_fields
from sitok.data.audio import load_audio, write_wav_atomic
from sitok.data.kaldi import read_table
from sitok.eval.engine import Engine, EvalSet, Setting, example_utts
from sitok.eval.judges import build_judges, parse_judges
from sitok.fileio import atomic_open, write_text_atomic
from sitok.infer import Tokenizer
from sitok.infer.sets import write_codes
from sitok.lm.brain import SpeechLMBrain, length_batches, start_run, train, trained_model
from sitok.models.loading import load_model_config
from sitok.models.tts_lm import Sampling, SpeechTTS, SpeechTTSConfig
from sitok.probes.data import FeatureReader, durations, make_dataset, read_sets_table, train_set_names, transcribed_sets
from sitok.probes.frontend import codebook_vectors

logger = logging.getLogger(__name__)


def build_model(hparams: dict) -> SpeechTTS:
    """The SpeechTTS of the hparams, sized from the tokenizer (one codebook); with ``init_model`` a
    trained SpeechTTS model directory to go on from (its architecture and weights, this run's dropout)."""
    tok_cfg = load_model_config(hparams["model_dir"])
    if tok_cfg["num_codebooks"] != 1:
        raise ValueError(
            f"{hparams['model_dir']}: AR-TTS writes one codebook, the tokenizer has {tok_cfg['num_codebooks']}"
        )
    if hparams.get("init_model"):
        model = SpeechTTS.load(hparams["init_model"])
        if model.config.codebook_size != tok_cfg["codebook_size"]:
            raise ValueError(
                f"init_model {hparams['init_model']}: writes {model.config.codebook_size} codes, "
                f"the tokenizer {hparams['model_dir']} has {tok_cfg['codebook_size']}"
            )
        model.set_dropout(float(hparams.get("dropout", 0.0)))
        model.config.text_dropout = float(hparams.get("text_dropout", 0.0))
        check_fields("SpeechTTSConfig", model.config, floats=SpeechTTSConfig.FLOATS)
        return model.train()
    kw = {k: hparams[k] for k in ("backbone", "pretrained", "lora_rank", "lora_alpha", "lora_dropout", "dropout")}
    kw.update(
        lm_layers=hparams.get("lm_layers", 0),
        text_units=hparams.get("text_units", "chars"),
        codebook_size=tok_cfg["codebook_size"],
        speech_dim=tok_cfg["codebook_dim"] if hparams["init_from_codebook"] else hparams["speech_dim"],
        max_tokens_per_char=hparams["max_tokens_per_char"],
        min_tokens_per_char=hparams["min_tokens_per_char"],
        text_dropout=hparams.get("text_dropout", 0.0),
    )
    if hparams.get("tiny"):
        kw["tiny"] = dict(hparams["tiny"])
    model = SpeechTTS(SpeechTTSConfig.from_dict(kw))
    if hparams["init_from_codebook"]:
        quantizer = Tokenizer.from_pretrained(hparams["model_dir"], vocoder="griffin_lim").model.quantizer
        model.init_from_codebook(codebook_vectors(quantizer))
    return model


class TTSBrain(SpeechLMBrain):
    """Trains a SpeechTTS on (transcript ids, codes)."""

    def compute_forward(self, batch, stage):
        codes, rel = batch.feats  # [B, T, 1]
        lengths = torch.round(rel * codes.shape[1]).long()
        ids, id_rel = batch.target
        n = torch.round(id_rel * ids.shape[1]).long()
        texts = [ids[i, : int(n[i])].tolist() for i in range(ids.shape[0])]
        return self.modules.model(texts, [codes[i, : int(lengths[i]), 0] for i in range(codes.shape[0])])


# ---- prompts ----------------------------------------------------------------------------------
def same_speaker_prompts(utts: list[str], spk: dict) -> dict:
    """{utt: prompt utt}: the next utterance of the same speaker (sorted, cyclic); utterances whose
    speaker has no other one are left out."""
    by_spk: dict[str, list[str]] = {}
    for u in sorted(utts):
        by_spk.setdefault(spk[u], []).append(u)
    out = {}
    for group in by_spk.values():
        for i, u in enumerate(group):
            if len(group) > 1:
                out[u] = group[(i + 1) % len(group)]
    return out


PAIR = "+"  # a training pair's id: "<prompt utt>+<utt>"


def prompt_pairs(texts: dict, spk: dict, fraction: float, seed: int) -> dict:
    """{"<p>+<u>": "<text of p> <text of u>"} for a ``fraction`` of the utterances ``u`` (drawn with
    ``seed``), ``p`` another utterance of u's speaker: training examples shaped like prompted
    synthesis, where a whole prompt utterance (transcript and tokens) comes before the target's."""
    bad = [u for u in texts if PAIR in u]
    if bad:
        raise ValueError(f"utterance ids with '{PAIR}' cannot be paired: {bad[:3]}")
    rng = random.Random(seed)
    by_spk: dict[str, list[str]] = {}
    for u in sorted(texts):
        by_spk.setdefault(spk[u], []).append(u)
    out = {}
    for u in sorted(texts):
        others = [p for p in by_spk[spk[u]] if p != u]
        if others and rng.random() < fraction:
            p = rng.choice(others)
            out[f"{p}{PAIR}{u}"] = f"{texts[p]} {texts[u]}"
    return out


class PairReader:
    """Codes of an utterance, or of a pair "<p>+<u>": p's codes then u's, along time."""

    def __init__(self, reader: FeatureReader):
        self.reader = reader

    def __call__(self, utt: str) -> torch.Tensor:
        if PAIR not in utt:
            return self.reader(utt)
        p, u = utt.split(PAIR)
        return torch.cat([self.reader(p), self.reader(u)])


def other_speaker_prompts(utts: list[str], pool: list[str], pool_spk: dict) -> dict:
    """{utt: prompt utt from ``pool``}: the pool's speakers in turn, each speaker's utterances in order."""
    by_spk: dict[str, list[str]] = {}
    for u in sorted(pool):
        by_spk.setdefault(pool_spk[u], []).append(u)
    order = [g[i] for i in range(max(map(len, by_spk.values()))) for g in by_spk.values() if i < len(g)]
    return {u: order[i % len(order)] for i, u in enumerate(sorted(utts))}


# ---- synthesis --------------------------------------------------------------------------------
class CTCScorer:
    """How well token sequences carry their texts: -log P(text | codes) under the tokenizer's own
    CTC head (the head trained on the quantised latents), summed over all alignments. A sequence
    too short for its text scores +inf."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.sp = tok, tok.ctc_units()
        if self.sp is None:
            raise ValueError(f"{tok.model_dir}: no trained CTC head with its sp.model: cannot rank candidates")

    def __call__(self, codes: list[torch.Tensor], texts: list[str]) -> torch.Tensor:
        """codes: [T_i] per item; texts: the item's text -> [B] negative log-likelihoods (nats)."""
        seqs = [c.long() if len(c) else torch.zeros(1, dtype=torch.long) for c in codes]  # empty: scored inf below
        padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        log_probs, frames = self.tok.ctc_log_probs(padded[:, None], torch.tensor([len(c) for c in seqs]))
        targets = [self.sp.encode(t) for t in texts]
        nll = torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1),
            torch.tensor([i for t in targets for i in t], dtype=torch.long),
            frames,
            torch.tensor([len(t) for t in targets]),
            blank=0,
            reduction="none",
            zero_infinity=False,
        )
        empty = torch.tensor([len(c) == 0 for c in codes])
        return torch.where(empty, torch.full_like(nll, float("inf")), nll)


def generate_ranked(
    model: SpeechTTS,
    texts: list[str],
    prompts: list,
    prompt_texts: list[str],
    sampling: Sampling,
    seed: int,
    candidates: int = 1,
    candidate_temperature: float = 0.6,
    scorer: CTCScorer | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """Speech tokens per text, the best of ``candidates``: the sequence ``sampling`` gives, and
    ``candidates`` - 1 more drawn at ``candidate_temperature`` (the other settings as in
    ``sampling``), ranked by ``scorer``; ties keep the first. Returns (tokens, index of the chosen
    candidate per item: 0 = the ``sampling`` one)."""
    first = model.generate(texts, prompts, prompt_texts, sampling, seed=seed)
    if candidates <= 1:
        return first, [0] * len(texts)
    if scorer is None:
        raise ValueError("generate_ranked: more than one candidate needs a scorer")
    n, k = len(texts), candidates - 1
    drawn = replace(sampling, temperature=candidate_temperature)
    more = model.generate(texts * k, prompts * k, prompt_texts * k, drawn, seed=seed + 1)
    pool = first + more  # candidate j of item i at j * n + i
    scores = scorer(pool, texts * candidates).view(candidates, n)
    best = [int(torch.argmin(scores[:, i])) for i in range(n)]  # argmin returns the first of equal minima
    return [pool[j * n + i] for i, j in enumerate(best)], best


@torch.no_grad()
def synthesise(
    model: SpeechTTS,
    jobs: list[tuple],
    sampling: Sampling,
    batch_size: int,
    seed: int,
    progress=True,
    candidates: int = 1,
    candidate_temperature: float = 0.6,
    scorer: CTCScorer | None = None,
):
    """``jobs``: (utt, text, prompt codes [T_p] or None, prompt text) -> ({utt: codes [1, T]}, LM
    seconds, {utt: chosen candidate}). Batches of similar text length; the seed of a batch is
    ``seed`` + its index times ``candidates``. With ``candidates`` > 1 each item is the best of that
    many by ``scorer`` (``generate_ranked``); the LM seconds include the drawing and ranking."""
    from tqdm import tqdm

    jobs = sorted(jobs, key=lambda j: (len(j[1]) + len(j[3]), j[0]))
    out, chosen, seconds = {}, {}, 0.0
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    for b, batch in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not progress)):
        t0 = time.perf_counter()
        codes, best = generate_ranked(
            model,
            [j[1] for j in batch],
            [j[2] for j in batch],
            [j[3] for j in batch],
            sampling,
            seed + b * max(1, candidates),
            candidates,
            candidate_temperature,
            scorer,
        )
        seconds += time.perf_counter() - t0
        for j, c, k in zip(batch, codes, best):
            if len(c) == 0:  # nothing but the end of speech: one frame of the first code, never dropped
                c = torch.zeros(1, dtype=torch.long)
            out[j[0]], chosen[j[0]] = c[None], k
    return out, seconds, chosen


def evaluate(model: SpeechTTS, hparams: dict, progress: bool) -> dict:
    """Synthesis of the test sentences under each prompting, judged; returns the results."""
    dump, codes_root, exp = hparams["dump_dir"], hparams["codes_root"], hparams["exp_dir"]
    test, unseen = hparams["test_set"], hparams.get("unseen_set")
    texts = {u: t for u, t in read_table(os.path.join(dump, test, "text")).items() if not t.startswith("<")}
    codes = {s: FeatureReader(os.path.join(codes_root, s, "codes.scp")) for s in {test, unseen} if s}
    have = sorted(u for u in texts if u in codes[test].table)
    targets = example_utts(have, hparams["eval_utts"]) if hparams["eval_utts"] else have
    pairings = {"same": (test, same_speaker_prompts(have, read_table(os.path.join(dump, test, "utt2spk"))))}
    if unseen:
        pool = sorted(u for u in read_table(os.path.join(dump, unseen, "text")) if u in codes[unseen].table)
        pairings["unseen"] = (
            unseen,
            other_speaker_prompts(targets, pool, read_table(os.path.join(dump, unseen, "utt2spk"))),
        )
    s = dict(hparams["sampling"])
    sampling = Sampling.from_dict(s)
    judges = build_judges(parse_judges(hparams["judges"]), lm=hparams.get("judge_lm"))
    tok = Tokenizer.from_pretrained(hparams["model_dir"], vocoder=hparams["vocoder"])  # the examples' decoder
    mel_cfg = tok.mel_cfg
    rank = {
        "candidates": int(hparams.get("candidates", 1)),
        "candidate_temperature": hparams.get("candidate_temperature", 0.6),
    }
    if rank["candidates"] < 1:
        raise ValueError(f"candidates: {rank['candidates']}: at least 1")
    scorer = CTCScorer(tok) if rank["candidates"] > 1 else None
    results = {"utterances": len(targets), "sampling": s, **rank, "eval_steps": hparams["eval_steps"], "rows": []}

    def score(name: str, data: EvalSet, out_dir: str, extra: dict) -> None:
        eng = Engine(data, out_dir, judges, lm=hparams.get("judge_lm"), seed=hparams["seed"], progress=progress)
        eng.add_model(name, hparams["model_dir"])
        for voc in eng.load_vocoders([hparams["vocoder"]], name):
            for steps in hparams["eval_steps"]:
                row = eng.score(Setting("model", name, voc, steps=steps, temperature=hparams["decode_temperature"]))
                results["rows"].append({"prompting": name, **extra, **row})
        eng.write()

    for prompting, (pset, prompt_of) in pairings.items():
        pwav = read_table(os.path.join(dump, pset, "wav.scp"))
        ptext = read_table(os.path.join(dump, pset, "text"))
        jobs = [(u, texts[u], codes[pset](prompt_of[u])[:, 0], ptext[prompt_of[u]]) for u in targets if u in prompt_of]
        batch = hparams["decode_batch_size"]
        gen, lm_s, chosen = synthesise(model, jobs, sampling, batch, hparams["seed"], progress, **rank, scorer=scorer)
        drawn = sum(k > 0 for k in chosen.values())
        gen_dir = os.path.join(exp, f"gen_{prompting}")
        write_codes(gen, gen_dir)
        with atomic_open(os.path.join(gen_dir, "prompts.tsv")) as fh:
            fh.writelines(f"{u}\t{prompt_of[u]}\n" for u in sorted(gen))
        audio_s = sum(c.shape[-1] for c in gen.values()) / hparams["token_rate"]
        data = EvalSet(
            dump_dir=os.path.join(dump, test),
            utts=sorted(gen),
            texts=texts,
            mel_cfg=mel_cfg,
            sample_rate=mel_cfg.sample_rate,
            audio={u: load_audio(pwav[prompt_of[u]], mel_cfg.sample_rate).numpy() for u in gen},
            codes=gen,
            codes_dir=gen_dir,
        )
        logger.info(
            "AR-TTS, %s-speaker prompts: %d utterances, %.1f s of speech, LM RTF %.3f%s",
            prompting,
            len(gen),
            audio_s,
            lm_s / audio_s,
            f"; best of {rank['candidates']} by the CTC head: a drawn one for {drawn}" if scorer else "",
        )
        extra = {"lm_rtf": lm_s / audio_s, "skipped": len(targets) - len(gen), "drawn_chosen": drawn}
        score(prompting, data, os.path.join(exp, f"eval_{prompting}"), extra)
        write_examples(tok, data, gen, prompt_of, pwav, hparams, os.path.join(exp, "examples", prompting))
    data = EvalSet.load(os.path.join(dump, test), hparams["eval_utts"], codes_dir=os.path.join(codes_root, test))
    score("resynthesis", data, os.path.join(exp, "eval_resynthesis"), {"lm_rtf": 0.0})
    return results


def write_examples(tok, data: EvalSet, gen: dict, prompt_of: dict, pwav: dict, hparams: dict, out_dir: str) -> None:
    """A few generated utterances as wavs (decoded at the largest step count, the configured vocoder)
    beside their prompts, for listening."""
    n = hparams["examples"]
    if n <= 0:
        return
    steps = max(hparams["eval_steps"])
    lines = []
    for u in example_utts(sorted(gen), n):
        wav, sr = tok.decode(gen[u], steps=steps, seed=hparams["seed"], temperature=hparams["decode_temperature"])
        write_wav_atomic(os.path.join(out_dir, f"{u}.wav"), wav.cpu().numpy(), sr)
        write_wav_atomic(os.path.join(out_dir, f"{u}.prompt.wav"), load_audio(pwav[prompt_of[u]], sr).numpy(), sr)
        lines.append(f"{u}\t{prompt_of[u]}\t{data.texts[u]}\n")
    with atomic_open(os.path.join(out_dir, "examples.tsv")) as fh:
        fh.writelines(lines)


def run(argv: list[str]) -> None:
    """The body of recipes/tts/train.py: hparams + overrides -> trained model -> judged synthesis."""
    hparams, run_opts, t0 = start_run(argv)
    model = build_model(hparams)
    tok_cfg = load_model_config(hparams["model_dir"])
    hparams["token_rate"] = tok_cfg["mel_rate"] / tok_cfg["stack"]
    sets, counts = transcribed_sets(hparams)
    train_sets = train_set_names(hparams)
    dur = durations(hparams["dump_dir"], train_sets)
    fraction = float(hparams.get("prompt_pairs", 0.0))
    if fraction > 0:  # prompted-synthesis-shaped examples beside the single utterances
        items, reader = sets["train"]
        spk = read_sets_table(hparams["dump_dir"], train_sets, "utt2spk")
        pairs = prompt_pairs(items, spk, fraction, hparams["seed"])
        dur.update({k: sum(dur[x] for x in k.split(PAIR)) for k in pairs})
        sets["train"] = ({**items, **pairs}, PairReader(reader))
        counts["train_pairs"] = len(pairs)
        logger.info("AR-TTS: %d same-speaker pairs (prompt, target) added to the training set", len(pairs))
    encode = lambda t: torch.tensor(model.text.encode(t), dtype=torch.long)  # noqa: E731
    data = {s: (items, make_dataset(items, reader, encode)) for s, (items, reader) in sets.items()}
    logger.info(
        "AR-TTS: %s backbone (%s), %.1f M parameters, %.2f M trained; %d train (%s) / %d valid utterances",
        hparams["backbone"],
        "pretrained" if hparams["pretrained"] else "random init",
        sum(p.numel() for p in model.parameters()) / 1e6,
        sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        len(data["train"][0]),
        " + ".join(train_sets),
        len(data["valid"][0]),
    )
    sampler = length_batches(hparams, data["train"][0], hparams["token_rate"], shuffle=True, dur=dur)
    brain = train(TTSBrain, model, hparams, run_opts, t0, data["train"][1], data["valid"][1], sampler)
    train_minutes = (time.time() - t0) / 60
    model = trained_model(brain, os.path.join(hparams["exp_dir"], "model"))
    if model is None:  # not the main process
        return
    model.eval()
    t_eval = time.time()
    results = {
        "task": "tts",
        "backbone": hparams["backbone"],
        "pretrained": hparams["pretrained"],
        "lm_layers": model.lm.config.num_hidden_layers,
        "lora_rank": hparams["lora_rank"],
        "counts": counts,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": hparams["epoch_counter"].current,
        "steps": brain.optimizer_step,
        "train_minutes": round(train_minutes, 2),
        **evaluate(model, hparams, progress=not run_opts.get("noprogressbar")),
    }
    results["eval_minutes"] = round((time.time() - t_eval) / 60, 2)
    results["wall_seconds"] = round(time.time() - t0, 1)
    write_text_atomic(os.path.join(hparams["exp_dir"], "results.json"), json.dumps(results, indent=1) + "\n")
    for r in results["rows"]:
        logger.info(
            "AR-TTS %s, %d steps: WER %.2f %%, SIM %.3f, DNSMOS %.2f, RTF LM %.3f + decoder %.3f",
            r["prompting"],
            r["steps"],
            r.get("wer") or float("nan"),
            r.get("sim") or float("nan"),
            r.get("dnsmos_ovrl") or float("nan"),
            r["lm_rtf"],
            r["decoder_rtf"] or 0.0,
        )


if __name__ == "__main__":
    run(sys.argv[1:])
