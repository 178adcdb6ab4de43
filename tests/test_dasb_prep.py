"""Data prep of the DASB probe corpora (IEMOCAP, VoxCeleb1, Speech Commands v2) on tiny
directories in their released layouts."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from sitok.data.dasb_prep import read_iemocap, read_speech_commands, read_voxceleb1, voxceleb_trials
from sitok.data.kaldi import read_table
from sitok.data.prep import make_data_dir
from sitok.data.trials import read_trials

from conftest import ROOT

SR = 16000


def wav(path, seconds=0.5, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32), SR, subtype="PCM_16")


def prep(reader, root, split, out, **kw):
    dd, skips = make_data_dir(reader(root, split, **kw), out)
    return dd, skips


# ---- IEMOCAP ----------------------------------------------------------------------------------
def make_iemocap(root):
    # Session1: one dialog, 4 utterances (neu, exc, fru = not used, sad); Session5: one dialog (ang, hap, xxx)
    dialogs = {
        1: ("Ses01F_impro01", [("F000", "neu"), ("M000", "exc"), ("F001", "fru"), ("M001", "sad")]),
        5: ("Ses05M_script01_1", [("F000", "ang"), ("M000", "hap"), ("M001", "xxx")]),
    }
    for s, (dialog, utts) in dialogs.items():
        sess = os.path.join(root, "IEMOCAP_full_release", f"Session{s}")
        emo, trans = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
        for i, (tag, e) in enumerate(utts):
            name = f"{dialog}_{tag}"
            wav(os.path.join(sess, "sentences", "wav", dialog, f"{name}.wav"), seed=i)
            emo += [f"[{i}.0000 - {i}.5000]\t{name}\t{e}\t[2.5000, 2.5000, 2.5000]", f"C-E1:\t{e.title()};\t()", ""]
            trans.append(f"{name} [{i:03d}.0000-{i:03d}.5000]: Hello number {i}.")
        for sub, lines in (("EmoEvaluation", emo), ("transcriptions", trans)):
            os.makedirs(os.path.join(sess, "dialog", sub), exist_ok=True)
            with open(os.path.join(sess, "dialog", sub, f"{dialog}.txt"), "w") as fh:
                fh.write("\n".join(lines) + "\n")
    for s in (2, 3, 4):  # empty sessions still need their label folder
        os.makedirs(os.path.join(root, "IEMOCAP_full_release", f"Session{s}", "dialog", "EmoEvaluation"))
        with open(os.path.join(root, "IEMOCAP_full_release", f"Session{s}", "dialog", "EmoEvaluation", "x.txt"), "w"):
            pass


def test_iemocap_four_classes_leave_one_session_out(tmp_path):
    make_iemocap(str(tmp_path / "db"))
    dd, skips = prep(read_iemocap, str(tmp_path / "db"), "train", str(tmp_path / "train"))
    labels = read_table(str(tmp_path / "train" / "utt2label"))
    assert sorted(labels.values()) == ["happy", "neutral", "sad"]  # exc -> happy; fru left out
    assert [s.reason for s in skips] == ["label-not-used"]
    spk = read_table(str(tmp_path / "train" / "utt2spk"))
    assert spk["Ses01M-Ses01F_impro01_M000"] == "Ses01M" and spk["Ses01F-Ses01F_impro01_F000"] == "Ses01F"
    assert read_table(str(tmp_path / "train" / "text"))["Ses01F-Ses01F_impro01_F000"] == "hello number 0"
    dd, skips = prep(read_iemocap, str(tmp_path / "db"), "test", str(tmp_path / "test"))
    assert sorted(read_table(str(tmp_path / "test" / "utt2label")).values()) == ["angry", "happy"]
    assert set(read_table(str(tmp_path / "test" / "utt2spk")).values()) == {"Ses05F", "Ses05M"}
    assert len(skips) == 1  # xxx
    # another test session moves session 1 out of train
    dd, _ = prep(read_iemocap, str(tmp_path / "db"), "train", str(tmp_path / "t2"), test_session=1, valid_session=2)
    assert sorted(read_table(str(tmp_path / "t2" / "utt2label")).values()) == ["angry", "happy"]
    with pytest.raises(FileNotFoundError, match="Session1"):
        list(read_iemocap(str(tmp_path / "nothing"), "train"))


# ---- VoxCeleb1 --------------------------------------------------------------------------------
def make_voxceleb(root):
    for i, spk in enumerate(["id10001", "id10002", "id10270", "id10271"]):
        for j in range(3):
            wav(os.path.join(root, "wav", spk, f"vid{j % 2}", f"{j + 1:05d}.wav"), seed=10 * i + j)
    with open(os.path.join(root, "veri_test2.txt"), "w") as fh:
        fh.write(
            "1 id10270/vid0/00001.wav id10270/vid1/00002.wav\n"
            "0 id10270/vid0/00001.wav id10271/vid0/00003.wav\n"
            "1 id10271/vid0/00001.wav id10271/vid0/00003.wav\n"
            "0 id10271/vid1/00002.wav id10270/vid9/00009.wav\n"
        )  # the last file does not exist


def test_voxceleb1_splits_and_trials(tmp_path):
    root = str(tmp_path / "vox")
    make_voxceleb(root)
    out = {s: str(tmp_path / s) for s in ("train", "dev", "test")}
    for s in out:
        prep(read_voxceleb1, root, s, out[s])
    spk = {s: read_table(f"{out[s]}/utt2spk") for s in out}
    assert set(spk["test"].values()) == {"id10270", "id10271"} and len(spk["test"]) == 6
    assert set(spk["train"].values()) == set(spk["dev"].values()) == {"id10001", "id10002"}
    assert len(spk["train"]) == 2 and len(spk["dev"]) == 4  # the last 2 of each training speaker's 3
    assert set(spk["test"].values()).isdisjoint(spk["train"].values())
    assert read_table(f"{out['test']}/utt2label")["id10270-vid0-00001"] == "id10270"
    assert set(read_table(f"{out['train']}/text").values()) == {"<no_transcript>"}
    counts = voxceleb_trials(root, out["test"])
    assert counts == {"kept": 3, "missing": 1}
    assert read_trials(f"{out['test']}/trials") == [
        (1, "id10270-vid0-00001", "id10270-vid1-00002"),
        (0, "id10270-vid0-00001", "id10271-vid0-00003"),
        (1, "id10271-vid0-00001", "id10271-vid0-00003"),
    ]
    os.remove(os.path.join(root, "veri_test2.txt"))
    with pytest.raises(FileNotFoundError, match="veri_test2.txt"):
        list(read_voxceleb1(root, "train"))


# ---- Speech Commands v2 -----------------------------------------------------------------------
def make_speech_commands(root):
    files = [
        f"{w}/{h}_nohash_{n}.wav"
        for w in ("yes", "no", "bed")
        for h in ("aaaa1111", "bbbb2222", "cccc3333")
        for n in (0, 1)
    ]
    for i, rel in enumerate(files):
        wav(os.path.join(root, rel), seconds=1.0, seed=i)
    wav(os.path.join(root, "_background_noise_", "white_noise.wav"), seconds=12.3, seed=99)
    with open(os.path.join(root, "validation_list.txt"), "w") as fh:
        fh.write("yes/bbbb2222_nohash_0.wav\nno/bbbb2222_nohash_0.wav\nbed/bbbb2222_nohash_0.wav\n")
    with open(os.path.join(root, "testing_list.txt"), "w") as fh:
        fh.write(
            "yes/cccc3333_nohash_0.wav\nyes/cccc3333_nohash_1.wav\nno/cccc3333_nohash_0.wav\nbed/cccc3333_nohash_1.wav\n"
        )
    return files


def test_speech_commands_splits_labels_and_silence(tmp_path):
    root = str(tmp_path / "sc")
    files = make_speech_commands(root)
    out = {s: str(tmp_path / s) for s in ("train", "dev", "test")}
    for s in out:
        prep(read_speech_commands, root, s, out[s], out_dir=out[s])
    wavs = {s: read_table(f"{out[s]}/wav.scp") for s in out}
    test_files = {p for p in wavs["test"].values() if "silence_wavs" not in p}
    assert {os.path.relpath(p, root) for p in test_files} == {
        "yes/cccc3333_nohash_0.wav",
        "yes/cccc3333_nohash_1.wav",
        "no/cccc3333_nohash_0.wav",
        "bed/cccc3333_nohash_1.wav",
    }
    n_words = {s: sum("silence_wavs" not in p for p in wavs[s].values()) for s in out}
    assert n_words == {"train": len(files) - 3 - 4, "dev": 3, "test": 4}
    labels = read_table(f"{out['train']}/utt2label")
    assert labels["aaaa1111-yes-0"] == "yes" and labels["aaaa1111-bed-1"] == "_unknown_"
    assert read_table(f"{out['train']}/text")["aaaa1111-bed-1"] == "bed"
    # 12 one-second noise slices: k % 10 == 8 -> dev, 9 -> test, the rest -> train;
    # each split takes as many as its mean keyword class
    # (train: yes 3, no 4 -> 4; dev 1; test: (2 + 1) / 2 -> 2, capped at 1)
    sil = {s: sorted(u for u, lab in read_table(f"{out[s]}/utt2label").items() if lab == "_silence_") for s in out}
    assert (len(sil["train"]), len(sil["dev"]), len(sil["test"])) == (4, 1, 1)
    assert sil["dev"] == ["silence-white_noise-0008"] and sil["test"] == ["silence-white_noise-0009"]
    assert set(sil["train"]).isdisjoint(sil["dev"] + sil["test"])
    info = sf.info(wavs["train"][sil["train"][0]])
    assert info.samplerate == SR and info.frames == SR
    assert read_table(f"{out['train']}/text")[sil["train"][0]] == "<silence>"
    with pytest.raises(FileNotFoundError, match="testing_list.txt"):
        os.remove(os.path.join(root, "testing_list.txt"))
        list(read_speech_commands(root, "train", out_dir=out["train"]))


def test_prep_cli_and_corpus_recipes(tmp_path):
    root = str(tmp_path / "vox")
    make_voxceleb(root)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sitok.cli",
            "prep",
            "--corpus",
            "voxceleb1",
            "--root",
            root,
            "--split",
            "test",
            "--out",
            str(tmp_path / "sv_test"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert len(read_trials(str(tmp_path / "sv_test" / "trials"))) == 3 and "1 of 4 trials left out" in r.stderr
    for corpus in ("iemocap", "voxceleb1", "speech_commands"):  # the thin corpus recipes parse
        for f in ("run.sh", "local/data.sh", "local/corpus.sh"):
            path = os.path.join(ROOT, "egs", corpus, "sitok", f)
            assert os.access(path, os.X_OK), path
            assert subprocess.run(["bash", "-n", path]).returncode == 0, path
