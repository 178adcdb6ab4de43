"""The AR-TTS recipe (recipes/tts/train.py) on a tiny dump with the tiny backbone: it trains on the
codes, synthesises the test sentences with same-speaker and held-out-speaker prompts, judges them
through the evaluation engine beside the tokenizer's own reconstruction, and writes a model
directory that `sitok tts` reads."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sitok.data.features import compute_features
from sitok.data.kaldi import read_table
from sitok.data.prep import Entry, make_data_dir
from sitok.data.synth import make_sentence
from sitok.data.vocab import train_sentencepiece
from sitok.infer import Tokenizer
from sitok.infer.sets import dump_codes
from sitok.lm.tts import (
    CTCScorer,
    PairReader,
    generate_ranked,
    other_speaker_prompts,
    prompt_pairs,
    same_speaker_prompts,
)
from sitok.models.tts_lm import Sampling, SpeechTTS, SpeechTTSConfig
from sitok.probes.data import FeatureReader

from conftest import ROOT, run_one_thread, tone, write, write_model_dir

TRAIN = os.path.join(ROOT, "recipes", "tts", "train.py")
HPARAMS = os.path.join(ROOT, "recipes", "tts", "hparams", "mini.yaml")
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)


def test_prompts_pair_same_speakers_and_take_other_speakers_in_turn():
    spk = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "c1": "c"}
    same = same_speaker_prompts(list(spk), spk)
    assert same == {"a1": "a2", "a2": "a3", "a3": "a1"}  # b and c have no other utterance: left out
    assert all(spk[p] == spk[u] and p != u for u, p in same.items())
    pool_spk = {"x1": "x", "x2": "x", "y1": "y"}
    other = other_speaker_prompts(["a1", "a2", "a3", "b1"], list(pool_spk), pool_spk)
    assert other == {"a1": "x1", "a2": "y1", "a3": "x2", "b1": "x1"}


def test_prompt_pairs_put_a_same_speaker_utterance_before_the_target():
    texts = {f"{s}{i}": f"text {s}{i}" for s in "ab" for i in range(20)} | {"c0": "text c0"}
    spk = {u: u[0] for u in texts}
    pairs = prompt_pairs(texts, spk, 0.5, seed=1)
    assert pairs == prompt_pairs(texts, spk, 0.5, seed=1)  # deterministic
    assert 10 <= len(pairs) <= 30 and not any(k.endswith("+c0") for k in pairs)  # c has no other utterance
    for key, text in pairs.items():
        p, u = key.split("+")
        assert spk[p] == spk[u] and p != u and text == f"{texts[p]} {texts[u]}"
    assert prompt_pairs(texts, spk, 0.0, seed=1) == {} and len(prompt_pairs(texts, spk, 1.0, seed=1)) == 40
    with pytest.raises(ValueError, match="cannot be paired"):
        prompt_pairs({"x+y": "t"}, {"x+y": "x"}, 0.5, seed=1)
    codes = {"a0": torch.tensor([[1], [2]]), "a1": torch.tensor([[3], [4], [5]])}
    reader = PairReader(codes.__getitem__)
    assert reader("a0+a1").squeeze(1).tolist() == [1, 2, 3, 4, 5] and reader("a1").squeeze(1).tolist() == [3, 4, 5]


def tokenizer_with_vocabulary(path, texts, ctc_weight=0.1):
    """A tiny untrained tokenizer directory whose CTC head writes the units of an sp.model trained on ``texts``."""
    import sentencepiece as spm

    sp = train_sentencepiece(texts * 3, str(path / "lang"), vocab_size=30)
    write_model_dir(
        path / "model", vocab_size=spm.SentencePieceProcessor(model_file=sp).get_piece_size(), ctc_weight=ctc_weight
    )
    os.replace(sp, path / "model" / "sp.model")
    return str(path / "model")


TEXTS = ["the red fox", "a cat sat", "go home now"]


def test_ctc_scorer_is_the_ctc_loss_of_each_sequence_alone(tmp_path):
    tok = Tokenizer.from_pretrained(tokenizer_with_vocabulary(tmp_path, TEXTS), vocoder="griffin_lim")
    scorer = CTCScorer(tok)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 64, (n,), generator=g) for n in (24, 16, 30)]  # frames enough for the texts
    got = scorer(seqs, TEXTS)  # one padded batch
    for c, text, value in zip(seqs, TEXTS, got):
        log_probs, frames = tok.ctc_log_probs(c[None])
        ids = torch.tensor(scorer.sp.encode(text))
        want = F.ctc_loss(log_probs[0, : frames[0]], ids, frames, torch.tensor([len(ids)]), reduction="sum")
        assert torch.isfinite(value) and torch.allclose(value, want, rtol=1e-4)
    short = scorer([torch.tensor([3]), torch.tensor([], dtype=torch.long)], ["go home now", "a"])
    assert short.isinf().all()  # too few frames for the text; nothing generated
    no_ctc = Tokenizer.from_pretrained(write_model_dir(tmp_path / "noctc", ctc_weight=0.0), vocoder="griffin_lim")
    with pytest.raises(ValueError, match="no trained CTC head"):
        CTCScorer(no_ctc)


def test_the_best_candidate_by_the_scorer_is_kept_and_ties_keep_the_first():
    torch.manual_seed(0)
    m = SpeechTTS(SpeechTTSConfig(backbone="tiny", codebook_size=30, speech_dim=8, min_tokens_per_char=0.0)).eval()
    greedy, hot = Sampling(temperature=0), Sampling(temperature=1.5)
    pool = m.generate(TEXTS, sampling=greedy, seed=5) + m.generate(TEXTS * 2, sampling=hot, seed=6)
    assert not torch.equal(pool[3], pool[0]) or not torch.equal(pool[7], pool[1])  # the draws differ from greedy
    calls = []

    def scorer(codes, texts):  # item 0: candidate 2 best; item 1: candidate 1; item 2: all equal
        calls.append((codes, texts))
        return torch.tensor([0.0, 0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 0.0, 1.0])

    out, best = generate_ranked(m, TEXTS, [None] * 3, [""] * 3, greedy, 5, 3, 1.5, scorer)
    assert best == [2, 1, 0]
    assert torch.equal(out[0], pool[6]) and torch.equal(out[1], pool[4]) and torch.equal(out[2], pool[2])
    ((codes, texts),) = calls
    assert texts == TEXTS * 3 and all(torch.equal(a, b) for a, b in zip(codes, pool))
    alone, first = generate_ranked(m, TEXTS, [None] * 3, [""] * 3, greedy, 5)
    assert first == [0, 0, 0] and all(torch.equal(a, b) for a, b in zip(alone, pool[:3]))
    with pytest.raises(ValueError, match="needs a scorer"):
        generate_ranked(m, TEXTS, [None] * 3, [""] * 3, greedy, 5, 2)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tts")
    rng = random.Random(0)
    splits = (
        ("train", 8, "s0 s1"),
        ("extra", 4, "s0 s1"),
        ("dev", 2, "s0 s1"),
        ("test", 4, "s0 s1"),
        ("unseen", 2, "s9"),
    )
    texts = []
    for split, n, speakers in splits:
        spk = speakers.split()
        entries = []
        for i in range(n):
            s = spk[i % len(spk)]
            utt = f"{s}-{split}-{i:02d}"
            path = write(str(root / "wav" / f"{utt}.wav"), tone(0.8 + 0.1 * (i % 3), freq=120 + 25 * i))
            entries.append(Entry(utt, s, path, make_sentence(rng)))
        texts += [e.text for e in entries]
        make_data_dir(entries, str(root / "dump" / split))
        compute_features(str(root / "dump" / split), str(root / "dump" / split), progress=False)
    model = tokenizer_with_vocabulary(root / "tok", texts)  # a CTC head and its units: candidates can be ranked
    tok = Tokenizer.from_pretrained(model, vocoder="griffin_lim")
    for split in ("train", "extra", "dev", "test", "unseen"):
        dump_codes(tok, str(root / "dump" / split), str(root / "tok" / "codes" / split), progress=False)
    return root


def test_recipe_trains_synthesises_and_judges(tiny_set, tmp_path):
    root, exp = tiny_set, tiny_set / "exp"
    cmd = [sys.executable, TRAIN, HPARAMS, "--backbone", "tiny", "--model_dir", str(root / "tok" / "model")]
    cmd += ["--codes_root", str(root / "tok" / "codes"), "--dump_dir", str(root / "dump"), "--exp_dir", str(exp)]
    cmd += ["--test_set", "test", "--unseen_set", "unseen", "--number_of_epochs", "2", "--max_train_minutes", "0"]
    cmd += ["--max_batch_positions", "150", "--warmup_steps", "2", "--eval_utts", "0", "--eval_steps", "[1, 2]"]
    cmd += ["--vocoder", "griffin_lim", "--examples", "1", "--max_tokens_per_char", "0.3", "--lm_layers", "0"]
    cmd += ["--noprogressbar", "--prompt_pairs", "0.5", "--tiny", str(SMALL), "--extra_train_sets", "[extra]"]
    cmd += ["--candidates", "3"]
    r = run_one_thread(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(exp / "results.json"))
    assert res["epochs"] == 2 and res["steps"] > 0 and res["utterances"] == 4
    assert res["counts"]["train"]["kept"] == 12  # train and the extra set, one training set
    assert 0 < res["counts"]["train_pairs"] <= 12  # same-speaker (prompt, target) pairs trained on too
    rows = {(row["prompting"], row["steps"]): row for row in res["rows"]}
    assert set(rows) == {(p, s) for p in ("same", "unseen", "resynthesis") for s in (1, 2)}
    for row in rows.values():
        assert row["wer"] is not None and row["sim"] is not None and row["decoder_rtf"] > 0
    assert rows[("same", 1)]["lm_rtf"] > 0 and rows[("resynthesis", 1)]["lm_rtf"] == 0
    assert res["candidates"] == 3 and 0 <= rows[("same", 1)]["drawn_chosen"] <= 4  # the best of 3 by the CTC head

    spk = read_table(str(root / "dump" / "test" / "utt2spk"))
    same = dict(line.split("\t") for line in open(exp / "gen_same" / "prompts.tsv").read().splitlines())
    assert len(same) == 4 and all(spk[u] == spk[p] and u != p for u, p in same.items())
    unseen = dict(line.split("\t") for line in open(exp / "gen_unseen" / "prompts.tsv").read().splitlines())
    assert set(unseen.values()) <= set(read_table(str(root / "dump" / "unseen" / "utt2spk")))
    n_tokens = {u: int(n) for u, n in read_table(str(exp / "gen_same" / "utt2num_tokens")).items()}
    texts = read_table(str(root / "dump" / "test" / "text"))
    assert all(1 <= n <= int(0.3 * len(texts[u])) + 10 for u, n in n_tokens.items())  # the length bound holds
    summary = json.load(open(exp / "eval_same" / "summary.json"))
    assert summary["utterances"] == 4 and summary["models"]["same"]["codebook_size"] == 64
    examples = sorted(os.listdir(exp / "examples" / "same"))
    assert len([e for e in examples if e.endswith(".prompt.wav")]) == 1 and "examples.tsv" in examples
    written = json.load(open(exp / "model" / "speech_tts.json"))  # the recipe's model: phones in, sizes as asked
    assert written["text_units"] == "phones" and written["tiny"]["hidden_size"] == 64
    assert os.path.exists(exp / "model" / "backbone" / "phone_tokenizer.json")

    out = str(tmp_path / "tts.wav")
    cli = [sys.executable, "-m", "sitok.cli", "tts", "the red fox", "-m", str(root / "tok" / "model")]
    r = run_one_thread(cli + ["--tts", str(exp / "model"), "-o", out, "--steps", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.getsize(out) > 44
    r = run_one_thread(cli + ["--tts", str(exp / "model"), "-o", out, "--steps", "1", "--candidates", "3"])
    assert r.returncode == 0 and "best of 3 token sequences by the CTC head" in r.stderr, r.stderr[-3000:]


def test_feature_reader_reads_several_sets_as_one(tiny_set):
    scp = {s: str(tiny_set / "tok" / "codes" / s / "codes.scp") for s in ("train", "extra")}
    both = FeatureReader([scp["train"], scp["extra"]])
    for s in ("train", "extra"):
        alone = FeatureReader(scp[s])
        assert alone.table and all(torch.equal(both(u), alone(u)) for u in alone.table)
    assert len(both.table) == 12
    with pytest.raises(ValueError, match="extra/codes.scp: utterance .* is also in .*extra/codes.scp"):
        FeatureReader([scp["extra"], scp["extra"]])
    with pytest.raises(KeyError, match="no entry for utterance nobody"):
        both("nobody")


def test_recipe_refuses_a_multi_codebook_tokenizer(tiny_set, tmp_path):
    root = tiny_set
    model = write_model_dir(tmp_path / "rvq", quantizer="rvq", num_codebooks=2)
    cmd = [sys.executable, TRAIN, HPARAMS, "--backbone", "tiny", "--model_dir", model]
    cmd += [
        "--codes_root",
        str(root / "tok" / "codes"),
        "--dump_dir",
        str(root / "dump"),
        "--exp_dir",
        str(tmp_path / "e"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and "writes one codebook" in r.stdout + r.stderr


def test_init_model_goes_on_from_a_trained_model_directory(tiny_set, tmp_path):
    from sitok.lm.tts import build_model

    hp = {
        "model_dir": str(tiny_set / "tok" / "model"),
        "backbone": "tiny",
        "pretrained": False,
        "lora_rank": 0,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "dropout": 0.0,
        "lm_layers": 0,
        "init_from_codebook": True,
        "speech_dim": 16,
        "max_tokens_per_char": 2.0,
        "min_tokens_per_char": 0.2,
    }
    torch.manual_seed(0)
    first = build_model(hp)
    with torch.no_grad():
        first.speech_head.bias.add_(1.0)  # as if trained
    first.save(str(tmp_path / "trained"))
    torch.manual_seed(1)
    again = build_model({**hp, "init_model": str(tmp_path / "trained"), "dropout": 0.2})
    assert again.training and again.config.dropout == 0.2  # this run's dropout, the saved weights
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    other = write_model_dir(tmp_path / "big", codebook_size=128)
    with pytest.raises(ValueError, match="writes 64 codes"):
        build_model({**hp, "model_dir": other, "init_model": str(tmp_path / "trained")})


@pytest.mark.parametrize(
    "recipe",
    [
        "tts/hparams/mini.yaml",
        "tts/hparams/libritts.yaml",
        "llm_asr/hparams/mini.yaml",
        "llm_asr/hparams/librispeech.yaml",
    ],
)
def test_tiny_sizes_can_be_set_from_the_command_line(recipe, tmp_path):
    """``--tiny "{hidden_size: 32}"`` is accepted by the yaml (a null key would reject the override)
    and changes that size only: the others are the yaml's, then TINY_LLAMA's."""
    from hyperpyyaml import load_hyperpyyaml

    from sitok.models.speech_lm import TINY_LLAMA, SpeechLMConfig

    path = os.path.join(ROOT, "recipes", recipe)
    with open(path) as f:
        declared = dict(load_hyperpyyaml(f, {"backbone": "tiny", "exp_dir": str(tmp_path)})["tiny"])
    with open(path) as f:
        hp = load_hyperpyyaml(f, {"backbone": "tiny", "tiny": {"hidden_size": 32}, "exp_dir": str(tmp_path)})
    assert hp["tiny"] == {**declared, "hidden_size": 32}
    cfg = SpeechLMConfig.from_dict({"backbone": "tiny", "tiny": dict(hp["tiny"])})
    assert cfg.tiny == {**TINY_LLAMA, **declared, "hidden_size": 32}
