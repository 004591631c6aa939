"""The attack report, key for key and value for value, against a golden copy.

``tests/data/report-golden.json`` was captured from the evaluation code as it stood before the
reports became typed (issue 21, item 7), on tiny CPU fp32 runs of the digits fixtures: the
JSON ``ebmctl attack`` writes (with the fixer run, resubmissions, sanity checks, task extras and
the adversarial export), the table and notes it prints, what the task's ``evaluation_extras``
hook receives, a single-seed diagnostic run, a sweep and ``ebmctl.evaluate``. Timing, memory
readings, the environment and temporary paths are left out; everything else must match.

The copy holds exact fp32 results (tensor digests, accuracies), which depend on the CPU kernels
torch picks: it is compared only on a machine like the one that captured it (same torch release
and ``torch.backends.cpu.get_cpu_capability()``, recorded under ``_captured_on``); elsewhere the
test is skipped with the reason.

Regenerate only for an intended change of the report: ``EBMCTL_WRITE_GOLDEN=1 pytest
tests/test_report_golden.py`` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "data" / "report-golden.json"
CPU = torch.device("cpu")
TINY = ["attack.n_images=8", "attack.batch_size=4", "attack.steps=2", "attack.eot_reps=2",
        "attack.restarts=2", "defense.steps=2", "defense.eot_reps=2", "attack.seeds=0,1",
        "attack.sanity_images=4", "run.device=cpu", "langevin.precision=fp32",
        "attack.eps=0.1", "attack.step_size=0.03"]
#: readings that legitimately differ between runs
VOLATILE = ("seconds", "chunks_reused", "environment", "memory", "total_seconds")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _plain(obj, paths: dict[str, str]):
    """JSON-ready ``obj`` with volatile readings dropped and temporary paths named."""
    if hasattr(obj, "to_json"):
        obj = obj.to_json()
    if isinstance(obj, dict):
        return {k: _plain(v, paths) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, paths) for v in obj]
    if isinstance(obj, torch.Tensor):
        return {"tensor": list(obj.shape), "sha256": _digest(obj)}
    if isinstance(obj, str):
        for real, name in paths.items():
            obj = obj.replace(real, name)
    if isinstance(obj, Path):
        return _plain(str(obj), paths)
    return obj


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """A small digits CNN after 60 Adam steps (~74% test accuracy), so that attacks break
    some images and not others."""
    import torch.nn.functional as F
    from ebmctl_classification.models import SmallCNN

    from ebmctl.artifacts import model_tensors, save_artifact
    from ebmctl.context import load_dataset
    from ebmctl.profiles import resolve

    train = load_dataset(resolve("quick", ["run.device=cpu"])).split("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SmallCNN(1, 10, 8, 8)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            i = torch.randint(0, len(train.x), (64,), generator=g)
            opt.zero_grad()
            F.cross_entropy(net(train.x[i] * 2 - 1), train.y[i]).backward()
            opt.step()
    d = tmp_path_factory.mktemp("golden")
    return save_artifact(d / "clf.safetensors", model_tensors(net.eval()), kind="classifier",
                         arch="small-cnn", task="classification",
                         arch_args={"in_channels": 1, "num_classes": 10, "width": 8,
                                    "image_size": 8},
                         data={"range": "[-1,1]", "image_size": 8, "channels": 1})


@pytest.fixture
def fixer_artifact(tmp_path):
    from ebmctl.artifacts import model_tensors, save_artifact
    from ebmctl.plugins import get_registries

    args = {"channels": 1, "width": 8, "n_blocks": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # test-only weight init
        net = get_registries().models.get("fixer-resnet").build(**args)
    return save_artifact(tmp_path / "fixer.safetensors", model_tensors(net), kind="fixer",
                         arch="fixer-resnet", arch_args=args,
                         data={"range": "[-1,1]", "image_size": 8, "channels": 1})


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
            "--save-adversarials", "--profile", "quick"]
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
    cfg = resolve("quick", TINY + ["attack.seeds=0", "attack.common_noise_defender=true"])
    rep = run_evaluation(cfg, clf, ebm, CPU, tmp_path / "b.json", undefended=False,
                         method="bpda-eot")
    got["diagnostic"] = {"returned": rep, "json": json.loads((tmp_path / "b.json").read_text()),
                         "table": format_table(rep), "notes": report_notes(rep)}
    # the fixer run at a smaller radius: its transfer attack beats the white-box one on the
    # mean over seeds (the row's verdict) but not on seed 0 (the sanity check's)
    cfg = resolve("quick", TINY + ["attack.eps=0.06", "attack.step_size=0.02"])
    rep = run_evaluation(cfg, clf, ebm, CPU, tmp_path / "c.json", undefended=False,
                         method="bpda-eot,transfer", fixer_path=fixer)
    got["masking"] = {"returned": rep, "json": json.loads((tmp_path / "c.json").read_text()),
                      "table": format_table(rep), "notes": report_notes(rep)}
    sweep = run_sweep(resolve("quick", TINY + ["attack.sanity=false", "attack.seeds=0"]), clf,
                      ebm, CPU, tmp_path / "s.json", "defense.steps", [1, 2])
    got["sweep"] = {"returned": sweep, "json": json.loads((tmp_path / "s.json").read_text())}
    from ebmctl.models import TaskModel

    model = TaskModel.load(clf, CPU)  # a classifier taking [0,1] images
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

    data = load_dataset(resolve("quick", ["run.device=cpu"])).split("test")
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


def _machine() -> dict:
    return {"torch": torch.__version__.split("+")[0],
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def test_the_report_matches_the_golden_copy(trained_classifier, digits_artifacts,
                                            fixer_artifact, tmp_path, monkeypatch):
    writing = bool(os.environ.get("EBMCTL_WRITE_GOLDEN"))
    captured_on = json.loads(GOLDEN.read_text()).get("_captured_on")
    if not writing and captured_on != _machine():
        pytest.skip(f"golden copy captured on {captured_on}, this machine is {_machine()}: "
                    "exact fp32 results differ between CPU kernels")
    clf, ebm = trained_classifier, digits_artifacts[1]
    got = {"_captured_on": _machine(), **_capture(clf, ebm, fixer_artifact, tmp_path,
                                                    monkeypatch)}
    if writing:
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=False) + "\n")
    _row_and_check_agree(got)
    want = json.loads(GOLDEN.read_text())
    # round-trip through JSON so tuples and lists compare alike
    got = json.loads(json.dumps(got))
    for part in want:
        assert got[part] == want[part], part
    assert set(got) == set(want)
