"""The bad-input matrix: every implemented command × every input category of the corpus.

For each case: a non-zero exit, exactly one ``Error:`` line naming the problem, no traceback,
no "internal error" (that would be a bug that escaped as a generic exception), and no file left
behind anywhere in the test's folders. Convertible images (palette, 16-bit, alpha, CMYK,
bilevel, gray where RGB is expected) are accepted with a notice instead.

Adding a command that has just landed: write one :class:`Cmd` in ``COMMANDS`` (how to call it
with an image / artifacts / profile options, and which inputs it reads). A command that is
still a "not available yet" stub is skipped automatically, and ``test_matrix_size`` reports the
matrix and fails if it has fewer than 40 cases.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from ebmctl.testing import run_cli

_spec = importlib.util.spec_from_file_location(
    "ebmctl_bad_input_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
corpus_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = corpus_mod  # dataclasses look their module up there
_spec.loader.exec_module(corpus_mod)

#: Tiny settings so that a case that wrongly passes validation still finishes in seconds.
TINY = ["run.threads=1", "train.steps=1", "train.mcmc_steps=1", "train.batch_size=4",
        "train.bank_size=8", "model.epochs=1", "defense.steps=1", "defense.eot_reps=1",
        "attack.steps=1", "attack.eot_reps=1", "attack.n_images=2", "attack.sanity=false",
        "ood.n_images=4", "lyapunov.n_images=1", "synth.n=2", "fix.stage1_epochs=0",
        "fix.stage2_epochs=0"]


@dataclass
class Cmd:
    """How to run one command. ``argv(inp, out)`` builds the arguments from the inputs
    ``inp`` (keys: image, ebm, model, fixer, profile = list of profile options) and a fresh
    output folder ``out``. ``reads`` lists the inputs it takes; ``uses`` the profile lookups it
    performs (task, dataset, attack) so that unknown names are expected to fail."""

    name: str
    argv: Callable[[dict, Path], list]
    reads: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    takes_profile: bool = True
    headers_only: bool = False  # reads an artifact's header, whatever its kind or contents
    available: Callable[[], bool] = field(default=lambda: True)


def _sets(inp: dict) -> list:
    return [a for s in TINY for a in ("--set", s)] + list(inp["profile"])


COMMANDS: dict[str, Cmd] = {c.name: c for c in [
    Cmd("purify", lambda i, o: ["purify", i["image"], "--ebm", i["ebm"], "-k", "1",
                                "--out-dir", o, *_sets(i)], reads=("image", "ebm")),
    Cmd("fix apply", lambda i, o: ["fix", "apply", i["image"], "--fixer", i["fixer"],
                                   "--out-dir", o], reads=("image", "fixer"),
        takes_profile=False),
    Cmd("attack", lambda i, o: ["attack", "--model", i["model"], "--ebm", i["ebm"],
                                "--out", o / "report.json", *_sets(i)],
        reads=("model", "ebm"), uses=("task", "dataset", "attack")),
    Cmd("fix train", lambda i, o: ["fix", "train", "--ebm", i["ebm"],
                                   "--out", o / "fixer.safetensors", *_sets(i)],
        reads=("ebm",), uses=("task", "dataset")),
    Cmd("synthesize", lambda i, o: ["synthesize", "--ebm", i["ebm"], "-k", "1",
                                    "--out-dir", o / "synth", *_sets(i)], reads=("ebm",)),
    Cmd("ood", lambda i, o: ["ood", "--ebm", i["ebm"], "--out", o / "ood.json", *_sets(i)],
        reads=("ebm",), uses=("dataset",)),
    Cmd("lyapunov", lambda i, o: ["lyapunov", "--ebm", i["ebm"], "--out", o / "lyap.json",
                                  *_sets(i)], reads=("ebm",), uses=("dataset",)),
    Cmd("inspect", lambda i, o: ["inspect", i["ebm"]], reads=("ebm",), takes_profile=False,
        headers_only=True),
    Cmd("train ebm", lambda i, o: ["train", "ebm", "--out", o / "ebm.safetensors", *_sets(i)],
        uses=("dataset",)),
    Cmd("train classifier", lambda i, o: ["train", "classifier", "--out", o / "clf.safetensors",
                                          *_sets(i)], uses=("task", "dataset")),
    Cmd("train model", lambda i, o: ["train", "model", "--out", o / "m.safetensors",
                                     *_sets(i)], uses=("task", "dataset")),
    Cmd("train hat", lambda i, o: ["train", "hat", "--out", o / "hat.safetensors", *_sets(i)],
        uses=("dataset",)),
    Cmd("train autoencoder", lambda i, o: ["train", "autoencoder", "--out", o / "g.safetensors",
                                           *_sets(i)], uses=("dataset",)),
    Cmd("quickstart", lambda i, o: ["quickstart", "--work-dir", o / "q", *_sets(i)],
        uses=("task", "dataset")),
    Cmd("profiles show", lambda i, o: ["profiles", "show", i["profile"][1]]
        if i["profile"][:1] == ["--profile"] else ["profiles", "show", "quick", *i["profile"]]),
]}


def implemented(cmd: Cmd) -> bool:
    """Whether the command exists in this build."""
    return cmd.available()


# --- the profile faults: as files (from the corpus) and as --set / option variants ---------

SET_FAULTS = {  # name: (options, needle, lookup the command must perform for it to fail)
    "set-unknown-key": (["--set", "defense.stepz=3"], "defense.steps", None),
    "set-wrong-type": (["--set", "train.steps=many"], "train.steps", None),
    "set-negative-steps": (["--set", "attack.steps=-1"], "attack.steps", None),
    "set-eps-above-one": (["--set", "attack.eps=1.5"], "attack.eps", None),
    "set-bad-fraction": (["--set", "attack.eps=8/0"], "attack.eps", None),
    "set-not-key-value": (["--set", "defense.steps"], "key=value", None),
    "unknown-profile": (["--profile", "no-such-profile"], "unknown profile", None),
    "unknown-task": (["--set", "task.name=no-such-task"], "no-such-task", "task"),
    "unknown-dataset": (["--set", "data.dataset=no-such-data"], "no-such-data", "dataset"),
    "unknown-attack": (["--set", "attack.method=no-such-attack"], "no-such-attack", "attack"),
}

#: Artifact faults that any artifact slot must reject; the rest are about an EBM's own
#: contents and apply to EBM slots (another slot rejects an EBM for its kind first).
FILE_LEVEL = {"missing.safetensors", "empty.safetensors", "text.safetensors",
              "bad-header-length.safetensors", "corrupt-header.safetensors",
              "truncated.safetensors", "no-metadata.safetensors", "future-schema.safetensors",
              "folder.safetensors"}
#: Faults in the safetensors framing itself, which even a header reader must reject.
FRAMING = FILE_LEVEL - {"no-metadata.safetensors", "future-schema.safetensors"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return corpus_mod.build_corpus(tmp_path_factory.mktemp("corpus"))


def _case_list():
    """(command, category, entry name) for the whole matrix, built without the corpus files."""
    import tempfile

    cases = []
    names = {"image": [], "artifact": [], "profile": []}
    # Entry names only (paths are resolved against the fixture's corpus at run time).
    with tempfile.TemporaryDirectory() as d:
        names["image"] = [e.name for e in corpus_mod.build_images(Path(d) / "i")
                          if e.expect == "fail"]
        names["profile"] = [e.name for e in corpus_mod.build_profiles(Path(d) / "p")]
    names["artifact"] = sorted(FILE_LEVEL) + [
        "nan-weights.safetensors", "bad-json-metadata.safetensors", "unknown-arch.safetensors",
        "bad-arch-args.safetensors", "shape-mismatch.safetensors",
        "missing-tensors.safetensors", "no-sampler-metadata.safetensors"]
    for cmd in COMMANDS.values():
        if not implemented(cmd):
            continue
        if "image" in cmd.reads:
            cases += [(cmd.name, "image", n) for n in names["image"]]
        for slot in ("ebm", "model", "fixer"):
            if slot not in cmd.reads:
                continue
            if cmd.headers_only:
                cases += [(cmd.name, f"artifact:{slot}", n) for n in sorted(FRAMING)]
                continue
            entries = names["artifact"] if slot == "ebm" else sorted(FILE_LEVEL)
            cases += [(cmd.name, f"artifact:{slot}", n) for n in entries]
            cases.append((cmd.name, f"artifact:{slot}", "wrong-kind"))
        if cmd.takes_profile:
            cases += [(cmd.name, "profile", n) for n in names["profile"]]
            for fault, (_, _, lookup) in SET_FAULTS.items():
                if lookup is None or lookup in cmd.uses:
                    cases.append((cmd.name, "profile", fault))
    return cases


CASES = _case_list()


def _quick_subset(cases):
    """A deterministic sample for the fast suite: every corpus entry once and every
    (command, category) pair once; the whole matrix runs with the slow tests."""
    seen_entries, seen_pairs, keep = set(), set(), []
    for c, k, e in cases:
        pair = (c, k)
        if (k.split(":")[0], e) not in seen_entries or pair not in seen_pairs:
            keep.append((c, k, e))
            seen_entries.add((k.split(":")[0], e))
            seen_pairs.add(pair)
    return keep


QUICK = _quick_subset(CASES)


def _snapshot(*roots: Path) -> set[str]:
    return {str(p) for r in roots if r.exists() for p in r.rglob("*")}


def assert_clean_failure(result, needle: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert "internal error" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert any(n.lower() in lines[0].lower() for n in needle.split("|")), (needle, lines[0])


@pytest.mark.parametrize("command,category,entry", [
    pytest.param(*case, id="|".join(case),
                 marks=() if case in QUICK else pytest.mark.slow) for case in CASES])
def test_bad_input(command, category, entry, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray relative output would land here and be caught
    cmd = COMMANDS[command]
    valid = corpus["valid"]
    good_image = corpus["image"][0].path.parent / "good.png"
    inp = {"image": good_image, "ebm": valid["ebm"], "model": valid["classifier"],
           "fixer": valid["fixer"], "profile": []}
    if category == "image":
        e = next(e for e in corpus["image"] if e.name == entry)
        inp["image"], needle = e.path, e.needle
    elif category.startswith("artifact:"):
        slot = category.split(":")[1]
        if entry == "wrong-kind":
            inp[slot] = valid["classifier"] if slot == "ebm" else valid["ebm"]
            needle = "'classifier' artifact" if slot == "ebm" else "'ebm' artifact"
        else:
            e = next(e for e in corpus["artifact"] if e.name == entry)
            inp[slot], needle = e.path, e.needle
    elif entry in SET_FAULTS:
        opts, needle, _ = SET_FAULTS[entry]
        inp["profile"] = opts
    else:
        e = next(e for e in corpus["profile"] if e.name == entry)
        inp["profile"], needle = ["--profile", e.path], e.needle
    out = tmp_path / "out"
    argv = [str(a) for a in cmd.argv(inp, out)]
    if entry == "unknown-attack" and command == "attack":
        argv += ["--method", "no-such-attack"]
    corpus_root = valid["ebm"].parent.parent
    before = _snapshot(tmp_path, corpus_root)
    result = run_cli(argv)
    assert_clean_failure(result, needle)
    left = _snapshot(tmp_path, corpus_root) - before
    assert not left, f"files left behind: {sorted(left)}"


def test_matrix_size():
    """The matrix holds at least 40 cases; it is printed (pytest -s shows it)."""
    from collections import Counter

    by = Counter((c, k.split(":")[0]) for c, k, _ in CASES)
    cats = ["image", "artifact", "profile"]
    print(f"\n{'command':20s}" + "".join(f"{c:>10s}" for c in cats) + f"{'total':>8s}")
    for name in dict.fromkeys(c for c, _, _ in CASES):
        row = [by[(name, c)] for c in cats]
        print(f"{name:20s}" + "".join(f"{n:>10d}" for n in row) + f"{sum(row):>8d}")
    print(f"{'all':20s}" + "".join(f"{sum(by[(n, c)] for n in COMMANDS):>10d}" for c in cats)
          + f"{len(CASES):>8d}")
    print(f"fast subset: {len(QUICK)} cases (the rest are marked slow)")
    assert len(CASES) >= 40 and len(QUICK) >= 40
    assert len({c for c, _, _ in CASES}) >= 8


# --- convertible images: accepted with a notice, output written ----------------------------

@pytest.mark.parametrize("command", ["purify", "fix apply"])
def test_convertible_images_are_accepted_with_a_notice(command, corpus, tmp_path):
    valid = corpus["valid"]
    converts = [e for e in corpus["image"] if e.expect == "convert"]
    out = tmp_path / "out"
    for e in converts:
        inp = {"image": e.path, "ebm": valid["ebm"], "fixer": valid["fixer"], "profile": []}
        result = run_cli([str(a) for a in COMMANDS[command].argv(inp, out)])
        assert result.exit_code == 0, (e.name, result.output)
        assert "converted" in result.stderr, (e.name, result.stderr)
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == len(converts), written


@pytest.mark.parametrize("command", ["purify", "fix apply"])
def test_adjusted_images_are_read_as_seen_with_a_notice(command, corpus, tmp_path):
    """EXIF-rotated and animated files: turned upright / first frame, said in a note; the
    output has the upright size."""
    from PIL import Image

    valid = corpus["valid"]
    for e in (e for e in corpus["image"] if e.expect == "adjust"):
        out = tmp_path / e.name
        inp = {"image": e.path, "ebm": valid["ebm"], "fixer": valid["fixer"], "profile": []}
        result = run_cli([str(a) for a in COMMANDS[command].argv(inp, out)])
        assert result.exit_code == 0, (e.name, result.output)
        assert e.needle in result.stderr, (e.name, result.stderr)
        (written,) = out.iterdir()
        upright = (6, 8) if e.name == "exif-rotated.jpg" else (8, 8)
        assert Image.open(written).size == upright, e.name


def test_same_stem_inputs_get_their_own_outputs(corpus, tmp_path):
    """Two inputs named alike in one call never write one output twice."""
    valid = corpus["valid"]
    good = corpus["image"][0].path.parent / "good.png"
    other = tmp_path / "elsewhere" / "good.png"
    other.parent.mkdir()
    other.write_bytes(good.read_bytes())
    result = run_cli(["purify", good, other, "--ebm", valid["ebm"], "-k", "1",
                      "--out-dir", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good-2.purified.png", "good.purified.png"]


def test_gray_image_where_rgb_is_expected_gets_a_notice(corpus, tmp_path):
    """The fixer in the corpus is 3-channel; a gray PNG is converted to RGB and says so."""
    valid = corpus["valid"]
    gray = corpus["image"][0].path.parent / "good.png"
    result = run_cli(["fix", "apply", str(gray), "--fixer", str(valid["fixer"]),
                      "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "L image converted to RGB" in result.stderr


# --- plugins: an unknown name, and a plugin that raises at load ------------------------------

def test_unknown_plugin_name_is_an_error(tmp_path):
    result = run_cli(["profiles"], env={"EBMCTL_LOAD_PLUGINS": "no-such-plugin"})
    assert_clean_failure(result, "no-such-plugin")


class _Exploding:
    """A plugin whose registration hook raises, as a broken third-party package would."""

    from ebmctl.hookspecs import hookimpl as _hookimpl

    @_hookimpl
    def ebmctl_register_tasks(self, register):
        raise RuntimeError("boom while registering")


def test_plugin_that_raises_at_load_is_named_and_cli_keeps_working(corpus, tmp_path):
    from ebmctl.testing import plugin_registered

    with plugin_registered(_Exploding(), "exploding-plugin"):
        listing = run_cli(["plugins"])
        assert listing.exit_code == 0, listing.output
        assert "exploding-plugin" in listing.output and "boom" in listing.output
        # Other commands still run; each names the broken plugin once, as a warning.
        result = run_cli(["inspect", str(corpus["valid"]["ebm"])])
        assert result.exit_code == 0, result.output
        warnings = [ln for ln in result.stderr.splitlines() if "exploding-plugin" in ln]
        assert len(warnings) == 1 and warnings[0].startswith("Warning:"), result.stderr
        assert "Traceback" not in result.output


def test_entry_point_plugin_that_fails_to_import_is_named(monkeypatch, corpus):
    """An installed entry point whose module raises on import: listed as failed, CLI works."""
    import importlib.metadata as md

    class FakeEP:
        name, value, group, dist = "broken-ep", "no_such_module_xyz:plugin", "ebmctl", None

        def load(self):
            raise ImportError("No module named 'no_such_module_xyz'")

    real = md.entry_points

    def fake_entry_points(**kw):
        eps = list(real(**kw))
        return eps + [FakeEP()] if kw.get("group") == "ebmctl" else eps

    monkeypatch.setattr(md, "entry_points", fake_entry_points)
    monkeypatch.delenv("EBMCTL_DISABLE_PLUGINS", raising=False)
    result = run_cli(["inspect", str(corpus["valid"]["ebm"])])
    assert result.exit_code == 0, result.output
    assert "broken-ep" in result.stderr and "failed to load" in result.stderr
    assert os.environ.get("EBMCTL_LOAD_PLUGINS") is None
