"""DASB-style probes: front ends, codebook initialisation, SV metrics and trials, CTC helpers."""

import pytest
import torch

from sitok.data.trials import make_trials, read_trials, write_trials
from sitok.probes.brain import ctc_frames_needed, sv_metrics
from sitok.probes.frontend import MelProbeInput, TokenProbeInput, build_frontend, codebook_vectors
from sitok.quantizers import FSQ, EMAVectorQuantizer, ResidualVQ


@pytest.mark.parametrize("cn", [1, 4])
def test_token_frontend_shapes_and_weights(cn):
    torch.manual_seed(0)
    fe = TokenProbeInput(num_codebooks=cn, codebook_size=50, dim=16)
    codes = torch.randint(0, 50, (3, 7, cn))
    before = codes.clone()
    out = fe(codes)
    assert out.shape == (3, 7, 16)
    assert torch.equal(codes, before)  # ids are never modified in place
    w = fe.last_weights
    assert w.shape == (3, 7, cn)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 7))
    if cn == 1:
        assert torch.equal(w, torch.ones_like(w))
    with pytest.raises(ValueError, match=rf"codes must be \[B, T, {cn}\]"):
        fe(codes[..., :1] if cn > 1 else codes.repeat(1, 1, 2))
    with pytest.raises(TypeError):
        fe(codes.float())


@pytest.mark.parametrize("cn", [1, 4])
def test_codebook_init_with_identity_projection_reproduces_codebook(cn):
    torch.manual_seed(0)
    books = torch.randn(cn, 20, 8)
    fe = TokenProbeInput(num_codebooks=cn, codebook_size=20, dim=8, init=books)
    ids = torch.arange(20)
    for c in range(cn):  # each table, through the identity-initialised projection, is its codebook
        torch.testing.assert_close(fe.proj(fe.embeddings[c](ids)), books[c])
    if cn == 1:  # and the whole front end returns the codebook vector of each code
        torch.testing.assert_close(fe(ids.view(1, 20, 1))[0], books[0])
    books[0, 0] += 1.0  # the tables are copies, not views of the quantizer's buffers
    assert not torch.equal(fe.embeddings[0].weight[0], books[0, 0])
    frozen = TokenProbeInput(cn, 20, 16, init=torch.randn(cn, 20, 8), freeze_init=True)
    assert not frozen.embeddings[0].weight.requires_grad and frozen.proj.weight.requires_grad
    assert frozen(torch.zeros(2, 3, cn, dtype=torch.long)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="init codebooks"):
        TokenProbeInput(cn, 21, 8, init=books)


def test_codebook_vectors_match_quantizer_decode():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(dim=6, codebook_size=32)
    rvq = ResidualVQ(dim=6, num_codebooks=3, codebook_size=16)
    fsq = FSQ(dim=3, levels=[3, 4, 5])
    ids = torch.randint(0, 16, (1, 1, 9))
    torch.testing.assert_close(codebook_vectors(vq)[0][ids[0, 0]], vq.decode(ids)[0])
    books = codebook_vectors(rvq)
    assert books.shape == (3, 16, 6)
    codes = torch.randint(0, 16, (1, 3, 9))
    torch.testing.assert_close(sum(books[c][codes[0, c]] for c in range(3)), rvq.decode(codes)[0])
    fb = codebook_vectors(fsq)
    assert fb.shape == (1, 60, 3)
    torch.testing.assert_close(fb[0][ids[0, 0]], fsq.decode(ids)[0])


def test_mel_frontend_rates():
    mel = torch.randn(2, 50, 128)
    m12 = MelProbeInput(stack=4, dim=32)
    m50 = MelProbeInput(stack=1, dim=32)
    assert m12.frame_rate == 12.5 and m50.frame_rate == 50.0
    assert m12(mel).shape == (2, 13, 32)  # 50 frames -> ceil(50 / 4) stacks
    assert m50(mel).shape == (2, 50, 32)
    assert build_frontend("mel12.5", dim=32).stack == 4 and build_frontend("mel50", dim=32).stack == 1
    with pytest.raises(ValueError, match="unknown probe features"):
        build_frontend("wavlm")
    with pytest.raises(ValueError, match="model_dir"):
        build_frontend("tokens")


