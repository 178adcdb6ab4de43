"""SpeechTTS (AR-TTS on the tokens): the loss, sampling, batched and prompted generation, the model directory."""

import pytest
import torch
import torch.nn.functional as F

from sitok.models.tts_lm import Sampling, SpeechTTS, SpeechTTSConfig, sample_next

TEXTS = ["red fox", "a cat", "go home"]


def tiny(**kw):
    torch.manual_seed(0)
    return SpeechTTS(SpeechTTSConfig(**{"backbone": "tiny", "codebook_size": 30, "speech_dim": 8, **kw}))


def codes(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 30, (n,), generator=g) for n in (9, 6, 11)]


def trained(steps=200, **kw):
    m = tiny(min_tokens_per_char=0.0, **kw)
    ids, cs = [m.text.encode(t) for t in TEXTS], codes()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        m(ids, cs)["loss"].backward()
        opt.step()
    return m.eval(), cs


def test_loss_scores_every_speech_token_and_the_end():
    m = tiny()
    ids, cs = [m.text.encode(t) for t in TEXTS], codes()
    out = m(ids, cs)
    assert out["tokens"] == sum(len(c) + 1 for c in cs)
    total = 0.0
    for t, c in zip(ids, cs):  # by hand, one utterance at a time
        x = torch.cat([m._text(t, "cpu"), m._speech(torch.cat([torch.tensor([m.start_id]), c]))])[None]
        h = m.lm.get_decoder()(inputs_embeds=x).last_hidden_state[0, len(t) :]
        total = total + F.cross_entropy(m.speech_head(h), torch.cat([c, torch.tensor([m.end_id])]), reduction="sum")
    torch.testing.assert_close(out["loss"], total / out["tokens"], rtol=1e-4, atol=1e-5)


def test_greedy_generation_batched_alone_and_from_a_prompt():
    m, cs = trained()
    greedy = Sampling(temperature=0)
    batch = m.generate(TEXTS, sampling=greedy)
    assert all(torch.equal(b, c) for b, c in zip(batch, cs))  # it learnt them: the checks below mean something
    alone = [m.generate([t], sampling=greedy)[0] for t in TEXTS]
    assert all(torch.equal(a, b) for a, b in zip(alone, batch))
    cont = m.generate(TEXTS, prompts=[c[:3] for c in cs], sampling=greedy)  # continuation after the prompt
    assert all(torch.equal(x, c[3:]) for x, c in zip(cont, cs))


def test_dropout_acts_while_training_only():
    m = tiny(dropout=0.5)
    rates = {mod.attention_dropout for mod in m.lm.modules() if hasattr(mod, "attention_dropout")}
    assert rates == {0.5}  # every attention layer of the LM, not only its config
    ids, cs = [m.text.encode(t) for t in TEXTS], codes()
    m.train()
    assert m(ids, cs)["loss"] != m(ids, cs)["loss"]
    m.eval()
    assert m(ids, cs)["loss"] == m(ids, cs)["loss"]
    plain = tiny()  # the same weights without dropout: the same loss in eval mode
    assert torch.allclose(plain.eval()(ids, cs)["loss"], m(ids, cs)["loss"])


def test_text_dropout_trains_the_unconditional_model_on_a_share_of_sequences():
    m = tiny(text_dropout=0.5)
    ids, cs = [m.text.encode(t) for t in TEXTS * 4], codes() * 4
    torch.manual_seed(3)
    dropped = (torch.rand(len(ids)) < 0.5).tolist()
    assert 0 < sum(dropped) < len(ids)
    torch.manual_seed(3)
    loss = m.train()(ids, cs)["loss"]  # no other dropout: the same as the eval loss on those texts removed
    by_hand = m.eval()([[] if d else t for t, d in zip(ids, dropped)], cs)["loss"]
    torch.testing.assert_close(loss, by_hand)
    assert m(ids, cs)["loss"] != by_hand  # in eval mode every text is read


