"""The SiTok paper's own numbers (../shared/reference/sitok_paper.md), printed beside ours.

The paper's judges are whisper-large-v3 (WER), a WavLM-TDNN verifier (SIM) and UTMOS, on
LibriSpeech test-clean; ours default to pocketsphinx, Resemblyzer and DNSMOS on the corpus of
the run. The numbers are never compared as if they were the same measurement: the report puts
them in columns labelled "paper".
"""

from __future__ import annotations

JUDGES = "paper: whisper-large-v3 WER, WavLM-TDNN SIM, UTMOS, on LibriSpeech test-clean"

# Table 1: main reconstruction results (SiTok rows and the ground truth)
TABLE1 = [
    {"row": "Ground Truth", "fps_tps": "-", "cn": None, "kbps": None, "wer": 2.14, "sim": 0.730, "utmos": 3.53},
    {"row": "SiTok (CN = 1)", "fps_tps": "12.5/12.5", "cn": 1, "kbps": 0.20, "wer": 4.06, "sim": 0.641, "utmos": 3.44},
    {
        "row": "+ Decoder Finetuning",
        "fps_tps": "12.5/12.5",
        "cn": 1,
        "kbps": 0.20,
        "wer": 3.79,
        "sim": 0.682,
        "utmos": 3.48,
    },
    {"row": "+ Token CFG", "fps_tps": "12.5/12.5", "cn": 1, "kbps": 0.20, "wer": 3.34, "sim": 0.635, "utmos": 3.60},
    {"row": "SiTok (CN = 2)", "fps_tps": "12.5/25", "cn": 2, "kbps": 0.35, "wer": 3.17, "sim": 0.658, "utmos": 3.44},
    {"row": "SiTok (CN = 4)", "fps_tps": "12.5/50", "cn": 4, "kbps": 0.70, "wer": 2.80, "sim": 0.660, "utmos": 3.46},
]

# Table 2: understanding (SiTok rows)
TABLE2 = [
    {
        "row": "SiTok (CN = 1)",
        "fps_tps": "12.5/12.5",
        "cn_cs": "1/65536",
        "kbps": 0.20,
        "ctc_asr": 9.50,
        "asr": 4.95,
        "er": 63.5,
        "sv": 13.8,
        "ks": 96.9,
    },
    {
        "row": "SiTok (CN = 4)",
        "fps_tps": "12.5/50",
        "cn_cs": "4/16384",
        "kbps": 0.70,
        "ctc_asr": 8.30,
        "asr": 4.49,
        "er": 64.4,
        "sv": 8.59,
        "ks": 97.7,
    },
]

# Table 3: CTC regularisation (keyed by "ctc" = regularised or not, and TPS)
TABLE3 = [
    {
        "ctc": True,
        "tps": 12.5,
        "wer": 4.06,
        "sim": 0.641,
        "utmos": 3.44,
        "ctc_asr": 9.50,
        "asr": 4.95,
        "er": 63.5,
        "sv": 13.8,
        "ks": 96.9,
    },
    {
        "ctc": True,
        "tps": 25.0,
        "wer": 3.17,
        "sim": 0.658,
        "utmos": 3.44,
        "ctc_asr": 8.64,
        "asr": 4.72,
        "er": 61.7,
        "sv": 11.1,
        "ks": 97.8,
    },
    {
        "ctc": True,
        "tps": 50.0,
        "wer": 2.80,
        "sim": 0.660,
        "utmos": 3.46,
        "ctc_asr": 8.30,
        "asr": 4.49,
        "er": 64.4,
        "sv": 8.59,
        "ks": 97.7,
    },
    {
        "ctc": False,
        "tps": 12.5,
        "wer": 33.0,
        "sim": 0.495,
        "utmos": 2.68,
        "ctc_asr": None,
        "asr": 29.4,
        "er": 57.9,
        "sv": 18.9,
        "ks": 86.1,
    },
    {
        "ctc": False,
        "tps": 25.0,
        "wer": 10.1,
        "sim": 0.598,
        "utmos": 2.99,
        "ctc_asr": None,
        "asr": 9.53,
        "er": 55.3,
        "sv": 15.5,
        "ks": 92.7,
    },
    {
        "ctc": False,
        "tps": 50.0,
        "wer": 5.17,
        "sim": 0.611,
        "utmos": 2.84,
        "ctc_asr": None,
        "asr": 7.27,
        "er": 60.4,
        "sv": 13.5,
        "ks": 92.8,
    },
]


