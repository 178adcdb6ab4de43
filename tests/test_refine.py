"""Decoder refinement: frozen fine-tuning, token CFG, shortcut models, the light diffusion head."""

import json
import logging
import os

import pytest
import torch

from sitok.data.mel import GlobalCMVN
from sitok.infer import Tokenizer
from sitok.losses import bootstrap_target, shortcut_loss
from sitok.models import SiTok, SiTokConfig
from sitok.train.refine import freeze_all_but_decoder, load_for_refinement

from conftest import TINY_MODEL, run_cli, tiny_sitok

TINY = {**TINY_MODEL, "dec_layers": 4}


def tiny(**kw):
    return tiny_sitok(**{**TINY, **kw})


def batch(b=4, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 128, generator=g), torch.tensor([t, t - 8, t - 16, t - 4][:b])


def frozen_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder.")}


@pytest.mark.parametrize(
    "kw", [{}, {"token_cfg": True}, {"shortcut": True}, {"light_head_layers": 1}, {"decoder_chunk": 2}]
)
def test_fine_tune_step_leaves_encoder_vq_ctc_bit_identical(kw):
    model = tiny(**kw).train()
    before = frozen_state(model)
    dec_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    n_train, n_frozen = freeze_all_but_decoder(model)
    assert n_train == sum(p.numel() for p in model.decoder.parameters()) and n_frozen > 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    mel, lengths = batch()
    for _ in range(2):
        out = model.forward_refine(
            mel,
            lengths,
            cfg_drop_prob=0.5 if kw.get("token_cfg") else 0.0,
            shortcut={"bootstrap_every": 2} if kw.get("shortcut") else None,
        )
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("decoder."))
        opt.step()
    after = frozen_state(model)
    assert before.keys() == after.keys()
    for k in before:  # weights and VQ buffers (EMA codebook, usage counts) alike
        assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(dec_before[k], v) for k, v in model.decoder.state_dict().items())


def test_token_drop_rate_is_about_ten_percent_and_uses_the_null_condition():
    model = tiny(token_cfg=True).train()
    mel, lengths = batch(b=4, t=16)
    torch.manual_seed(1)
    rates = [float(model.forward_refine(mel, lengths, cfg_drop_prob=0.1)["stats"]["cfg_dropped"]) for _ in range(400)]
    assert abs(sum(rates) / len(rates) - 0.1) < 0.02  # 1,600 utterances: std of the mean 0.0075
    cond = torch.randn(3, 5, 32)
    dropped = model.decoder.drop_tokens(cond, torch.tensor([False, True, False]))
    assert torch.equal(dropped[0], cond[0]) and torch.equal(dropped[2], cond[2])
    assert torch.equal(dropped[1], model.decoder.null_cond.expand(5, 32))
    assert model.eval().forward_refine(mel, lengths, cfg_drop_prob=0.1)["stats"].get("cfg_dropped") is None
    with pytest.raises(ValueError, match="null condition"):
        tiny().decoder.drop_tokens(cond, torch.tensor([True, False, False]))


def tokenizer(model, tmp_path):
    cmvn = GlobalCMVN(torch.zeros(128), torch.ones(128))
    return Tokenizer(model.eval(), cmvn)


def test_cfg_scale_one_is_the_plain_conditional_decoder(tmp_path):
    model = tiny(token_cfg=True)
    with torch.no_grad():
        model.decoder.null_cond.normal_()  # a trained null condition: guidance makes a difference
    tok = tokenizer(model, tmp_path)
    codes = torch.randint(0, 64, (2, 1, 9))
    plain = tok.decode_mel(codes, steps=4, seed=3)
    assert torch.equal(tok.decode_mel(codes, steps=4, seed=3, cfg_scale=1.0), plain)
    guided = tok.decode_mel(codes, steps=4, seed=3, cfg_scale=2.0)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)
    # w = 0 is the unconditional (null-condition) decoder
    x_t, t = torch.randn(2, 9, 512), torch.full((2,), 0.3)
    cond = model.cond_from_codes(codes)
    uncond = model.velocity(x_t, t, model.decoder.condition(cond, drop=torch.ones(2, dtype=torch.bool)))
    assert torch.allclose(model.velocity_fn(cond, cfg_scale=0.0)(x_t, t), uncond, atol=1e-5)
    with pytest.raises(ValueError, match="token CFG"):
        tokenizer(tiny(), tmp_path).decode_mel(codes, cfg_scale=2.0)


