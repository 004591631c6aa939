"""How a command gets its settings: global options reach a command through the click context
object and are layered in one place (``make_config``); domain checks live with the models (the
task a model was trained for, the K_def an EBM recorded); tables come from
``ebmctl.evaluate.tables``, and the quickstart's table prints exactly as the text held here."""

from __future__ import annotations

import io

import pytest
import torch

from builders import random_classifier, random_ebm
from ebmctl.testing import run_cli


@pytest.fixture()
def resolved(monkeypatch):
    """The profile name and --set items each ``make_config`` resolved, with the Config it
    finally returned (flags and --device/--seed on top)."""
    import ebmctl.commands.common as common
    import ebmctl.context as context

    calls = []
    real, real_task = common.resolve, context.with_task_defaults

    def spy(profile, items):
        calls.append([profile, list(items), None])
        return real(profile, items)

    def final(cfg):
        cfg = real_task(cfg)
        calls[-1][2] = cfg
        return cfg

    monkeypatch.setattr(common, "resolve", spy)
    monkeypatch.setattr(context, "with_task_defaults", final)
    return calls


def test_global_options_before_and_after_the_command_are_layered_in_order(resolved, tmp_path):
    r = run_cli(["--profile", "no-such-profile", "--set", "attack.steps=3", "--seed", "1",
                 "--device", "cpu", "attack", "-m", tmp_path / "missing.safetensors",
                 "--profile", "quick", "--set", "attack.steps=4", "--set", "attack.restarts=2",
                 "--norm", "l2", "--seed", "2"])
    assert r.exit_code != 0 and "--ebm" in r.stderr  # refused after the config was built
    (profile, items, cfg), = resolved
    # the command's --profile wins; --set items root first, then the command's; then the
    # command's own flags, typed (never written back as "key=value" text); then --device and
    # --seed (the command's --seed wins)
    assert profile == "quick"
    assert items == ["attack.steps=3", "attack.steps=4", "attack.restarts=2"]
    assert (cfg["attack.steps"], cfg["attack.norm"], cfg["run.seed"]) == (4, "l2", 2)
    assert cfg["run.device"] == "cpu"
    assert all(cfg.chosen(k) for k in ("attack.steps", "attack.restarts", "attack.norm",
                                       "run.device", "run.seed"))
    assert not cfg.chosen("attack.eps") and not cfg.chosen("data.dataset")


def test_root_global_options_alone_reach_the_command(resolved, tmp_path):
    r = run_cli(["-p", "quick", "-s", "attack.steps=5", "--seed", "9", "attack", "-m",
                 tmp_path / "missing.safetensors"])
    assert r.exit_code != 0
    (profile, items, cfg), = resolved
    assert profile == "quick" and items == ["attack.steps=5"]
    assert cfg["run.seed"] == 9 and cfg.chosen("run.seed")


def test_a_command_without_a_profile_refuses_global_options_after_its_name(tmp_path):
    r = run_cli(["report", tmp_path / "r.json", "--profile", "quick"])
    assert r.exit_code == 2 and "No such option: --profile" in r.stderr


def test_profiles_show_takes_ebmctls_and_its_own_set():
    r = run_cli(["--set", "attack.steps=7", "profiles", "show", "quick", "--set",
                 "attack.restarts=3", "--provenance"])
    assert r.exit_code == 0, r.output
    assert "steps = 7  # --set" in r.stdout and "restarts = 3  # --set" in r.stdout




def test_train_segmenter_defaults_the_task_but_a_profile_or_set_wins(monkeypatch, tmp_path):
    import ebmctl.commands.train as train

    seen = []
    monkeypatch.setattr(train, "_train_task",
                        lambda cfg, *a, **k: seen.append(cfg))
    assert run_cli(["train", "segmenter", "--out", tmp_path / "s.safetensors"]).exit_code == 0
    assert run_cli(["train", "segmenter", "--set", "task.name=classification", "--out",
                    tmp_path / "s.safetensors"]).exit_code == 0
    assert seen[0]["task.name"] == "segmentation"
    assert seen[0]["data.dataset"] != "digits"  # the segmentation task's default dataset
    assert seen[1]["task.name"] == "classification"


def test_train_hat_generator_freezes_it_unless_set_says_otherwise(monkeypatch, tmp_path):
    import ebmctl.training.hat as hat_training

    seen = []

    def fake(sections, hat, record, bundle, out, *args, **kwargs):
        seen.append((sections.train, hat.hat))  # the typed sections the command built
        return out

    monkeypatch.setattr(hat_training, "train_hat", fake)
    base = ["train", "hat", "--profile", "hat-quick", "--generator", tmp_path / "g.safetensors",
            "--updates", "3"]
    assert run_cli([*base, "--out", tmp_path / "a.safetensors"]).exit_code == 0
    assert run_cli([*base, "--out", tmp_path / "b.safetensors", "--set",
                    "hat.train_generator=true", "--set", "train.steps=9"]).exit_code == 0
    (train, hat), (train_set, hat_set) = seen
    assert hat.train_generator is False and train.steps == 3
    assert hat.generator == str(tmp_path / "g.safetensors")
    # an explicit --set beats what --generator implies; the --updates flag beats --set
    assert hat_set.train_generator is True and train_set.steps == 3


# --- domain checks live with the models ------------------------------------------------------

def test_task_model_check_task_names_the_file_and_both_tasks(tmp_path):
    from ebmctl.errors import ConfigError
    from ebmctl.models import TaskModel

    path = random_classifier(tmp_path / "clf.safetensors", width=8, task="parity")
    model = TaskModel.load(path, torch.device("cpu"))
    model.check_task("parity")
    with pytest.raises(ConfigError, match=r"clf\.safetensors is a model for task 'parity', but "
                                          r"the profile's task.name is 'classification'"):
        model.check_task("classification")
    untagged = TaskModel(torch.nn.Identity(), task="")
    untagged.check_task("anything")  # a model that records no task passes