def _t5(loss, ctc, cs, cn, cd, cfg, wer, sim, utmos, ctc_asr, asr, er, sv, ks, fps=12.5):
    return {
        "loss": loss,
        "ctc_weight": ctc,
        "cs": cs,
        "cn": cn,
        "cd": cd,
        "token_cfg": cfg,
        "fps": fps,
        "wer": wer,
        "sim": sim,
        "utmos": utmos,
        "ctc_asr": ctc_asr,
        "asr": asr,
        "er": er,
        "sv": sv,
        "ks": ks,
    }


# Table 5: ablations
TABLE5 = [
    _t5("D", 0.1, 2**16, 1, 32, False, 4.06, 0.641, 3.44, 9.50, 4.95, 63.5, 13.8, 96.9),
    _t5("R", 0.1, 2**16, 1, 32, False, 4.66, 0.587, 3.28, 12.2, 6.06, 63.3, 13.6, 95.2),
    _t5("R + D", 0.1, 2**16, 1, 32, False, 5.73, 0.634, 3.35, 12.2, 6.06, 63.3, 13.6, 95.2),
    _t5("D", 0.0, 2**16, 1, 32, False, 33.0, 0.495, 2.68, None, 29.4, 57.9, 18.9, 86.1),
    _t5("D", 0.02, 2**16, 1, 32, False, 5.05, 0.607, 3.44, 12.2, 7.41, 58.3, 13.5, 97.2),
    _t5("D", 0.5, 2**16, 1, 32, False, 8.81, 0.614, 3.20, 11.0, 7.87, 64.2, 16.6, 91.2),
    _t5("D", 1.0, 2**16, 1, 32, False, 10.1, 0.585, 3.38, 10.5, 8.90, 62.1, 13.9, 96.8),
    _t5("D", 0.1, 2**13, 1, 32, False, 5.48, 0.640, 3.39, 11.7, 5.72, 55.7, 16.3, 95.7),
    _t5("D", 0.1, 2**14, 1, 32, False, 4.30, 0.641, 3.33, 11.5, 5.40, 58.7, 16.0, 96.4),
    _t5("D", 0.1, 2**15, 1, 32, False, 4.26, 0.648, 3.43, 10.5, 5.33, 61.2, 15.0, 96.4),
    _t5("D", 0.1, 2**17, 1, 32, False, 3.94, 0.651, 3.39, 10.6, 5.09, 60.6, 13.7, 97.3),
    _t5("D", 0.1, 2**14, 2, 32, False, 3.17, 0.658, 3.44, 8.64, 4.72, 61.7, 11.1, 97.8),
    _t5("D", 0.1, 2**14, 4, 32, False, 2.80, 0.660, 3.46, 8.30, 4.49, 64.4, 8.59, 97.7),
    _t5("D", 0.1, 2**14, 8, 32, False, 2.50, 0.645, 3.30, 8.42, 4.68, 60.0, 7.53, 98.2),
    _t5("D", 0.1, 2**14, 1, 64, False, 4.08, 0.642, 3.46, 9.58, 5.27, 61.7, 14.4, 97.3),
    _t5("D", 0.1, 2**14, 1, 128, False, 3.85, 0.642, 3.36, 9.14, 4.59, 59.7, 14.3, 97.3),
    _t5("D", 0.1, 2**14, 1, 256, False, 5.04, 0.641, 3.30, 10.9, 5.54, 64.1, 16.5, 95.9),
    _t5("D", 0.1, 2**16, 1, 32, True, 3.34, 0.635, 3.60, 9.54, 4.89, 62.4, 14.0, 96.8),
    _t5("D", 0.1, 2**14, 4, 32, True, 2.56, 0.645, 3.58, 8.34, 4.67, 61.7, 9.11, 98.2),
]

# Table 6: light-weight diffusion head
TABLE6 = [
    {"light_head": False, "row": "Base", "wer": 4.06, "sim": 0.641, "utmos": 3.44},
    {"light_head": True, "row": "w. light head", "wer": 3.97, "sim": 0.610, "utmos": 3.46},
]

# Table 9: VQ vs FSQ
TABLE9 = [
    {
        "quantizer": "vq",
        "row": "SiTok (VQ)",
        "wer": 4.06,
        "sim": 0.641,
        "utmos": 3.44,
        "ctc_asr": 9.50,
        "asr": 4.95,
        "er": 63.5,
        "sv": 13.8,
        "ks": 96.9,
    },
    {
        "quantizer": "fsq",
        "row": "SiTok (FSQ)",
        "wer": 5.23,
        "sim": 0.629,
        "utmos": 3.44,
        "ctc_asr": 10.02,
        "asr": 5.33,
        "er": 62.0,
        "sv": 14.1,
        "ks": 96.9,
    },
]


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