def test_temperature_scales_the_start_noise(tmp_path):
    model = tiny()
    tok = tokenizer(model, tmp_path)
    codes = torch.randint(0, 64, (2, 1, 9))
    assert torch.equal(tok.decode_mel(codes, steps=2, seed=3, temperature=1.0), tok.decode_mel(codes, steps=2, seed=3))
    # temperature 0: the decode starts at the noise mode, so the seed no longer matters
    assert torch.equal(
        tok.decode_mel(codes, steps=2, seed=1, temperature=0.0), tok.decode_mel(codes, steps=2, seed=2, temperature=0.0)
    )
    # one Euler step from x_0 = tau * eps, written out
    tau = 0.5
    eps = torch.randn(9, 512, generator=torch.Generator().manual_seed(3)).expand(
        2, 9, 512
    )  # each item: seed 3's stream
    x0 = tau * eps
    with torch.no_grad():
        x1 = x0 + model.velocity_fn(model.cond_from_codes(codes), None, 1)(x0, torch.zeros(2))
    assert torch.allclose(
        tok.decode_mel(codes, steps=1, seed=3, temperature=tau), tok.cmvn.inverse(model.unstack(x1)), atol=1e-5
    )
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            tok.decode_mel(codes, temperature=bad)


def test_select_setting_takes_the_lowest_mean_mel_l1_but_never_the_plain_one():
    from sitok.eval.refine import select_setting

    def rows(name, table):  # {(w, tau): [l1 at steps 1, 2]}
        return [
            {"model": name, "steps": s, "cfg_scale": w, "temperature": tau, "mel_l1": v}
            for (w, tau), vals in table.items()
            for s, v in zip((1, 2), vals)
        ]

    grid = [(1.0, 0.0), (1.0, 0.5), (1.0, 1.0)]
    r = rows("sc", {(1.0, 0.0): [0.30, 0.20], (1.0, 0.5): [0.22, 0.24], (1.0, 1.0): [0.10, 0.10]})
    r += rows("other", {(1.0, 0.0): [0.0, 0.0], (1.0, 0.5): [0.9, 0.9]})
    assert select_setting(r, "sc", grid, [1, 2], "x") == (1.0, 0.5)  # mean 0.23 < 0.25; plain (1, 1) is not a candidate
    assert select_setting(r, "sc", grid, [1], "x") == (1.0, 0.5)
    assert select_setting(r, "sc", grid, [1, 2, 16], "x") == (1.0, 0.5)  # steps the rows lack are left out
    assert select_setting(r, "sc", [(1.0, 1.0)], [1, 2], "x") is None
    # CFG scales compete too
    cfg = rows("cfg", {(1.0, 1.0): [0.3, 0.3], (2.0, 1.0): [0.2, 0.2], (3.0, 1.0): [0.25, 0.25]})
    assert select_setting(cfg, "cfg", [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)], [1], "x") == (2.0, 1.0)
    with pytest.raises(ValueError, match="dev/results: model 'sc' lacks mel L1 at cfg_scale=2"):
        select_setting(r, "sc", grid + [(2.0, 1.0)], [1, 2], "dev/results")
    with pytest.raises(ValueError, match="no results of model 'missing'"):
        select_setting(r, "missing", grid, [1, 2], "x")