def guided_by_hand(m, text, prompt, scale, n_tokens):
    """Greedy tokens of ``uncond + scale * (cond - uncond)``, every step a full pass without the cache."""
    out = []
    for _ in range(n_tokens):
        rows = []
        for ids in (m.text.encode(text), []):
            speech = torch.cat([prompt, torch.tensor(out, dtype=torch.long)])
            x = m._prefix(ids, speech, "cpu")[None]
            rows.append(m.speech_head(m.lm.get_decoder()(inputs_embeds=x).last_hidden_state[0, -1]))
        logits = rows[1] + scale * (rows[0] - rows[1])
        tok = int(logits.argmax())
        if tok == m.end_id:
            break
        out.append(tok)
    return out


def test_text_guidance_batched_with_the_cache_equals_it_by_hand():
    m, cs = trained(text_dropout=0.3)
    greedy = Sampling(temperature=0)
    assert all(torch.equal(a, b) for a, b in zip(m.generate(TEXTS, sampling=greedy), cs))
    for prompts in ([torch.zeros(0, dtype=torch.long)] * 3, [c[:2] for c in cs]):
        for scale in (0.0, 2.5):
            s = Sampling(temperature=0, cfg_scale=scale)
            batch = m.generate(TEXTS, prompts=prompts, sampling=s)
            for text, p, b in zip(TEXTS, prompts, batch):
                assert b.tolist() == guided_by_hand(m, text, p, scale, m.length_bounds(text)[1])
                assert torch.equal(m.generate([text], prompts=[p], sampling=s)[0], b)  # alone = batched
    # scale 0 is the unconditional model: without a prompt, texts of one length give the same tokens
    uncond = m.generate(["red fox", "go home"], sampling=Sampling(temperature=0, cfg_scale=0))
    assert torch.equal(uncond[0], uncond[1])
    assert Sampling.from_dict({"temperature": 0, "cfg_scale": 2.0}) == Sampling(temperature=0, cfg_scale=2.0)
    with pytest.raises(ValueError, match=r"unknown fields \['cfg'\]"):
        Sampling.from_dict({"cfg": 2.0})  # the recipe's sampling mapping: a misspelt key is an error
    plain, _ = trained()
    with pytest.raises(ValueError, match="text_dropout"):
        plain.generate(TEXTS, sampling=Sampling(temperature=0, cfg_scale=2.0))


def test_length_bounds_follow_the_text():
    m = tiny(min_tokens_per_char=1.0, max_tokens_per_char=1.5)
    assert m.length_bounds("abcd") == (4, 16)
    out = m.generate(["abcd"], sampling=Sampling(temperature=0))[0]
    assert 4 <= len(out) <= 16


def test_sampling_filters_and_repetition_aware_redraw():
    logits = torch.log(torch.tensor([0.85, 0.1, 0.05]))
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, [], Sampling(temperature=0)) == 0
    assert {sample_next(logits, [], Sampling(top_k=1, ras_window=0), g) for _ in range(50)} == {0}
    assert {sample_next(logits, [], Sampling(top_p=0.5, ras_window=0), g) for _ in range(50)} == {0}
    # top-k 1 always proposes 0; when 0 already fills the window, the redraw comes from the full distribution
    draws = [sample_next(logits, [0] * 10, Sampling(top_k=1, ras_window=10, ras_ratio=0.5), g) for _ in range(400)]
    assert 0.05 < sum(d != 0 for d in draws) / 400 < 0.25
    draws = [sample_next(logits, [1] * 10, Sampling(top_k=1, ras_window=10, ras_ratio=0.5), g) for _ in range(50)]
    assert set(draws) == {0}  # no repetition of the proposal: no redraw


def test_codebook_start_and_model_directory_round_trip(tmp_path):
    m = tiny()
    book = torch.randn(1, 30, 8) * 0.2
    m.init_from_codebook(book)
    torch.testing.assert_close(m.speech_embed.weight[:30], book[0] / book.std())
    with pytest.raises(ValueError, match="does not fit"):
        m.init_from_codebook(torch.randn(1, 29, 8))
    m.eval().save(str(tmp_path / "tts"))
    back = SpeechTTS.load(str(tmp_path / "tts"))
    ids = [m.text.encode(t) for t in TEXTS]
    torch.testing.assert_close(back(ids, codes())["loss"], m(ids, codes())["loss"])
    with pytest.raises(FileNotFoundError, match="speech_tts.json"):
        SpeechTTS.load(str(tmp_path))


