"""Data prep on tiny directories built in the real LibriSpeech / LibriTTS layouts."""

import json
import os

import pytest

from sitok.data.kaldi import DataDir, combine_data_dirs, read_table, validate_data_dir
from sitok.data.prep import make_data_dir, read_emilia, read_librilight, read_librispeech, read_libritts

from conftest import run_cli, tone, write


def build_librispeech(root):
    base = os.path.join(root, "LibriSpeech", "dev-clean")
    lines = {
        ("84", "121123"): [("0000", "GO DO YOU HEAR"), ("0001", "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED")],
        ("1272", "128104"): [("0000", "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES"), ("0001", "...")],
    }
    for (spk, ch), utts in lines.items():
        d = os.path.join(base, spk, ch)
        with open(os.path.join(_mk(d), f"{spk}-{ch}.trans.txt"), "w") as fh:
            for u, text in utts:
                fh.write(f"{spk}-{ch}-{u} {text}\n")
                write(os.path.join(d, f"{spk}-{ch}-{u}.flac"), tone(1.2, sr=16000), sr=16000, format="FLAC")
    # a corrupt file: transcript present, audio is garbage
    open(os.path.join(base, "84", "121123", "84-121123-0001.flac"), "wb").write(b"\x00" * 100)
    return base


def build_libritts(root):
    base = os.path.join(root, "LibriTTS", "test-clean")
    for utt, text in [
        ("1089_134686_000001_000001", "He hoped there would be stew for dinner."),
        ("1089_134686_000002_000000", "Stuff it into you, his belly counselled him."),
        ("121_121726_000004_000003", None),
    ]:
        spk, ch = utt.split("_")[:2]
        d = _mk(os.path.join(base, spk, ch))
        write(os.path.join(d, f"{utt}.wav"), tone(1.0), sr=24000)
        if text is not None:
            open(os.path.join(d, f"{utt}.normalized.txt"), "w").write(text)
    return base


def _mk(d):
    os.makedirs(d, exist_ok=True)
    return d


def test_librispeech_prep(tmp_path):
    build_librispeech(str(tmp_path / "db"))
    out = str(tmp_path / "data" / "dev_clean")
    dd, skips = make_data_dir(read_librispeech(str(tmp_path / "db"), "dev-clean"), out)
    assert dd.utts == ["1272-128104-0000", "84-121123-0000"]  # C byte order
    assert {(s.utt, s.reason) for s in skips} == {("1272-128104-0001", "empty-text"), ("84-121123-0001", "unreadable")}
    assert read_table(f"{out}/text")["84-121123-0000"] == "go do you hear"
    assert read_table(f"{out}/utt2spk") == {"1272-128104-0000": "1272", "84-121123-0000": "84"}
    assert float(read_table(f"{out}/utt2dur")["84-121123-0000"]) == pytest.approx(1.2)
    assert validate_data_dir(out, check_files=True) == []
    skipped = open(f"{out}/skipped.tsv").read()
    assert "84-121123-0001.flac" in skipped and "unreadable" in skipped
    header = open(f"{out}/manifest.csv").readline().strip()
    assert header == "ID,duration,wav,spk_id,wrd"


def test_libritts_prep_via_cli(tmp_path):
    build_libritts(str(tmp_path / "db"))
    out = str(tmp_path / "data" / "test_clean")
    r = run_cli("prep", "--corpus", "libritts", "--root", str(tmp_path / "db"), "--split", "test-clean", "--out", out)
    assert "1 skipped (no-transcript: 1)" in r.stderr
    text = read_table(f"{out}/text")
    assert text == {
        "1089_134686_000001_000001": "he hoped there would be stew for dinner",
        "1089_134686_000002_000000": "stuff it into you his belly counselled him",
    }
    assert read_table(f"{out}/spk2utt") == {"1089": "1089_134686_000001_000001 1089_134686_000002_000000"}
    assert validate_data_dir(out) == []


def test_missing_split_names_the_folder(tmp_path):
    r = run_cli(
        "prep",
        "--corpus",
        "librispeech",
        "--root",
        str(tmp_path),
        "--split",
        "train-clean-100",
        "--out",
        str(tmp_path / "d"),
        check=False,
    )
    assert r.returncode == 1 and "train-clean-100" in r.stderr and str(tmp_path) in r.stderr


def test_combine_and_validate(tmp_path):
    build_librispeech(str(tmp_path / "db"))
    build_libritts(str(tmp_path / "db"))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_data_dir(read_librispeech(str(tmp_path / "db"), "dev-clean"), a)
    make_data_dir(read_libritts(str(tmp_path / "db"), "test-clean"), b)
    dd = combine_data_dirs(str(tmp_path / "all"), [a, b])
    assert len(dd) == 4 and validate_data_dir(str(tmp_path / "all")) == []
    with pytest.raises(ValueError, match="both"):
        combine_data_dirs(str(tmp_path / "dup"), [a, a])


def test_validate_finds_problems(tmp_path):
    build_libritts(str(tmp_path / "db"))
    d = str(tmp_path / "d")
    make_data_dir(read_libritts(str(tmp_path / "db"), "test-clean"), d)
    with open(f"{d}/text", "w") as fh:  # drop one transcript, add a stranger, break the order
        fh.write("zzz hello\n1089_134686_000001_000001 hi\n")
    problems = "\n".join(validate_data_dir(d))
    assert "lack an entry" in problems and "not in wav.scp" in problems and "not sorted" in problems
    dd = DataDir.load(d)
    assert len(dd) == 2