def test_eval_refine_scores_temperatures_and_selects_on_another_set(tmp_path, caplog):
    import kaldiio
    import numpy as np
    import pandas as pd

    from sitok.eval.refine import best_decoding, evaluate_refinement, paired_comparison

    model, model_dir = tiny(), tmp_path / "model"
    model_dir.mkdir()
    torch.save(model.state_dict(), model_dir / "model.pt")
    GlobalCMVN(torch.zeros(128), torch.ones(128)).save(str(model_dir / "cmvn.json"))
    (model_dir / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    model_dir = str(model_dir)
    for split, n in (("dev", 3), ("test", 2)):
        d, c = tmp_path / "dump" / split, tmp_path / "codes" / split
        d.mkdir(parents=True), c.mkdir(parents=True)
        rng = np.random.default_rng(len(split))
        with (
            kaldiio.WriteHelper(f"ark,scp:{d}/feats.ark,{d}/feats.scp") as fw,
            kaldiio.WriteHelper(f"ark,scp:{c}/codes.ark,{c}/codes.scp", write_function="numpy") as cw,
        ):
            for i in range(n):
                t = 5 + 2 * i
                fw(f"u{i}", rng.standard_normal((4 * t, 128)).astype(np.float32))
                cw(f"u{i}", rng.integers(0, 64, (1, t)).astype(np.int32))
        (d / "text").write_text("".join(f"u{i} hello\n" for i in range(n)))
        (d / "utt2num_frames").write_text("".join(f"u{i} {4 * (5 + 2 * i)}\n" for i in range(n)))
    run = dict(models={"m": model_dir}, steps=[1, 2], temperatures=[0.0, 0.5, 1.0], progress=False)
    dev = str(tmp_path / "eval" / "dev")
    evaluate_refinement(str(tmp_path / "dump/dev"), str(tmp_path / "codes/dev"), dev, **run)
    res = pd.read_csv(f"{dev}/results.csv")
    assert len(res) == 2 * 3 and sorted(set(res["temperature"])) == [0.0, 0.5, 1.0]
    assert {"temperature"} <= set(pd.read_csv(f"{dev}/per_utt.csv").columns) and "| temperature |" in open(
        f"{dev}/results.md"
    ).read()
    # the setting the test set's judge would get is the dev set's best non-plain one
    dev_rows = res.to_dict("records")
    want = min(
        [(1.0, 0.0), (1.0, 0.5)], key=lambda st: np.mean([r["mel_l1"] for r in dev_rows if r["temperature"] == st[1]])
    )
    # stage 5's choice: the (steps, temperature) of the lowest mel L1, printed by sitok best-decoding
    best = res.loc[res["mel_l1"].idxmin()]
    assert best_decoding(f"{dev}/results.csv", "m") == (int(best["steps"]), float(best["temperature"]))
    assert run_cli("best-decoding", dev, "--model", "m").stdout.split() == [
        str(int(best["steps"])),
        f"{best['temperature']:g}",
    ]
    with pytest.raises(ValueError, match="no rows of model 'x'"):
        best_decoding(f"{dev}/results.csv", "x")
    test = str(tmp_path / "eval" / "test")
    caplog.set_level(logging.INFO, logger="sitok.eval.refine")
    judged = dict(run, wer_steps=[1], select_from=dev)
    evaluate_refinement(str(tmp_path / "dump/test"), str(tmp_path / "codes/test"), test, **judged)
    assert f"(selected on {dev}): cfg_scale 1, temperature {want[1]:g}" in caplog.text
    cached = [f for f in os.listdir(f"{test}/cache") if not f.startswith(".")]  # .stamp: the set they were made from
    assert len(cached) == 1 + 6 and "m_griffin_lim_steps1_cfg1_temp0.json" in cached
    res = pd.read_csv(f"{test}/results.csv")
    wer = res[res["wer"].notna()]  # ground truth, and the plain and the dev-selected setting at --wer-steps
    assert list(wer["setting"]) == [
        "groundtruth_griffin_lim",
        f"m_griffin_lim_steps1_cfg1_temp{want[1]:g}",
        "m_griffin_lim_steps1_cfg1",
    ]
    (r,) = paired_comparison(test, f"m@{want[1]:g}", "m", [1], metric="wer")
    assert r["utterances"] == 2 and r["a_value"] == pytest.approx(wer["wer"].iloc[1])
    # a re-run reuses every setting: nothing is decoded
    monkey = pytest.MonkeyPatch()
    monkey.setattr(Tokenizer, "decode_mel", lambda *a, **k: 1 / 0)
    again = evaluate_refinement(str(tmp_path / "dump/test"), str(tmp_path / "codes/test"), test, **judged)
    monkey.undo()
    assert [x["mel_l1"] for x in again] == list(res["mel_l1"])
    with pytest.raises(FileNotFoundError, match="results.csv"):
        evaluate_refinement(
            str(tmp_path / "dump/test"),
            str(tmp_path / "codes/test"),
            test,
            select_from=str(tmp_path / "nowhere"),
            **run,
        )


def test_paired_comparison_of_two_settings_utterance_by_utterance(tmp_path):
    import numpy as np
    import pandas as pd

    from sitok.eval.asr import word_error_rate
    from sitok.eval.refine import paired_comparison, parse_setting

    assert parse_setting("sc") == ("sc", 1.0, 1.0) and parse_setting("cfg@0.5@2") == ("cfg", 0.5, 2.0)
    for bad in ("", "a@b", "a@1@2@3", "@1"):
        with pytest.raises(ValueError, match="NAME"):
            parse_setting(bad)
    # mel L1 from per_utt.csv
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.3, 50)
    noise = rng.normal(0, 0.01, 50)
    rows = []
    for name, tau, vals in (("base", 1.0, base), ("sc", 0.0, base - 0.02 + noise), ("sc", 1.0, base + 0.05)):
        rows += [
            {"model": name, "steps": 1, "cfg_scale": 1.0, "temperature": tau, "utt": f"u{i}", "mel_l1": v}
            for i, v in enumerate(vals)
        ]
    for r in rows:
        r["setting"] = f"{r['model']}_griffin_lim_steps1_cfg1_temp{r['temperature']:g}"
    settings = [dict(rows[0], wer=None), dict(rows[50], wer=None), dict(rows[100], wer=None)]
    pd.DataFrame(rows[:-1]).to_csv(tmp_path / "per_utt.csv", index=False)  # sc@1 lacks one utterance
    pd.DataFrame(settings).to_csv(tmp_path / "results.csv", index=False)
    (r,) = paired_comparison(str(tmp_path), "sc@0", "base", [1])
    assert r["utterances"] == 50 and r["diff"] == pytest.approx((noise - 0.02).mean())
    assert r["ci95"][0] < r["diff"] < r["ci95"][1] < 0
    assert r["a_better_share"] == pytest.approx(((noise - 0.02) < 0).mean()) and r["a_worse_share"] == pytest.approx(
        ((noise - 0.02) > 0).mean()
    )
    (r,) = paired_comparison(str(tmp_path), "sc@1", "base@1", [1])  # the 49 utterances both have
    assert r["utterances"] == 49 and r["ci95"] == pytest.approx([0.05, 0.05]) and r["a_better_share"] == 0
    with pytest.raises(ValueError, match="no rows for sc@0.5 at 1 steps"):
        paired_comparison(str(tmp_path), "sc@0.5", "base", [1])
    # WER from the judge's transcripts: the corpus WER of each side, as word_error_rate computes it
    refs = ["the cat sat", "a dog ran far away", "hello there", ""]
    hyp_a = ["the cat sat", "a dog ran far away", "hello", "noise"]
    hyp_b = ["the bat sat down", "a frog ran far away", "hello there", ""]
    judged = [("sc", 0.0, "griffin_lim", "sc_griffin_lim_steps2_cfg1_temp0", hyp_a)]
    judged += [
        ("base", 1.0, "vocos", "base_vocos_steps2_cfg1", hyp_b),
        ("base", 0.0, "vocos", "base_vocos_steps2_cfg1_temp0", None),
    ]
    for name, tau, voc, key, hyps in judged:
        st = {"setting": key, "model": name, "vocoder": voc, "steps": 2, "cfg_scale": 1.0, "temperature": tau}
        settings.append({**st, "wer": None if hyps is None else 50.0})
        rows += [
            {**st, "utt": f"u{i}", "mel_l1": 0.1, "ref": r, "hyp": h}
            for i, (r, h) in enumerate(zip(refs, hyps or refs))
        ]
    pd.DataFrame(rows).to_csv(tmp_path / "per_utt.csv", index=False)
    pd.DataFrame(settings).to_csv(tmp_path / "results.csv", index=False)
    (r,) = paired_comparison(str(tmp_path), "sc@0", "base", [2], metric="wer")
    assert r["utterances"] == 3  # the empty reference is left out, as in word_error_rate
    assert r["a_value"] == pytest.approx(100 * word_error_rate(refs, hyp_a))
    assert r["b_value"] == pytest.approx(100 * word_error_rate(refs, hyp_b)) and r["b_value"] == pytest.approx(300 / 10)
    assert r["a_better_share"] == pytest.approx(2 / 3) and r["a_worse_share"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no judged setting for base@0"):  # scored, not judged
        paired_comparison(str(tmp_path), "sc@0", "base@0", [2], metric="wer")


def test_shortcut_target_is_the_average_of_two_half_steps_on_a_toy_field():
    def field(x, t, d, rows):  # any smooth function of (x, t, d)
        return torch.sin(3 * x) * (1 + t.view(-1, 1, 1)) - x * d.view(-1, 1, 1)

    x_t = torch.randn(3, 5, 4)
    t, d = torch.tensor([0.0, 0.25, 0.5]), torch.tensor([1.0, 0.5, 0.25])
    got = bootstrap_target(field, x_t, t, d, slice(0, 3), prediction="velocity")
    h = d / 2
    v1 = field(x_t, t, h, None)
    v2 = field(x_t + h.view(-1, 1, 1) * v1, t + h, h, None)
    assert torch.allclose(got, (v1 + v2) / 2)
    # x-prediction: the same target velocity, expressed as x_hat = x_t + (1 - t) v
    as_x = lambda fn: lambda x, tt, dd, r: x + (1 - tt).view(-1, 1, 1) * fn(x, tt, dd, r)  # noqa: E731
    got_x = bootstrap_target(as_x(field), x_t, t, d, slice(0, 3), prediction="x")
    assert torch.allclose(got_x, x_t + (1 - t).view(-1, 1, 1) * (v1 + v2) / 2, atol=1e-5)


def test_shortcut_loss_splits_the_batch_and_samples_d_and_t_on_grids():
    seen = {}

    def student(x_t, t, d, rows):
        seen["t"], seen["d"] = t.clone(), d.clone()
        return torch.zeros_like(x_t)

    torch.manual_seed(0)
    x = torch.randn(16, 6, 4)
    parts = shortcut_loss(student, lambda x_t, t, d, r: torch.zeros_like(x_t), x, bootstrap_every=8)
    assert parts["bootstrap_rows"] == 2
    d, t = seen["d"], seen["t"]
    assert torch.all(d[2:] == 1 / 128) and torch.all((t[2:] * 128) == (t[2:] * 128).round())
    big = d[:2]
    assert torch.all((torch.log2(1 / big) == torch.log2(1 / big).round()) & (big >= 1 / 64))  # 2h: 1 .. 1/64
    assert torch.all(((t[:2] / big) == (t[:2] / big).round()) & (t[:2] < 1))  # t on the 2h grid
    # a perfect flow-row prediction: only the self-consistency rows leave error
    assert float(parts["fm"]) > 0 and torch.isfinite(parts["loss"])


def test_shortcut_decoder_steps_with_d_equal_one_over_n(tmp_path):
    model = tiny(shortcut=True)
    seen = []
    orig = model.decoder.step
    model.decoder.step = lambda h, m, x, t, d=None: (seen.append(d), orig(h, m, x, t, d))[1]
    tok = tokenizer(model, tmp_path)
    tok.decode_mel(torch.randint(0, 64, (1, 6)), steps=4)
    assert len(seen) == 4 and all(torch.allclose(d, torch.full_like(d, 0.25)) for d in seen)
    # a new shortcut model starts as its base: the d embedding is a no-op
    base = tiny()
    x_t, t = torch.randn(1, 6, 512), torch.full((1,), 0.5)
    cond = base.cond_from_codes(torch.randint(0, 64, (1, 1, 6)))
    sc = SiTok(SiTokConfig(**{**TINY, "shortcut": True}))
    sc.load_state_dict(base.state_dict(), strict=False)
    for d in (1.0, 1 / 8):
        dd = torch.full((1,), d)
        assert torch.allclose(
            sc.velocity(x_t, t, sc.decoder.condition(cond), d=dd),
            base.velocity(x_t, t, base.decoder.condition(cond)),
            atol=1e-6,
        )


def test_light_head_runs_the_body_once_and_the_head_every_step(tmp_path):
    model = tiny(light_head_layers=1)
    full = tiny()
    calls = {"body": 0, "head": 0}
    model.decoder.body.register_forward_hook(lambda *a: calls.__setitem__("body", calls["body"] + 1))
    model.decoder.head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    assert len(model.decoder.body.blocks) == 3 and len(model.decoder.head.blocks) == 1
    tok, tok_full = tokenizer(model, tmp_path), tokenizer(full, tmp_path)
    codes = torch.randint(0, 64, (2, 1, 7))
    out = tok.decode_mel(codes, steps=8)
    assert calls == {"body": 1, "head": 8}
    assert out.shape == tok_full.decode_mel(codes, steps=8).shape == (2, 28, 128)
    # the same interface as the full decoder: condition once, step many, forward = both
    cond = model.cond_from_codes(codes)
    x_t, t = torch.randn(2, 7, 512), torch.rand(2)
    for m in (model, full):
        h = m.decoder.condition(cond)
        assert m.decoder.step(h, None, x_t, t).shape == m.decoder(cond, None, x_t, t).shape == (2, 7, 512)
    with pytest.raises(ValueError, match="light_head_layers"):
        tiny(light_head_layers=4)


def export(model, path):
    os.makedirs(path)
    torch.save(model.state_dict(), os.path.join(path, "model.pt"))
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump({"model": model.config.to_dict()}, fh)
    return str(path)


def test_load_for_refinement_keeps_every_trained_weight(tmp_path):
    base = tiny()
    d = export(base, tmp_path / "base")
    light = load_for_refinement(d, "light_head", light_head_layers=1)
    bs, ls = base.state_dict(), light.state_dict()
    for k in bs:
        if not k.startswith("decoder."):
            assert torch.equal(bs[k], ls[k]), k
    # decoder layer 3 (the last) became head layer 0; body layers keep theirs; norms lose t
    assert torch.equal(ls["decoder.head.blocks.0.attn.qkv.weight"], bs["decoder.body.blocks.3.attn.qkv.weight"])
    assert torch.equal(ls["decoder.body.blocks.2.mlp.down.weight"], bs["decoder.body.blocks.2.mlp.down.weight"])
    assert torch.equal(ls["decoder.body.blocks.0.attn_norm.weight"], bs["decoder.body.blocks.0.attn_norm.gain.bias"])
    assert torch.equal(ls["decoder.head.norm.gain.weight"], bs["decoder.body.norm.gain.weight"])
    cfg = load_for_refinement(d, "token_cfg")
    assert cfg.config.token_cfg and torch.equal(cfg.decoder.null_cond, torch.zeros(32))
    sc = load_for_refinement(export(cfg, tmp_path / "cfg"), "shortcut")
    assert sc.config.shortcut and sc.config.token_cfg  # keeps the null condition it was given
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_for_refinement(str(tmp_path / "nothing"), "decoder_ft")
    with pytest.raises(ValueError, match="refine must be"):
        load_for_refinement(d, "distill")


def test_r_plus_d_starts_as_the_regression_decoder_and_learns_x_t(tmp_path):
    """refine=diffusion (the paper's R + D): a regression model's decoder becomes a diffusion
    decoder whose first prediction equals the regression output, whatever x_t and t are."""
    reg = tiny(decoder="regression", prediction="x", x_skip=False).eval()
    d = export(reg, tmp_path / "R")
    rd = load_for_refinement(d, "diffusion").eval()
    assert rd.config.decoder == "diffusion"
    codes = torch.randint(0, 64, (2, 1, 9))
    with torch.no_grad():
        cond = reg.cond_from_codes(codes)
        assert torch.equal(cond, rd.cond_from_codes(codes))  # encoder side untouched
        want = reg.decoder(cond)
        h = rd.decoder.condition(cond)
        for t in (0.0, 0.7):
            got = rd.decoder.step(h, None, torch.randn(2, 9, 512), torch.full((2,), t))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    out = rd.train().forward_refine(*batch())  # the flow-matching loss reaches x_proj
    out["loss"].backward()
    assert rd.decoder.x_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="regression"):
        load_for_refinement(export(tiny(), tmp_path / "D"), "diffusion")
    with pytest.raises(ValueError, match="refine=diffusion"):
        load_for_refinement(d, "decoder_ft")