def test_tts_command_speaks_with_and_without_a_prompt(tmp_path):
    import subprocess
    import sys

    import soundfile as sf

    from conftest import tone, write, write_model_dir

    tok = write_model_dir(tmp_path / "tok")  # a tiny untrained tokenizer: 64 codes
    torch.manual_seed(0)
    SpeechTTS(SpeechTTSConfig(backbone="tiny", codebook_size=64, speech_dim=8)).eval().save(str(tmp_path / "tts"))
    prompt = write(str(tmp_path / "prompt.wav"), tone(1.0))
    base = [sys.executable, "-m", "sitok.cli", "tts", "-m", tok, "--tts", str(tmp_path / "tts"), "--steps", "2"]
    for name, extra in (("plain", []), ("prompted", ["--prompt", prompt, "--prompt-text", "a tone"])):
        out = str(tmp_path / f"{name}.wav")
        r = subprocess.run(base + ["hello there", "-o", out, *extra], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        info = sf.info(out)
        assert info.samplerate == 24000 and info.frames > 0
        assert "RTF" in r.stderr and "LM" in r.stderr
    r = subprocess.run(base + ["hi", "-o", str(tmp_path / "x.wav"), "--prompt", prompt], capture_output=True, text=True)
    assert r.returncode != 0 and "--prompt-text" in r.stderr
    guided = ["hi", "-o", str(tmp_path / "x.wav"), "--text-cfg-scale", "2"]
    r = subprocess.run(base + guided, capture_output=True, text=True)
    assert r.returncode != 0 and "text_dropout" in r.stderr  # guidance needs a model trained for it
    ranked = ["hi", "-o", str(tmp_path / "x.wav"), "--candidates", "4"]
    r = subprocess.run(base + ranked, capture_output=True, text=True)
    assert r.returncode != 0 and "no trained CTC head with its sp.model" in r.stderr  # ranking needs the CTC units


def test_phone_units_read_words_as_pronunciations_and_travel_with_the_model(tmp_path):
    from sitok.models.speech_lm import CharText, PhoneText

    text = PhoneText({"red": ["R", "EH", "D"], "fox": ["F", "AA", "K", "S"], "a": ["AH"]})
    chars = CharText()
    ids = text.encode("Red fox, a qat.")
    # words of the lexicon become phones, others letters; spaces and punctuation stay characters
    assert text.decode(ids) == "[R][EH][D] [F][AA][K][S], [AH] qat."
    assert ids[3] == chars.index[" "] and ids[-4:] == chars.encode("qat.")
    assert len({*text.phone_index.values(), *chars.index.values()}) == len(text) - 3  # one id per symbol

    m = tiny(text_units="phones")
    assert isinstance(m.text, PhoneText) and m.lm.config.vocab_size == len(m.text)
    assert m.text.encode("fox") == [m.text.phone_index[p] for p in ("F", "AA", "K", "S")]  # the CMU dictionary
    m.eval().save(str(tmp_path / "tts"))
    back = SpeechTTS.load(str(tmp_path / "tts"))
    assert isinstance(back.text, PhoneText) and back.text.lexicon == m.text.lexicon
    batch = [m.text.encode(t) for t in TEXTS]
    torch.testing.assert_close(back(batch, codes())["loss"], m(batch, codes())["loss"])

    (tmp_path / "tts" / "backbone" / PhoneText.file_name).write_text('{"alphabet": "abc", "lexicon": {}}')
    with pytest.raises(ValueError, match="not a phone tokenizer"):
        SpeechTTS.load(str(tmp_path / "tts"))
    with pytest.raises(ValueError, match="text_units"):
        SpeechTTSConfig.from_dict({"backbone": "tiny", "text_units": "bytes"})
    with pytest.raises(ValueError, match="only the tiny backbone"):
        SpeechTTS(SpeechTTSConfig(backbone="smollm2", text_units="phones", codebook_size=30, speech_dim=8))