def test_librispeech_recipe_stages_0_to_3(tmp_path):
    """egs/librispeech/sitok/run.sh on a tiny directory in the real layout (train, dev, tests)."""
    import subprocess
    import sys

    from conftest import ROOT

    db = tmp_path / "db"
    rng_words = "the cat sat on a mat while a dog ran to the park and back again".split()
    for split, spks in [
        ("train-clean-100", ("19", "26")),
        ("dev-clean", ("84",)),
        ("test-clean", ("1089",)),
        ("test-other", ("1688",)),
    ]:
        for spk in spks:
            d = _mk(str(db / "LibriSpeech" / split / spk / "100"))
            with open(f"{d}/{spk}-100.trans.txt", "w") as fh:
                for u in range(3):
                    words = " ".join(rng_words[(u + int(spk)) % 5 :][:8]).upper()
                    fh.write(f"{spk}-100-{u:04d} {words}\n")
                    write(
                        f"{d}/{spk}-100-{u:04d}.flac", tone(2.0, sr=16000, freq=200 + 30 * u), sr=16000, format="FLAC"
                    )
    out = tmp_path / "out"
    run = os.path.join(ROOT, "egs", "librispeech", "sitok", "run.sh")
    r = subprocess.run(
        [
            "bash",
            run,
            "--db_root",
            str(db),
            "--stage",
            "0",
            "--stop_stage",
            "3",
            "--python",
            sys.executable,
            "--datadir",
            f"{out}/data",
            "--dumpdir",
            f"{out}/dump",
            "--vocab_size",
            "20",
            "--judge_check_utts",
            "0",
            "--progress",
            "false",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for s, n in [("train", 6), ("dev_clean", 3), ("test_clean", 3), ("test_other", 3)]:
        assert validate_data_dir(f"{out}/dump/{s}", need=("utt2dur", "feats.scp")) == []
        assert len(read_table(f"{out}/dump/{s}/feats.scp")) == n
    assert read_table(f"{out}/data/train/utt2spk")["19-100-0000"] == "19"
    assert os.path.exists(f"{out}/data/lang_unigram20/sp.model")
    r = subprocess.run(
        ["bash", run, "--db_root", str(tmp_path / "nowhere"), "--stage", "0", "--stop_stage", "0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "nowhere/LibriSpeech not found" in r.stderr


def test_librilight_reader_ids_speakers_and_no_transcripts(tmp_path):
    """Libri-Light: <spk>/<book>/<name>.flac; ids start with the speaker, odd characters of book
    folders become '_', and every utterance carries the no-transcript marker."""
    base = tmp_path / "db" / "librilight" / "small"
    write(str(base / "100" / "sea fairies_0812_librivox" / "seafairies_01.flac"), tone(1.0, sr=16000), sr=16000)
    write(str(base / "203" / "book.b" / "ch_02.flac"), tone(1.0, sr=16000), sr=16000)
    rows = list(read_librilight(str(tmp_path / "db"), "small"))
    assert [(e.utt, e.speaker, e.text) for e in rows] == [
        ("100-sea_fairies_0812_librivox-seafairies_01", "100", "<no_transcript>"),
        ("203-book_b-ch_02", "203", "<no_transcript>"),
    ]
    with pytest.raises(FileNotFoundError, match="librilight split 'medium' not found"):
        list(read_librilight(str(tmp_path / "db"), "medium"))


def test_emilia_reader_from_jsonl_and_from_sidecars(tmp_path):
    """Emilia: batch *.jsonl rows (wav relative to the folder named after the file) or a .json
    beside each audio file; text and speaker from the metadata, speaker from the id otherwise."""
    en = tmp_path / "db" / "Emilia" / "EN"
    rows = [
        {
            "id": "EN_B00000_S00010_W000000",
            "wav": "EN_B00000_S00010_W000000.flac",
            "text": " Hello there. ",
            "speaker": "EN_B00000_S00010",
            "duration": 1.0,
        },
        {"id": "EN_B00000_S00020_W000001", "wav": "EN_B00000_S00020_W000001.flac", "text": "Good morning."},
    ]
    for r in rows:
        write(str(en / "EN-B000000" / r["wav"]), tone(1.0), sr=24000)
    (en / "EN-B000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [(e.utt, e.speaker, e.text, os.path.basename(e.path)) for e in read_emilia(str(tmp_path / "db"), "EN")]
    assert got == [
        ("EN_B00000_S00010_W000000", "EN_B00000_S00010", "Hello there.", "EN_B00000_S00010_W000000.flac"),
        ("EN_B00000_S00020_W000001", "EN_B00000_S00020", "Good morning.", "EN_B00000_S00020_W000001.flac"),
    ]
    out = str(tmp_path / "data" / "emilia")
    dd, skips = make_data_dir(read_emilia(str(tmp_path / "db"), "EN"), out)
    assert dd.utts == [r["id"] for r in rows] and not skips
    assert validate_data_dir(out, check_files=True) == []

    de = tmp_path / "db" / "Emilia" / "DE"  # no manifest: the per-file metadata
    write(str(de / "DE_B00001" / "DE_B00001_S00003_W000007.flac"), tone(1.0), sr=24000)
    (de / "DE_B00001" / "DE_B00001_S00003_W000007.json").write_text(json.dumps({"text": "Guten Tag."}))
    got = [(e.utt, e.speaker, e.text) for e in read_emilia(str(tmp_path / "db"), "DE")]
    assert got == [("DE_B00001_S00003_W000007", "DE_B00001_S00003", "Guten Tag.")]

    (en / "EN-B000000.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="EN-B000000.jsonl:1: not a JSON object with a 'wav' field"):
        list(read_emilia(str(tmp_path / "db"), "EN"))
    (tmp_path / "db" / "Emilia" / "FR").mkdir()
    with pytest.raises(FileNotFoundError, match="not an Emilia split"):
        list(read_emilia(str(tmp_path / "db"), "FR"))