def test_reparameterised_decoder_starts_with_the_x_prediction_velocity_at_t0(tmp_path):
    """refine=reparam with decoder_overrides on a diffusion model: an x-prediction decoder
    re-trains as the paper's velocity decoder. Every decoder weight carries over, the new skip
    starts at -I, so at t = 0 the new velocity equals the x-prediction model's (x_hat - x_t)."""
    base = tiny(prediction="x", x_skip=False).eval()
    d = export(base, tmp_path / "X")
    vp = load_for_refinement(d, "reparam", decoder_overrides={"prediction": "velocity", "x_skip": True}).eval()
    assert vp.config.prediction == "velocity" and vp.config.x_skip and vp.config.decoder == "diffusion"
    bs, vs = base.state_dict(), vp.state_dict()
    assert all(torch.equal(bs[k], vs[k]) for k in bs)  # encoder, VQ, CTC and the whole decoder
    codes = torch.randint(0, 64, (2, 1, 9))
    x_t = torch.randn(2, 9, 512)
    with torch.no_grad():
        cond = base.cond_from_codes(codes)
        t0 = torch.zeros(2)
        want = base.velocity(x_t, t0, base.decoder.condition(cond))
        got = vp.velocity(x_t, t0, vp.decoder.condition(cond))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        t = torch.full((2,), 0.5)  # later t the two parameterisations differ until trained
        assert not torch.allclose(
            vp.velocity(x_t, t, vp.decoder.condition(cond)), base.velocity(x_t, t, base.decoder.condition(cond))
        )
    with pytest.raises(ValueError, match="decoder_overrides that change"):
        load_for_refinement(d, "reparam", decoder_overrides={"prediction": "x"})  # changes nothing
    with pytest.raises(ValueError, match="unknown keys"):
        load_for_refinement(d, "reparam", decoder_overrides={"hidden": 64})
    with pytest.raises(ValueError, match="diffusion decoder"):
        load_for_refinement(
            export(tiny(decoder="regression", prediction="x", x_skip=False), tmp_path / "R"),
            "reparam",
            decoder_overrides={"prediction": "velocity"},
        )
    with pytest.raises(ValueError, match="refine=diffusion.reparam only"):
        load_for_refinement(d, "shortcut", decoder_overrides={"prediction": "velocity"})


