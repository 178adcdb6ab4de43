"""The recipe shells without running a stage's work: thin corpus run.sh files over one template,
corpus paths from egs/db.sh (environment, then --db_root), drivers sharing the template's helpers,
and stage 14 refusing an empty experiment directory with one clear line."""

import glob
import os
import re
import subprocess
import sys

from conftest import ROOT

EGS = os.path.join(ROOT, "egs")
SCRIPTS = sorted(
    glob.glob(os.path.join(EGS, "*", "sitok", "*.sh"))
    + glob.glob(os.path.join(EGS, "*", "sitok", "local", "*.sh"))
    + [os.path.join(EGS, "db.sh"), os.path.join(EGS, "TEMPLATE", "sitok.sh"), os.path.join(EGS, "TEMPLATE", "lib.sh")]
)


def test_every_recipe_script_parses():
    for path in SCRIPTS:
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, (path, r.stderr)


def test_corpus_run_sh_only_sets_variables_and_calls_the_template():
    runs = sorted(glob.glob(os.path.join(EGS, "*", "sitok", "run.sh")))
    assert len(runs) == 6
    for path in runs:
        text = open(path).read()
        assert ". ../../db.sh" in text and "../../TEMPLATE/sitok.sh" in text, path
        assert text.rstrip().endswith('"$@"'), path  # every option goes to the template's parser
        assert not re.search(r"^\s*(while|case)\b", text, re.M), path  # no option loop of its own


def test_drivers_share_the_template_helpers():
    for name in ("run_ablations.sh", "run_shortcut.sh"):
        text = open(os.path.join(EGS, "mini", "sitok", name)).read()
        assert ". ../../TEMPLATE/lib.sh" in text and "sitok.stamp" not in text, name


def stage0(env=None, *args):
    run = os.path.join(EGS, "librispeech", "sitok", "run.sh")
    cmd = ["bash", run, "--stage", "0", "--stop_stage", "0", "--python", sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_corpus_path_from_db_sh_environment_and_db_root(tmp_path):
    env = {"LIBRISPEECH": str(tmp_path / "from_env")}
    r = stage0(env)
    assert r.returncode != 0 and f"{tmp_path}/from_env/LibriSpeech not found" in r.stderr
    r = stage0(env, "--db_root", str(tmp_path / "from_cli"))  # the command line wins
    assert r.returncode != 0 and f"{tmp_path}/from_cli/LibriSpeech not found" in r.stderr
    (tmp_path / "from_cli" / "LibriSpeech" / "dev-clean").mkdir(parents=True)
    r = stage0(env, "--db_root", str(tmp_path / "from_cli"))
    assert r.returncode == 0 and "found 1 LibriSpeech split(s)" in r.stdout


def test_stage_14_on_an_empty_exp_dir_fails_with_one_clear_line(tmp_path):
    run = os.path.join(EGS, "mini", "sitok", "run.sh")
    exp = tmp_path / "exp"
    r = subprocess.run(
        ["bash", run, "--stage", "14", "--stop_stage", "14", "--expdir", str(exp), "--python", sys.executable],
        capture_output=True,
        text=True,
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Traceback" not in out
    assert "ERROR: Stage 14: nothing to report" in out and f"{exp}/probes_mini.json (stage 13)" in out
    assert not exp.exists()