@pytest.mark.parametrize("argv", [
    ["fix", "train", "--ebm", "{ebm}", "-m", "{clf}", "--out", "{tmp}/f.safetensors"],
    ["lyapunov", "--ebm", "{ebm}", "--checks", "-m", "{clf}", "--out", "{tmp}/l.json"],
])
def test_commands_refuse_a_model_for_another_task(argv, tmp_path):
    names = {"ebm": random_ebm(tmp_path / "ebm.safetensors"),
             "clf": random_classifier(tmp_path / "clf.safetensors", width=8, task="parity"), "tmp": tmp_path}
    r = run_cli([a.format(**names) for a in argv])
    assert r.exit_code == 2, r.output
    assert "is a model for task 'parity'" in r.stderr and "Traceback" not in r.output


def test_purify_uses_the_k_def_the_ebm_recorded_unless_given(tmp_path):
    from ebmctl.evaluate.plots import save_image01
    from ebmctl.models import EnergyModel

    ebm = random_ebm(tmp_path / "ebm.safetensors", config={"defense": {"steps": 3}})
    assert EnergyModel.load(ebm, torch.device("cpu")).recorded_defense_steps() == 3
    bare = random_ebm(tmp_path / "bare.safetensors")
    assert EnergyModel.load(bare, torch.device("cpu")).recorded_defense_steps() is None
    img = tmp_path / "x.png"
    save_image01(torch.rand(1, 8, 8), img)

    def k_used(*extra):
        r = run_cli(["purify", img, "--ebm", ebm, "--out-dir", tmp_path / "o", "--force",
                     *extra])
        assert r.exit_code == 0, r.output
        return [ln for ln in r.stderr.splitlines() if ln.startswith("purifying with K =")]

    assert k_used() == [f"purifying with K = 3 Langevin steps of {ebm}"]
    assert k_used("--set", "defense.steps=2")[0].startswith("purifying with K = 2 ")
    assert k_used("-k", "1")[0].startswith("purifying with K = 1 ")
    assert k_used("--langevin-steps", "0")[0].startswith("purifying with K = 0 ")


# --- tables ------------------------------------------------------------------------------------

def _attack(nat: float, adv: float, converged: bool, std: float | None = None) -> dict:
    return {"natural_mean": nat, "natural_std": std, "natural_ci": [nat - .03, nat + .02],
            "adversarial_mean": adv, "adversarial_std": std,
            "adversarial_ci": [max(0.0, adv - .07), adv + .06], "converged": converged}


QUICKSTART_REPORT = {
    "dataset": "digits", "metric": "accuracy", "n_images": 200,
    "threat": {"norm": "linf", "eps": 32 / 255},
    "results": {
        "undefended": {"attacks": {"pgd": _attack(0.97, 0.0, True),
                                   "apgd-ce": _attack(0.97, 0.005, True)},
                       "natural": 0.97, "natural_std": None, "natural_ci": [0.936, 0.986],
                       "adversarial": 0.0, "adversarial_std": None,
                       "adversarial_ci": [0.0, 0.019], "converged": True},
        "defended": {"attacks": {"bpda-eot": _attack(0.955, 0.688, False, std=0.006)},
                     "natural": 0.955, "natural_std": 0.006, "natural_ci": [0.917, 0.976],
                     "adversarial": 0.688, "adversarial_std": 0.006,
                     "adversarial_ci": [0.621, 0.748], "converged": False,
                     "eps0_control": {"attack": "bpda-eot", "seed": 0, "natural": 0.955,
                                      "adversarial": 0.95, "adversarial_ci": [0.91, 0.973],
                                      "inflation": -0.005}},
    },
}

#: What `ebmctl quickstart` prints for QUICKSTART_REPORT, rendered 160 columns wide; its users
#: compare runs by this table, so its text must not change.
QUICKSTART_TABLE = """\
digits: 200 test images, linf eps=32/255, K_def=200, H_def=8
┏━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━┓
┃ model      ┃ attack                             ┃ natural accuracy [95% CI]    ┃ adversarial accuracy [95% CI] ┃ converged        ┃
┡━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━┩
│ undefended │ pgd                                │ 0.970 [0.940, 0.990]         │ 0.000 [0.000, 0.060]          │ yes              │
│ undefended │ apgd-ce                            │ 0.970 [0.940, 0.990]         │ 0.005 [0.000, 0.065]          │ yes              │
│ undefended │ worst case per image (all attacks) │ 0.970 [0.936, 0.986]         │ 0.000 [0.000, 0.019]          │ yes              │
│ defended   │ bpda-eot                           │ 0.955 ± 0.006 [0.925, 0.975] │ 0.688 ± 0.006 [0.618, 0.748]  │ NOT converged    │
│ defended   │ eps = 0 control (bpda-eot, seed 0) │ 0.955                        │ 0.950 [0.910, 0.973]          │ inflation -0.005 │
└────────────┴────────────────────────────────────┴──────────────────────────────┴───────────────────────────────┴──────────────────┘
"""


def test_the_quickstart_table_prints_exactly_as_recorded():
    from rich.console import Console

    from ebmctl.evaluate.tables import quickstart_table

    buf = io.StringIO()
    Console(file=buf, highlight=False, soft_wrap=True, width=160).print(
        quickstart_table(QUICKSTART_REPORT, 200, 8))
    assert buf.getvalue() == QUICKSTART_TABLE
