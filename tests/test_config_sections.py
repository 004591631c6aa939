"""Profile sections declared by the code that reads them: a frozen dataclass per section whose
field metadata carries help, bounds and choices; the schema is derived from it (kinds from the
annotations), a plugin adds one with ``add(SectionClass)``, ``cfg.section(SectionClass)`` hands
code typed values, and the core builds the defense and the attacks from sections alone."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import ebmctl.plugins
from ebmctl.api import hookimpl
from ebmctl.attacks.base import AttackConfig, build_attack
from ebmctl.attacks.bpda_eot import BPDAEOT
from ebmctl.attacks.pgd import PGD
from ebmctl.config import Fraction, setting
from ebmctl.defense import Defense, DefenseConfig
from ebmctl.errors import ConfigError
from ebmctl.evaluate.resubmit import EvaluateConfig
from ebmctl.profiles import resolve
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.testing import plugin_registered, run_cli


@dataclass(frozen=True)
class ProbeConfig:
    """A plugin's section: every kind a field may have."""

    section: ClassVar[str] = "probe"

    count: int = setting(3, "a count", minimum=1, maximum=9)
    ratio: float = setting(0.5, "a ratio", minimum=0, maximum=1)
    radius: Fraction = setting(4 / 255, "a radius in pixel units", minimum=0)
    mode: str = setting("a", "a | b", choices=("a", "b"))
    on: bool = setting(False, "a switch")
    sizes: tuple[int, ...] = setting((1, 2), "sizes", minimum=1)
    names: tuple[str, ...] = setting((), "names")


class ProbePlugin:
    @hookimpl
    def ebmctl_profile_schema(self, add):
        add(ProbeConfig)


def test_a_plugin_section_is_checked_with_its_field_metadata_and_read_back_typed():
    with plugin_registered(ProbePlugin(), "probe"):
        cfg = resolve(None, ["probe.radius=8/255", "probe.sizes=3,4", "probe.mode=b",
                             "probe.on=yes"])
        probe = cfg.section(ProbeConfig)
        assert probe == ProbeConfig(count=3, ratio=0.5, radius=8 / 255, mode="b", on=True,
                                    sizes=(3, 4), names=())
        with pytest.raises(dataclasses.FrozenInstanceError):
            probe.count = 4
        assert cfg.to_dict()["probe"]["sizes"] == [3, 4]  # lists in profiles and artifacts
        for item, expected in [("probe.count=10", "must be <= 9"),
                               ("probe.count=2.5", "expected int"),
                               ("probe.mode=c", "choose from a, b"),
                               ("probe.sizes=1,0", "must be >= 1"),
                               ("probe.ratio=-0.1", "must be >= 0")]:
            with pytest.raises(ConfigError, match=rf"profile key '{item.split('=')[0]}'.*"
                                                  rf"{expected}"):
                resolve(None, [item])
        listing = json.loads(run_cli(["plugins", "--json"]).stdout)
        row = next(p for p in listing["plugins"] if p["plugin"] == "probe")
        assert row["registered"] == {"profile sections": ["probe"]}


@dataclass(frozen=True)
class ClashConfig:
    section: ClassVar[str] = "attack"

    eps: float = setting(0.1, "a second attack.eps")


@dataclass(frozen=True)
class UntypedConfig:
    section: ClassVar[str] = "untyped"

    shape: dict = setting(None, "no key kind for a dict")


class BadSectionsPlugin:
    def __init__(self, cls):
        self.cls = cls

    @hookimpl
    def ebmctl_profile_schema(self, add):
        add("bad.first", "int", 1, "declared before the bad section")
        add(self.cls)


@pytest.mark.parametrize("cls, message", [
    (ClashConfig, "declared profile key 'attack.eps' twice"),
    (UntypedConfig, "profile key 'untyped.shape' of UntypedConfig needs a default and one of"),
])
def test_a_bad_section_leaves_its_plugin_out_whole_and_names_the_key(cls, message):
    with plugin_registered(BadSectionsPlugin(cls), "bad"):
        reg = ebmctl.plugins.get_registries()
        assert message in reg.plugins["bad"].error
        assert "bad.first" not in reg.schema.keys
        assert reg.schema.keys["attack.eps"].default == 8 / 255  # the core's key is untouched
        assert resolve(None).section(AttackConfig).eps == 8 / 255


def test_is_default_reads_which_layers_set_a_key_not_the_provenance_text():
    from ebmctl.config import Config
    from ebmctl.plugins import get_registries

    cfg = resolve("quick", ["attack.steps=3"]).with_overrides({"data.root": "x"}, "default")
    # a layer named "default" in the text is still a layer that set the key
    assert not cfg.is_default("data.root") and not cfg.is_default("attack.steps")
    assert not cfg.is_default("defense.steps")  # the profile file set it
    assert cfg.is_default("attack.loss")
    cfg.provenance["attack.steps"] = "default"  # display text only
    assert not cfg.is_default("attack.steps")
    back = Config.from_json(json.dumps({"defense": {"steps": 7}}), get_registries().schema)
    assert not back.is_default("defense.steps") and back.is_default("attack.loss")


