"""The SiTok paper's own numbers (../shared/reference/sitok_paper.md), printed beside ours.

The paper's judges are whisper-large-v3 (WER), a WavLM-TDNN verifier (SIM) and UTMOS, on
LibriSpeech test-clean; ours default to pocketsphinx, Resemblyzer and DNSMOS on the corpus of
the run. The numbers are never compared as if they were the same measurement: the report puts
them in columns labelled "paper".
"""

from __future__ import annotations

JUDGES = "paper: whisper-large-v3 WER, WavLM-TDNN SIM, UTMOS, on LibriSpeech test-clean"


def _rows(columns: str, *rows: tuple) -> list[dict]:
    """One dict per row of values, keyed by the space-separated ``columns``."""
    return [dict(zip(columns.split(), r)) for r in rows]


# Table 1: main reconstruction results (SiTok rows and the ground truth)
TABLE1 = _rows(
    "row fps_tps cn kbps wer sim utmos",
    ("Ground Truth", "-", None, None, 2.14, 0.730, 3.53),
    ("SiTok (CN = 1)", "12.5/12.5", 1, 0.20, 4.06, 0.641, 3.44),
    ("+ Decoder Finetuning", "12.5/12.5", 1, 0.20, 3.79, 0.682, 3.48),
    ("+ Token CFG", "12.5/12.5", 1, 0.20, 3.34, 0.635, 3.60),
    ("SiTok (CN = 2)", "12.5/25", 2, 0.35, 3.17, 0.658, 3.44),
    ("SiTok (CN = 4)", "12.5/50", 4, 0.70, 2.80, 0.660, 3.46),
)

# Table 2: understanding (SiTok rows)
TABLE2 = _rows(
    "row fps_tps cn_cs kbps ctc_asr asr er sv ks",
    ("SiTok (CN = 1)", "12.5/12.5", "1/65536", 0.20, 9.50, 4.95, 63.5, 13.8, 96.9),
    ("SiTok (CN = 4)", "12.5/50", "4/16384", 0.70, 8.30, 4.49, 64.4, 8.59, 97.7),
)

# Table 3: CTC regularisation (keyed by "ctc" = regularised or not, and TPS)
TABLE3 = _rows(
    "ctc tps wer sim utmos ctc_asr asr er sv ks",
    (True, 12.5, 4.06, 0.641, 3.44, 9.50, 4.95, 63.5, 13.8, 96.9),
    (True, 25.0, 3.17, 0.658, 3.44, 8.64, 4.72, 61.7, 11.1, 97.8),
    (True, 50.0, 2.80, 0.660, 3.46, 8.30, 4.49, 64.4, 8.59, 97.7),
    (False, 12.5, 33.0, 0.495, 2.68, None, 29.4, 57.9, 18.9, 86.1),
    (False, 25.0, 10.1, 0.598, 2.99, None, 9.53, 55.3, 15.5, 92.7),
    (False, 50.0, 5.17, 0.611, 2.84, None, 7.27, 60.4, 13.5, 92.8),
)