def test_eer_and_min_dcf_on_known_scores():
    # one positive below and one negative above the best threshold: EER = 1/5 = 20 %
    pos = [0.1, 0.6, 0.7, 0.8, 0.9]
    neg = [0.2, 0.3, 0.4, 0.5, 0.95]
    eer, dcf = sv_metrics(pos, neg)
    assert eer == pytest.approx(20.0, abs=0.5)
    assert 0.0 < dcf <= 1.0
    eer, dcf = sv_metrics([0.8, 0.9, 0.95], [0.1, 0.2, 0.3])  # separable: no errors
    assert eer == pytest.approx(0.0, abs=1e-6) and dcf == pytest.approx(0.0, abs=1e-6)
    eer, _ = sv_metrics([0.1, 0.2, 0.3], [0.8, 0.9, 0.95])  # inverted: all wrong
    assert eer == pytest.approx(100.0, abs=1e-6)


def test_trial_list_held_out_balanced_and_reproducible(tmp_path):
    train_spk = {f"s{i}" for i in range(5)}
    held_out = {f"h{s}-u{j}": f"h{s}" for s in range(4) for j in range(6)}
    trials = make_trials(held_out, n_trials=60, seed=3, exclude_speakers=train_spk)
    assert len(trials) == 60 and sum(lab for lab, _, _ in trials) == 30
    speakers = {held_out[u] for _, a, b in trials for u in (a, b)}
    assert speakers.isdisjoint(train_spk) and speakers <= set(held_out.values())
    for lab, a, b in trials:
        assert a != b and (held_out[a] == held_out[b]) == bool(lab)
    assert len({(a, b) for _, a, b in trials}) == 60  # unique pairs
    assert trials == make_trials(held_out, n_trials=60, seed=3, exclude_speakers=train_spk)
    with pytest.raises(ValueError, match="overlap the training speakers"):
        make_trials({**held_out, "s1-u0": "s1", "s1-u1": "s1"}, exclude_speakers=train_spk)
    # only 4 x C(6, 2) = 60 same-speaker pairs exist: asking for more caps the list, still balanced
    capped = make_trials(held_out, n_trials=1000, seed=0)
    assert sum(lab for lab, _, _ in capped) == 60 and len(capped) == 120
    path = tmp_path / "trials"
    write_trials(str(path), trials)
    assert read_trials(str(path)) == trials


def test_read_trials_formats_and_errors(tmp_path):
    kaldi = tmp_path / "kaldi"
    kaldi.write_text("a b target\nc d nontarget\n")
    assert read_trials(str(kaldi)) == [(1, "a", "b"), (0, "c", "d")]
    bad = tmp_path / "bad"
    bad.write_text("1 a b\nyes a b\n")
    with pytest.raises(ValueError, match=r"bad:2"):
        read_trials(str(bad))


def test_ctc_frames_needed():
    assert ctc_frames_needed([5, 6, 7]) == 3
    assert ctc_frames_needed([5, 5, 7, 7, 7]) == 8  # a blank between each equal neighbour
    assert ctc_frames_needed([]) == 0


def test_feature_facts_record_rate_and_ctc_weight(tmp_path):
    """The probe summary's compression figures and CTC weight come from the model directory's config."""
    import json

    from sitok.probes.summary import feature_facts

    model = {"mel_rate": 50.0, "stack": 4, "num_codebooks": 2, "codebook_size": 1024, "ctc_weight": 0.1}
    (tmp_path / "config.json").write_text(json.dumps({"format": "sitok-model-1", "model": model}))
    facts = feature_facts("tokens", str(tmp_path))
    assert (facts["fps"], facts["tps"], facts["cn"], facts["cs"]) == (12.5, 25.0, 2, 1024)
    assert facts["kbps"] == pytest.approx(0.25) and facts["ctc_weight"] == 0.1
    assert feature_facts("mel50")["ctc_weight"] is None and feature_facts("mel12.5")["fps"] == 12.5


def test_asr_probe_upsamples_to_the_ctc_rate_its_units_need():
    from types import SimpleNamespace

    from sitok.probes.brain import probe_upsample

    def up(frame_rate, upsample=1, min_ctc_rate=37.5):
        frontend = SimpleNamespace(frame_rate=frame_rate)
        return probe_upsample({"modules": {"frontend": frontend}, "upsample": upsample, "min_ctc_rate": min_ctc_rate})

    assert up(12.5) == 3 and up(50.0) == 1 and up(25.0) == 2  # characters: >= 37.5 CTC frames per second
    assert up(12.5, min_ctc_rate=0) == 1 and up(12.5, upsample=4) == 4