def test_core_sections_read_the_profile_and_keep_its_errors():
    cfg = resolve("quick", ["attack.norm=l2", "attack.eps_l2=1.0", "attack.seeds=3,4",
                            "defense.steps=7", "langevin.chunk_size=16",
                            "evaluate.eot_reps=2,5"])
    attack = cfg.section(AttackConfig)
    assert (attack.norm, attack.radius, attack.step, attack.seeds) == ("l2", 1.0, 0.25, (3, 4))
    assert cfg.section(DefenseConfig).steps == 7
    assert cfg.section(LangevinConfig).chunk_size == 16
    assert cfg.section(EvaluateConfig).eot_reps == (2, 5)
    assert cfg.is_default("attack.loss") and not cfg.is_default("attack.norm")
    with pytest.raises(ConfigError, match="profile key 'attack.eps'.*must be <= 1"):
        resolve(None, ["attack.eps=2"])
    with pytest.raises(ConfigError, match="profile key 'langevin.precision'.*choose from"):
        resolve(None, ["langevin.precision=fp8"])


def test_the_defense_is_built_from_its_sections():
    model = torch.nn.Identity()
    ebm = object()  # Defense only keeps it until it purifies
    defense, langevin = DefenseConfig(steps=7, eot_reps=3, average="softmax"), \
        LangevinConfig(precision="fp32", chunk_size=16, channels_last=True)
    d = Defense.from_config(model, ebm, defense, langevin, torch.device("cpu"))
    assert (d.steps, d.reps, d.average, d.chunk_size, d.channels_last, d.stochastic) == \
        (7, 3, "softmax", 16, True, True)
    bare = Defense.from_config(model, None, defense, langevin, torch.device("cpu"))
    assert (bare.steps, bare.reps, bare.stochastic) == (0, 1, False)


def test_attacks_are_built_from_the_attack_section_without_a_profile():
    attack = AttackConfig(norm="l2", eps_l2=1.0, steps=4, restarts=2, eot_reps=5,
                          energy_weight=0.3, loss="margin")
    bare = build_attack(PGD, attack, defended=False, verify_reps=9,
                        given={"energy_weight", "loss"})
    # undefended: one replicate each way, and the EBM-energy weight is not for it
    assert (bare.norm, bare.eps, bare.step_size, bare.steps, bare.restarts) == \
        ("l2", 1.0, 0.25, 4, 2)
    assert (bare.eot_reps, bare.verify_reps) == (1, 1)
    assert "attack.energy_weight" not in bare.options_given
    defended = build_attack(BPDAEOT, attack, defended=True, verify_reps=9,
                            given={"energy_weight"}, eps=0.0)
    assert (defended.eps, defended.eot_reps, defended.verify_reps) == (0.0, 5, 9)
    assert defended.energy_weight == 0.3 and defended.options_given == {"attack.energy_weight"}
    ungiven = build_attack(BPDAEOT, attack, defended=True, verify_reps=9)
    assert ungiven.energy_weight == 0.0 and ungiven.options_given == set()


def _declared_by(module) -> set[str]:
    """The profile keys a plugin module's ``ebmctl_profile_schema`` declares (sections or, the
    deprecated form, single keys)."""
    from ebmctl.config import section_keys

    keys: set[str] = set()
    module.ebmctl_profile_schema(lambda what, *a, **kw: keys.update(
        section_keys(what) if isinstance(what, type) else {what}))
    return keys


def test_keys_only_one_plugin_reads_are_declared_by_that_plugin_under_their_old_names():
    import ebmctl_classification
    import ebmctl_segmentation

    rows = json.loads(run_cli(["plugins", "--json"]).stdout)["plugins"]
    sections = {row["plugin"]: row["registered"].get("profile sections", []) for row in rows}
    assert {"task", "segmentation", "data"} <= set(sections["segmentation"])
    assert sections["classification"] == ["model"] * 3
    assert ({"task.dice_mode", "task.dice_ratio_threshold"}
            <= _declared_by(ebmctl_segmentation))
    assert ({"model.depth", "model.widen_factor", "model.dropout"}
            <= _declared_by(ebmctl_classification))
    # the segmentation plugin declares the Dice modes, so a bad one fails when the profile is
    # read, whatever the task, with the choices named
    with pytest.raises(ConfigError, match="'task.dice_mode'.*choose from foreground, mean"):
        resolve(None, ["task.dice_mode=pixel"])
    cfg = resolve(None, ["model.depth=16", "task.dice_ratio_threshold=0.3"])
    assert (cfg["model.depth"], cfg["task.dice_ratio_threshold"]) == (16, 0.3)


