"""The attack report, key for key and value for value, against a golden copy, on any x86 CPU.

``tests/data/report-golden.json`` holds what the evaluation code reports on tiny runs of the
digits fixtures: the JSON ``ebmctl attack`` writes (with the fixer run, resubmissions, sanity
checks, task extras and the adversarial export), the table and notes it prints, what the task's
``evaluation_extras`` hook receives, a single-seed diagnostic run, a sweep and
``ebmctl.evaluate``. Timing, memory readings, the environment and temporary paths are left out;
everything else must match.

The same answers on every machine, never skipped for the CPU's sake:

* the models are stored weights (``tests/data/golden-*.safetensors``: a digits CNN after 60
  Adam steps, an untrained EBM and fixer), not trained on the fly, since training with other
  CPU kernels ends at other weights; the profile is a frozen copy of ``quick``
  (``tests/data/golden-profile.toml``), so retuning the quickstart recipe leaves it alone;
* the whole pipeline runs in float64 (``run.dtype = float64``; the library calls get a
  ``.double()`` model), where CPU kernels agree to ~1e-12, so every decision (argmax, the sign
  of a gradient, broken or robust) comes out the same wherever it runs;
* tensors are stored as values (10 significant digits) and every float is compared with
  relative and absolute tolerance :data:`TOLERANCE` (1e-6: far above float64 kernel noise, far
  below any real change of a report); integers, strings, booleans, dtypes, shapes and the
  structure exactly.

CI runs it a second time under ``ATEN_CPU_CAPABILITY=avx2`` (another kernel set than the
machine's own on a CPU with AVX-512). Regenerate only for an intended change of the report:
``EBMCTL_WRITE_GOLDEN=1 pytest tests/test_report_golden.py`` (and say why in the commit). The
stored models are rewritten only with ``EBMCTL_WRITE_GOLDEN_MODELS=1`` (then regenerate the
report too: they are what it was computed from).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from ebmctl.context import evaluation_settings

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "report-golden.json"
#: the stored models the golden copy was computed from (see :func:`_write_models`)
MODELS = {"clf": DATA / "golden-classifier.safetensors", "ebm": DATA / "golden-ebm.safetensors",
          "fixer": DATA / "golden-fixer.safetensors"}
#: the profile under TINY: a frozen copy of profiles/quick.toml, so retuning the quickstart
#: recipe does not change the golden report (the code and its schema still do)
PROFILE = str(DATA / "golden-profile.toml")
CPU = torch.device("cpu")
TINY = ["attack.n_images=8", "attack.batch_size=4", "attack.steps=2", "attack.eot_reps=2",
        "attack.restarts=2", "defense.steps=2", "defense.eot_reps=2", "attack.seeds=0,1",
        "attack.sanity_images=4", "run.device=cpu", "langevin.precision=fp32",
        "run.dtype=float64", "attack.eps=0.1", "attack.step_size=0.03"]
#: readings that legitimately differ between runs
VOLATILE = ("seconds", "chunks_reused", "environment", "memory", "total_seconds")
#: relative and absolute tolerance of every float: float64 results of different CPU kernels
#: differ by ~1e-12; a changed report moves some value by far more
TOLERANCE = 1e-6
#: significant digits a stored tensor value keeps (its rounding, ~1e-10, is far below TOLERANCE)
DIGITS = 10


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _tensor(t: torch.Tensor) -> dict:
    t = t.detach().cpu().contiguous()
    values = t.flatten().tolist()
    if t.is_floating_point():
        values = [float(f"{v:.{DIGITS}g}") for v in values]
    return {"tensor": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "values": values}


def _plain(obj, paths: dict[str, str]):
    """JSON-ready ``obj`` with volatile readings dropped and temporary paths named."""
    if hasattr(obj, "to_json"):
        obj = obj.to_json()
    if isinstance(obj, dict):
        return {k: _plain(v, paths) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, paths) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _tensor(obj)
    if isinstance(obj, str):
        for real, name in paths.items():
            obj = obj.replace(real, name)
    if isinstance(obj, Path):
        return _plain(str(obj), paths)
    return obj


def _dumps(obj) -> str:
    """``obj`` as indented JSON with each tensor's values on one line (a readable file)."""
    lines: dict[str, str] = {}

    def mark(o):
        if isinstance(o, dict) and "tensor" in o and "values" in o:
            name = f"@values{len(lines)}@"
            lines[name] = json.dumps(o["values"])
            return {**o, "values": name}
        if isinstance(o, dict):
            return {k: mark(v) for k, v in o.items()}
        if isinstance(o, list):
            return [mark(v) for v in o]
        return o

    text = json.dumps(mark(obj), indent=1)
    for name, values in lines.items():
        text = text.replace(f'"{name}"', values, 1)
    return text + "\n"


