"""CLI behaviour on good and bad input: one-line errors, non-zero exits, no partial outputs."""

from __future__ import annotations

import pytest
import torch

from builders import random_classifier, random_ebm
from ebmctl.evaluate.plots import save_image01
from ebmctl.testing import run_cli


@pytest.fixture()
def tiny_ebm(tmp_path):
    return random_ebm(tmp_path / "ebm.safetensors")


@pytest.fixture()
def png(tmp_path):
    path = tmp_path / "digit.png"
    save_image01(torch.rand(1, 8, 8), path)
    return path


def assert_clean_error(result, needle: str):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert needle.lower() in lines[0].lower(), lines[0]


def test_purify_writes_png(tmp_path, tiny_ebm, png):
    r = run_cli(["purify", str(png), "--ebm", str(tiny_ebm), "-k", "5"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "digit.purified.png"
    assert out.exists()
    from PIL import Image

    assert Image.open(out).size == (8, 8)


def test_purify_replicates_and_larger_image(tmp_path, tiny_ebm):
    img = tmp_path / "big.png"
    save_image01(torch.rand(3, 20, 12), img)  # RGB, non-square: converted to gray with a notice
    r = run_cli(["purify", str(img), "--ebm", str(tiny_ebm), "-k", "2", "-H", "3",
                 "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "big.purified-000.png", "big.purified-001.png", "big.purified-002.png"]
    assert "converted" in r.stderr


def test_purify_missing_image(tmp_path, tiny_ebm):
    r = run_cli(["purify", str(tmp_path / "nope.png"), "--ebm", str(tiny_ebm)])
    assert_clean_error(r, "not found")


def test_purify_corrupt_png_leaves_no_output(tmp_path, tiny_ebm, png):
    bad = tmp_path / "bad.png"
    bad.write_bytes(png.read_bytes()[:40])
    r = run_cli(["purify", str(png), str(bad), "--ebm", str(tiny_ebm), "-k", "1"])
    assert_clean_error(r, "bad.png")
    assert not (tmp_path / "digit.purified.png").exists()
    assert not (tmp_path / "bad.purified.png").exists()
    notimg = tmp_path / "text.png"
    notimg.write_text("hello, I am not a PNG")
    assert_clean_error(run_cli(["purify", str(notimg), "--ebm", str(tiny_ebm)]), "text.png")


def test_purify_corrupt_safetensors(tmp_path, png):
    bad = tmp_path / "ebm.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert_clean_error(run_cli(["purify", str(png), "--ebm", str(bad)]), "safetensors")
    assert not (tmp_path / "digit.purified.png").exists()


def test_purify_wrong_kind_artifact(tmp_path, png):
    clf = random_classifier(tmp_path / "clf.safetensors")
    assert_clean_error(run_cli(["purify", str(png), "--ebm", str(clf)]), "expected 'ebm'")


def test_purify_without_ebm_explains(tmp_path, png):
    from ebmctl import shipped

    if shipped.DEFAULT_EBM.exists():
        pytest.skip("a default EBM is shipped in this build")
    assert_clean_error(run_cli(["purify", str(png)]), "train")


def test_unknown_profile_key_and_task(tmp_path, tiny_ebm, png):
    r = run_cli(["purify", str(png), "--ebm", str(tiny_ebm), "--set", "defense.stepz=3"])
    assert_clean_error(r, "defense.steps")
    r = run_cli(["train", "model", "--profile", "quick", "--set", "task.name=clasification",
                 "--out", str(tmp_path / "m.safetensors")])
    assert_clean_error(r, "did you mean 'classification'")
    assert not (tmp_path / "m.safetensors").exists()
    r = run_cli(["profiles", "show", "no-such-profile"])
    assert_clean_error(r, "unknown profile")


def test_plugins_and_profiles_listing():
    r = run_cli(["plugins", "--json"])
    assert r.exit_code == 0
    assert '"classification"' in r.stdout and "digits" in r.stdout
    r = run_cli(["profiles"])
    assert r.exit_code == 0 and "quick" in r.stdout and "thesis-cifar10" in r.stdout
    r = run_cli(["profiles", "show", "quick", "--set", "attack.eps=8/255"])
    assert r.exit_code == 0 and "eps = 0.0313" in r.stdout


def test_inspect_shows_header(tiny_ebm):
    r = run_cli(["inspect", str(tiny_ebm)])
    assert r.exit_code == 0
    assert "ebmctl.kind: ebm" in r.stdout and "lightweight" in r.stdout