def test_eval_refine_batches_and_table():

    from sitok.eval.engine import results_markdown
    from sitok.infer.sets import length_batches

    lengths = {f"u{i}": n for i, n in enumerate([5, 50, 7, 48, 6, 30])}
    batches = length_batches(lengths, max_frames=100)
    assert sorted(u for b in batches for u in b) == sorted(lengths)  # every utterance exactly once
    assert all(max(lengths[u] for u in b) * len(b) <= 100 for b in batches)
    assert [lengths[b[0]] for b in batches] == sorted(lengths[b[0]] for b in batches)  # sorted by length
    base = {"vocoder": "vocos", "cfg_scale": 1.0, "temperature": 1.0, "decoder_rtf": 0.0}
    md = results_markdown(
        [
            {**base, "model": "original", "source": "original", "vocoder": "", "steps": 0, "wer": 3.0},
            {
                **base,
                "model": "ground truth",
                "source": "groundtruth",
                "steps": 0,
                "mel_l1": 0.0,
                "fmd": 0.0,
                "wer": 4.5,
            },
            {
                **base,
                "model": "sc",
                "source": "model",
                "steps": 2,
                "cfg_scale": 1.5,
                "temperature": 0.5,
                "mel_l1": 0.25,
            },
            {**base, "model": "R", "source": "model", "steps": 0, "mel_l1": 0.3, "fmd": 1.0, "wer": 9.0, "sim": 0.5},
        ]
    )
    lines = md.splitlines()  # the columns some row has, in a fixed order
    assert lines[0] == "| model | vocoder | steps | CFG w | temperature | WER % | SIM | mel L1 | FMD | decoder RTF |"
    assert len(lines) == 6 and lines[1] == "|" + "---|" * 10
    assert lines[2] == "| original | — | — | 1 | — | 3.00 |  |  |  | 0.0000 |"
    assert lines[3] == "| ground truth | vocos | — | 1 | — | 4.50 |  | 0.0000 | 0.000 | 0.0000 |"
    assert lines[4] == "| sc | vocos | 2 | 1.5 | 0.5 |  |  | 0.2500 |  | 0.0000 |"
    assert lines[5] == "| R | vocos | regression | 1 | — | 9.00 | 0.500 | 0.3000 | 1.000 | 0.0000 |"