def differences(got, want, where: str = "") -> list[str]:
    """Where ``got`` differs from ``want`` (both JSON-like): floats beyond :data:`TOLERANCE`
    (relative or absolute), anything else (ints, strings, booleans, None, keys, lengths, the
    type of each value) at all."""
    if type(got) is not type(want):
        return [f"{where}: {got!r} ({type(got).__name__}) != {want!r} ({type(want).__name__})"]
    if isinstance(want, float):
        same = (math.isnan(got) and math.isnan(want)) or math.isclose(
            got, want, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        return [] if same else [f"{where}: {got!r} != {want!r} (tolerance {TOLERANCE})"]
    if isinstance(want, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} only on one side"]
        return [d for k in want for d in differences(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list):
        if len(got) != len(want):
            return [f"{where}: length {len(got)} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want))
                for d in differences(g, w, f"{where}[{i}]")]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def _write_models() -> None:
    """Write :data:`MODELS` from the recipes the golden copy was first captured with (run once;
    the weights then stay fixed, whatever CPU later reads them)."""
    import torch.nn.functional as F
    from ebmctl_classification.models import SmallCNN

    from ebmctl.artifacts import model_tensors, save_artifact
    from ebmctl.context import load_dataset
    from ebmctl.nn.ebm import LightweightEBM
    from ebmctl.plugins import get_registries
    from ebmctl.profiles import resolve

    digits = {"range": "[-1,1]", "image_size": 8, "channels": 1}
    clf_args = {"in_channels": 1, "num_classes": 10, "width": 8, "image_size": 8}
    train = load_dataset(resolve(PROFILE, ["run.device=cpu"])).split("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a small digits CNN after 60 Adam steps (~74% test accuracy)
        net = SmallCNN(1, 10, 8, 8)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            i = torch.randint(0, len(train.x), (64,), generator=g)
            opt.zero_grad()
            F.cross_entropy(net(train.x[i] * 2 - 1), train.y[i]).backward()
            opt.step()
        torch.manual_seed(0)  # the untrained EBM of conftest's digits_artifacts
        SmallCNN(1, 10, 8, 8)
        ebm = LightweightEBM(1, 8, 8)
        torch.manual_seed(1)
        fixer_args = {"channels": 1, "width": 8, "n_blocks": 1}
        fixer = get_registries().models.get("fixer-resnet").build(**fixer_args)
    save_artifact(MODELS["clf"], model_tensors(net.eval()), kind="classifier", arch="small-cnn",
                  task="classification", arch_args=clf_args, data=digits)
    save_artifact(MODELS["ebm"], model_tensors(ebm), kind="ebm", arch="lightweight",
                  arch_args={"in_channels": 1, "image_size": 8, "channels": 8}, data=digits,
                  extra={"tau": 0.01, "temperature": 5e-5})
    save_artifact(MODELS["fixer"], model_tensors(fixer), kind="fixer", arch="fixer-resnet",
                  arch_args=fixer_args, data=digits)


@pytest.fixture(scope="module")
def golden_models(tmp_path_factory) -> dict[str, Path]:
    """Copies of the stored models, the classifier and the EBM each in a folder of its own
    (named ``<clf>`` and ``<ebm>`` in the report's paths)."""
    if os.environ.get("EBMCTL_WRITE_GOLDEN_MODELS"):
        _write_models()
    return {name: Path(shutil.copy(MODELS[name], tmp_path_factory.mktemp(f"golden-{name}")
                                   / f"{name}.safetensors")) for name in ("clf", "ebm")}


@pytest.fixture
def fixer_artifact(tmp_path) -> Path:
    return Path(shutil.copy(MODELS["fixer"], tmp_path / "fixer.safetensors"))


def _attack_cli(clf, ebm, fixer, out: Path, monkeypatch) -> dict:
    """``ebmctl attack`` with every part of the report switched on; what it wrote and printed,
    and what the task's evaluation_extras hook was handed."""
    from ebmctl_classification.task import ClassificationTask

    from ebmctl.testing import run_cli

    seen = {}

    def extras(self, x, y, runs, out_path, key):
        seen.update({label: {"x_adv": r["x_adv"], "x_advs": r["x_advs"], "result": r["result"],
                             "defense_stochastic": r["defense"].stochastic}
                     for label, r in runs.items()})
        seen["key"] = list(key)
        return {"results": {"defended": {"task_figure": 0.25}},
                "table": {"title": "task table", "columns": ["a"], "rows": [["1"]]},
                "files": []}

    monkeypatch.setattr(ClassificationTask, "evaluation_extras", extras, raising=False)
    sets = TINY + ["attack.methods=bpda-eot,transfer", "evaluate.resubmissions=2",
                   "evaluate.eot_reps=1,2"]
    args = ["attack", "-m", clf, "--ebm", ebm, "--fixer", fixer, "-o", out,
            "--save-adversarials", "--profile", PROFILE]
    res = run_cli(args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.stderr
    from safetensors.torch import load_file

    adv = load_file(str(out.with_suffix(".adv.safetensors")))
    return {"json": json.loads(out.read_text()), "stdout": res.stdout.splitlines(),
            "extras_hook": seen, "adversarials": {k: v for k, v in sorted(adv.items())}}


def _capture(clf, ebm, fixer, tmp_path: Path, monkeypatch) -> dict:
    """Every report the golden copy holds, built by the code under test."""
    import ebmctl
    from ebmctl.evaluate.report import format_table, report_notes, run_evaluation, run_sweep
    from ebmctl.profiles import resolve

    paths = {str(tmp_path): "<tmp>", str(Path(clf).parent): "<clf>",
             str(Path(ebm).parent): "<ebm>"}
    got = {"attack": _attack_cli(clf, ebm, fixer, tmp_path / "a.json", monkeypatch)}
    monkeypatch.undo()
    # one seed, defended only, every attack a diagnostic, transfer not among the attacks run
    cfg = resolve(PROFILE, TINY + ["attack.seeds=0", "attack.common_noise_defender=true"])
    rep = run_evaluation(evaluation_settings(cfg), clf, ebm, CPU, tmp_path / "b.json",
                         undefended=False, method="bpda-eot")
    got["diagnostic"] = {"returned": rep, "json": json.loads((tmp_path / "b.json").read_text()),
                         "table": format_table(rep), "notes": report_notes(rep)}
    # the fixer run at a smaller radius, where its transfer attack beats the white-box one:
    # the row suspects gradient masking and its transfer sanity check fails
    cfg = resolve(PROFILE, TINY + ["attack.eps=0.04", "attack.step_size=0.02"])
    rep = run_evaluation(evaluation_settings(cfg), clf, ebm, CPU, tmp_path / "c.json",
                         undefended=False, method="bpda-eot,transfer", fixer_path=fixer)
    got["masking"] = {"returned": rep, "json": json.loads((tmp_path / "c.json").read_text()),
                      "table": format_table(rep), "notes": report_notes(rep)}
    cfg = resolve(PROFILE, TINY + ["attack.sanity=false", "attack.seeds=0"])
    sweep = run_sweep(evaluation_settings(cfg), clf, ebm, CPU, tmp_path / "s.json",
                      "defense.steps", [1, 2])
    got["sweep"] = {"returned": sweep, "json": json.loads((tmp_path / "s.json").read_text())}
    from ebmctl.models import TaskModel

    # a classifier taking [0,1] images, converted as a library user would: the library then
    # runs in float64 and converts the EBM defend() is given
    model = TaskModel.load(clf, CPU).double()
    x, y = _digits(8)
    got["library_undefended"] = ebmctl.evaluate(model, x, y, attacks=["pgd", "fgsm"],
                                                eps=0.06, steps=2, step_size=0.02,
                                                batch_size=4, seeds=[0, 1])
    defended = ebmctl.defend(model, ebmctl.load_ebm(ebm), steps=2, reps=2)
    got["library_defended"] = ebmctl.evaluate(defended, x, y, attacks=["bpda-eot", "transfer"],
                                              eps=0.06, steps=2, step_size=0.02, eot_reps=2,
                                              batch_size=4)
    for k in ("library_undefended", "library_defended"):
        got[k] = {"returned": got[k], "table": format_table(got[k]),
                  "notes": report_notes(got[k])}
    return _plain(got, paths)


def _digits(n: int):
    from ebmctl.context import load_dataset
    from ebmctl.profiles import resolve

    data = load_dataset(resolve(PROFILE, ["run.device=cpu"])).split("test")
    return data.x[:n].float(), data.y[:n]


def _row_and_check_agree(got: dict) -> None:
    """Where the transfer attack ran in the suite, the transfer sanity check and the row's
    gradient-masking verdict compare the same two figures, so they never disagree."""
    for part in got.values():
        rep = part.get("json") if isinstance(part, dict) else None
        for check in (rep or {}).get("sanity", {}).get("checks", []):
            label = check["check"].split(":")[0]
            verdict = rep["results"].get(label, {}).get("gradient_masking") or {}
            if "transfer" in check and verdict.get("attack") == "transfer":
                assert check["pass"] == (not verdict["suspected"]), (label, check, verdict)
                assert check["white_box"] == verdict["white_box"], (label, check, verdict)


def test_differences_compares_floats_with_the_tolerance_and_the_rest_exactly():
    want = {"acc": 0.375, "n": 8, "ok": [True, False], "name": "pgd", "none": None,
            "x": {"tensor": [2], "dtype": "float64", "values": [0.1, 0.9]}}
    near = json.loads(json.dumps(want))
    near["acc"], near["x"]["values"][1] = 0.375 + 1e-9, 0.9 - 1e-12
    assert differences(near, want) == []
    for change in (("acc", 0.5), ("n", 9), ("n", 8.0), ("ok", [True, True]), ("ok", [1, 0]),
                   ("name", "fgsm"), ("none", 0), ("x", {**want["x"], "dtype": "float32"}),
                   ("x", {**want["x"], "values": [0.1, 0.9 + 1e-5]}), ("extra", 1)):
        other = {**want, change[0]: change[1]}
        assert differences(other, want), change


def test_the_report_matches_the_golden_copy(golden_models, fixer_artifact, tmp_path,
                                            monkeypatch):
    writing = bool(os.environ.get("EBMCTL_WRITE_GOLDEN"))
    got = _capture(golden_models["clf"], golden_models["ebm"], fixer_artifact, tmp_path,
                   monkeypatch)
    # round-trip through JSON so tuples and lists compare alike
    got = json.loads(_dumps(got))
    if writing:
        GOLDEN.write_text(_dumps(got))
    _row_and_check_agree(got)
    want = json.loads(GOLDEN.read_text())
    assert set(got) == set(want)
    for part in want:
        found = differences(got[part], want[part], part)
        assert not found, f"{len(found)} differences, the first: " + "; ".join(found[:5])