# Table 5: ablations
TABLE5 = _rows(
    "loss ctc_weight cs cn cd token_cfg fps wer sim utmos ctc_asr asr er sv ks",
    ("D", 0.1, 2**16, 1, 32, False, 12.5, 4.06, 0.641, 3.44, 9.50, 4.95, 63.5, 13.8, 96.9),
    ("R", 0.1, 2**16, 1, 32, False, 12.5, 4.66, 0.587, 3.28, 12.2, 6.06, 63.3, 13.6, 95.2),
    ("R + D", 0.1, 2**16, 1, 32, False, 12.5, 5.73, 0.634, 3.35, 12.2, 6.06, 63.3, 13.6, 95.2),
    ("D", 0.0, 2**16, 1, 32, False, 12.5, 33.0, 0.495, 2.68, None, 29.4, 57.9, 18.9, 86.1),
    ("D", 0.02, 2**16, 1, 32, False, 12.5, 5.05, 0.607, 3.44, 12.2, 7.41, 58.3, 13.5, 97.2),
    ("D", 0.5, 2**16, 1, 32, False, 12.5, 8.81, 0.614, 3.20, 11.0, 7.87, 64.2, 16.6, 91.2),
    ("D", 1.0, 2**16, 1, 32, False, 12.5, 10.1, 0.585, 3.38, 10.5, 8.90, 62.1, 13.9, 96.8),
    ("D", 0.1, 2**13, 1, 32, False, 12.5, 5.48, 0.640, 3.39, 11.7, 5.72, 55.7, 16.3, 95.7),
    ("D", 0.1, 2**14, 1, 32, False, 12.5, 4.30, 0.641, 3.33, 11.5, 5.40, 58.7, 16.0, 96.4),
    ("D", 0.1, 2**15, 1, 32, False, 12.5, 4.26, 0.648, 3.43, 10.5, 5.33, 61.2, 15.0, 96.4),
    ("D", 0.1, 2**17, 1, 32, False, 12.5, 3.94, 0.651, 3.39, 10.6, 5.09, 60.6, 13.7, 97.3),
    ("D", 0.1, 2**14, 2, 32, False, 12.5, 3.17, 0.658, 3.44, 8.64, 4.72, 61.7, 11.1, 97.8),
    ("D", 0.1, 2**14, 4, 32, False, 12.5, 2.80, 0.660, 3.46, 8.30, 4.49, 64.4, 8.59, 97.7),
    ("D", 0.1, 2**14, 8, 32, False, 12.5, 2.50, 0.645, 3.30, 8.42, 4.68, 60.0, 7.53, 98.2),
    ("D", 0.1, 2**14, 1, 64, False, 12.5, 4.08, 0.642, 3.46, 9.58, 5.27, 61.7, 14.4, 97.3),
    ("D", 0.1, 2**14, 1, 128, False, 12.5, 3.85, 0.642, 3.36, 9.14, 4.59, 59.7, 14.3, 97.3),
    ("D", 0.1, 2**14, 1, 256, False, 12.5, 5.04, 0.641, 3.30, 10.9, 5.54, 64.1, 16.5, 95.9),
    ("D", 0.1, 2**16, 1, 32, True, 12.5, 3.34, 0.635, 3.60, 9.54, 4.89, 62.4, 14.0, 96.8),
    ("D", 0.1, 2**14, 4, 32, True, 12.5, 2.56, 0.645, 3.58, 8.34, 4.67, 61.7, 9.11, 98.2),
)

# Table 6: light-weight diffusion head
TABLE6 = _rows(
    "light_head row wer sim utmos", (False, "Base", 4.06, 0.641, 3.44), (True, "w. light head", 3.97, 0.610, 3.46)
)

# Table 7 (Appendix C.2): zero-shot AR-TTS on SeedTTS test-en, RTF on one A100 GPU (a 10 s utterance).
# The table gives no parameter counts or decoding steps; its text gives them for SiTok-AR-TTS only
# (a 0.5 B LM initialised from Qwen2.5-0.5B, trained on 100 k hours of Emilia, 16 decoding steps).
TABLE7 = _rows(
    "row fps_tps params_m steps wer sim rtf",
    ("CosyVoice 2 (Du et al., 2024b)", "25/25", None, None, 2.89, 0.66, 0.455),
    ("SparkTTS (Wang et al., 2025a)", "12.5/12.5", None, None, 2.50, 0.57, 0.601),
    ("Llasa (Ye et al., 2025b)", "50/50", None, None, 3.94, 0.58, 0.422),
    ("SiTok-AR-TTS", "12.5/12.5", 500.0, 16, 2.46, 0.64, 0.234),
)
TABLE7_SETTING = (
    "paper: zero-shot TTS on SeedTTS test-en, whisper-large-v3 WER and WavLM-TDNN SIM against the prompt, "
    "RTF on one A100 GPU averaged over 10 syntheses of a 10 s utterance"
)

# Table 9: VQ vs FSQ
TABLE9 = _rows(
    "quantizer row wer sim utmos ctc_asr asr er sv ks",
    ("vq", "SiTok (VQ)", 4.06, 0.641, 3.44, 9.50, 4.95, 63.5, 13.8, 96.9),
    ("fsq", "SiTok (FSQ)", 5.23, 0.629, 3.44, 10.02, 5.33, 62.0, 14.1, 96.9),
)


def table5_match(loss: str, ctc_weight: float, cn: int, cd: int, token_cfg: bool, fps: float) -> dict | None:
    """The paper's Table 5 row for one of our configurations. Codebook size is not matched (the
    mini configuration's 1,024 entries are not in the paper's grid): among the rows that agree on
    loss, CTC weight, CN, codebook dim, token CFG and frame rate, the paper's default size for
    that CN (2^16 for CN = 1, 2^14 for CN > 1) is taken."""
    cands = [
        r
        for r in TABLE5
        if r["loss"] == loss
        and abs(r["ctc_weight"] - ctc_weight) < 1e-9
        and r["cn"] == cn
        and r["cd"] == (cd if cd in (32, 64, 128, 256) else 32)
        and r["token_cfg"] == token_cfg
        and r["fps"] == fps
    ]
    if not cands:
        return None
    default_cs = 2**16 if cn == 1 else 2**14
    return next((r for r in cands if r["cs"] == default_cs), cands[0])