def test_fixer_dynamics_synthesis_and_ood_sections_are_declared_by_the_code_that_reads_them():
    from ebmctl.dynamics.report import LyapunovConfig, exponent_settings
    from ebmctl.ood import OODConfig
    from ebmctl.synthesis import SynthConfig
    from ebmctl.training.fixer import FixConfig

    owners = {row["plugin"]: row["registered"].get("profile sections", [])
              for row in json.loads(run_cli(["plugins", "--json"]).stdout)["plugins"]}
    assert {"fix", "lyapunov", "synth", "ood"} <= set(owners["core"])
    cfg = resolve(None, ["fix.vgg_layers=relu1_2,relu3_3", "fix.patience=3",
                         "lyapunov.etas=0.1,1", "lyapunov.seeds=2,3",
                         "lyapunov.attack_defended=yes", "synth.init=data",
                         "ood.sets=gaussian-noise,digits=/d"])
    fix = cfg.section(FixConfig)
    assert (fix.vgg_layers, fix.patience, fix.stage1_input) == (("relu1_2", "relu3_3"), 3,
                                                                "purified")
    lyapunov = cfg.section(LyapunovConfig)
    assert (lyapunov.etas, lyapunov.seeds, lyapunov.attack_defended) == ((0.1, 1.0), (2, 3), True)
    # the Benettin settings come from the section
    settings = exponent_settings(lyapunov, cfg.section(LangevinConfig))
    assert (settings.etas, settings.seeds, settings.dtype) == ([0.1, 1.0], [2, 3], "float64")
    assert cfg.section(SynthConfig) == SynthConfig(n=64, steps=0, init="data")
    assert cfg.section(OODConfig).sets == ("gaussian-noise", "digits=/d")
    for item, expected in [("fix.stage1_input=noisy", "choose from purified, natural"),
                           ("fix.patience=0", "must be >= 1"),
                           ("lyapunov.split=dev", "choose from train, val, test"),
                           ("synth.n=0", "must be >= 1"),
                           ("ood.n_images=0", "must be >= 1")]:
        with pytest.raises(ConfigError, match=rf"profile key '{item.split('=')[0]}'.*"
                                              rf"{expected}"):
            resolve(None, [item])


def test_every_core_key_is_declared_by_a_section_beside_the_code_that_reads_it():
    from ebmctl.context import DataConfig, TaskConfig
    from ebmctl.nn.ebm import ACTIVATIONS, EbmConfig
    from ebmctl.training.hat import HatConfig
    from ebmctl.training.task_model import ModelConfig
    from ebmctl.training.trainer import OutputConfig, TrainConfig

    import ebmctl.builtin
    from ebmctl.config import section_keys

    core: list[type] = []
    ebmctl.builtin.ebmctl_profile_schema(lambda cls, **choices: core.append(cls))
    rows = json.loads(run_cli(["plugins", "--json"]).stdout)["plugins"]
    plugin_keys = {k for row in rows for k in row["registered"].get("profile keys", [])}
    # the plugins' own sections (the bundled plugins declare every key as a section field)
    import importlib

    for row in rows:
        if row["plugin"] != "core" and row["registered"].get("profile sections"):
            module = importlib.import_module(f"ebmctl_{row['plugin']}")
            module.ebmctl_profile_schema(lambda cls, **kw: plugin_keys.update(section_keys(cls)))
    # no hand-written keys are left: each is a field of a core section or a plugin's own key
    schema = ebmctl.plugins.get_registries().schema
    assert set(schema.keys) - plugin_keys == {k for cls in core for k in section_keys(cls)}
    assert {"data", "task", "model", "ebm", "train", "output", "hat", "quality",
            "autoencoder"} <= {cls.section for cls in core}
    cfg = resolve(None, ["train.lr_drops=100,200", "train.recipe=midrun", "data.channels=1",
                         "ebm.activation=smooth_leaky", "model.depth=16", "hat.mode=joint",
                         "output.grid_every=5", "task.dice_mode=mean"])
    train = cfg.section(TrainConfig)
    assert (train.lr_drops, train.recipe, train.steps) == ((100, 200), "midrun", 150000)
    assert cfg.section(DataConfig).channels == 1
    assert cfg.section(EbmConfig).activation == "smooth_leaky"
    # a plugin's key in the section (the WRN's model.depth) is read by that plugin, not here
    assert cfg["model.depth"] == 16 and not hasattr(cfg.section(ModelConfig), "depth")
    assert (cfg.section(HatConfig).mode, cfg.section(OutputConfig).grid_every) == ("joint", 5)
    assert cfg.section(TaskConfig).name == "classification"
    assert schema.keys["ebm.activation"].choices == ACTIVATIONS
    for item, expected in [("train.bank_init=zeros", "choose from uniform, gaussian, data"),
                           ("data.channels=5", "must be <= 4"),
                           ("model.optimizer=rmsprop", "choose from adam, sgd"),
                           ("ebm.smooth_eps=0", "must be >= 1e-12"),
                           ("quality.n_reference=1", "must be >= 2"),
                           ("autoencoder.batch_size=0", "must be >= 1")]:
        with pytest.raises(ConfigError, match=rf"profile key '{item.split('=')[0]}'.*"
                                              rf"{expected}"):
            resolve(None, [item])