def test_frechet_distance_known_values_and_what_it_sees_that_l1_does_not():
    import numpy as np

    from sitok.eval.metrics import frechet_distance

    rng = np.random.default_rng(0)
    d, n = 8, 200_000
    a = rng.standard_normal((n, d))
    assert abs(frechet_distance(a, a)) < 1e-6
    m = np.arange(d) / d
    b = m + 2.0 * rng.standard_normal((n, d))  # N(m, 4 I): |m|^2 + tr(I + 4 I - 2 * 2 I) = |m|^2 + d
    assert frechet_distance(a, b) == pytest.approx(float((m**2).sum()) + d, rel=0.02)
    # one reference draw per frame: the conditional mean has the lower L1, a fresh sample the
    # lower Frechet distance (the mean's frames have no spread)
    cond = rng.standard_normal((n, d))
    ref = cond + rng.standard_normal((n, d))
    mean, sample = cond, cond + rng.standard_normal((n, d))
    assert np.abs(mean - ref).mean() < np.abs(sample - ref).mean()
    assert frechet_distance(sample, ref) < 0.05 < frechet_distance(mean, ref)


@pytest.mark.parametrize("light_head_layers", [0, 1])
def test_chunk_causal_decoder_sees_no_token_after_its_chunk(light_head_layers, tmp_path):
    """decoder_chunk 3: the velocity (and the light head's body) of chunk k depend on tokens
    0 .. 3k + 2 only; changing a later token changes nothing before its chunk, and the chunked
    kind of refinement sets the chunk from the base config (weights all kept)."""
    base = tiny(light_head_layers=light_head_layers)
    model = load_for_refinement(export(base, tmp_path / "base"), "chunked", decoder_chunk=3).eval()
    assert model.config.decoder_chunk == 3
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items())
    g = torch.Generator().manual_seed(0)
    cond, x_t = torch.randn(1, 10, 32, generator=g), torch.randn(1, 10, 512, generator=g)
    t = torch.tensor([0.3])
    later = cond.clone()
    later[:, 7] += 1.0  # token 7: chunk 2 (tokens 6-8)
    with torch.no_grad():
        a = model.decoder.step(model.decoder.condition(cond), None, x_t, t)
        b = model.decoder.step(model.decoder.condition(later), None, x_t, t)
        full_a, full_b = (base.eval().decoder.step(base.decoder.condition(c), None, x_t, t) for c in (cond, later))
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.allclose(a[:, 6:9], b[:, 6:9])
    assert not torch.allclose(full_a[:, :6], full_b[:, :6])  # the base decoder looks both ways
    with pytest.raises(ValueError, match="decoder_chunk >= 1"):
        load_for_refinement(str(tmp_path / "base"), "chunked")
