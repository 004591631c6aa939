"""Plugins registered at run time: a throwaway plugin adds a dataset and a task and runs
`ebmctl train model` + `ebmctl attack`; failing plugins are isolated and reported by name."""

from __future__ import annotations

import importlib.metadata as md
import json

import pytest

import torch.nn.functional as F

import ebmctl.plugins
from ebmctl.api import DatasetSpec, Task, hookimpl
from ebmctl.testing import plugin_registered, run_cli, tiny_bundle

TINY = ["--set", "run.threads=1", "--set", "model.epochs=2", "--set", "model.width=8",
        "--set", "model.batch_size=32"]


def load_squares(request):
    # tiny_bundle's squares, 3 classes; the parity task below only asks "odd or even class?"
    return tiny_bundle(n=96, channels=1, size=8, num_classes=3, seed=request.split_seed,
                       name="squares")


class ParityTask(Task):
    """Two-way task on 3-class data: is the class index odd? Reuses the `small-cnn` classifier
    of the classification plugin with two outputs."""

    name = "parity"
    model_kind = "classifier"
    default_dataset = "squares"
    default_arch = "small-cnn"
    metric_name = "parity accuracy"

    def model_args(self, config, bundle):
        return "small-cnn", {"in_channels": bundle.channels, "num_classes": 2,
                             "width": config["model.width"], "image_size": bundle.image_size}

    def train_loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets % 2)

    def train_loss_per_example(self, outputs, targets):
        return F.cross_entropy(outputs, targets % 2, reduction="none")

    def score(self, outputs, targets):
        return (outputs.argmax(1) == targets % 2).float()


class ThrowawayPlugin:
    @hookimpl
    def ebmctl_register_datasets(self, register):
        register(DatasetSpec("squares", load_squares, task="parity", description="test squares"))

    @hookimpl
    def ebmctl_register_tasks(self, register):
        register(ParityTask())


def test_runtime_plugin_trains_and_attacks(tmp_path):
    task_args = ["--set", "task.name=parity", "--set", "data.dataset=squares"]
    with plugin_registered(ThrowawayPlugin(), "throwaway"):
        listing = json.loads(run_cli(["plugins", "--json"]).stdout)
        row = next(p for p in listing["plugins"] if p["plugin"] == "throwaway")
        assert row["registered"] == {"datasets": ["squares"], "tasks": ["parity"]}
        assert row["error"] is None

        model = tmp_path / "parity.safetensors"
        r = run_cli(["train", "model", *task_args, *TINY, "--out", model])
        assert r.exit_code == 0, r.output
        header = json.loads(run_cli(["inspect", model, "--json"]).stdout)["metadata"]
        assert header["ebmctl.task"] == "parity" and header["ebmctl.kind"] == "classifier"
        assert header["ebmctl.arch_args"]["num_classes"] == 2  # the task chose the model

        ebm = tmp_path / "ebm.safetensors"
        r = run_cli(["train", "ebm", *task_args, *TINY, "--set", "ebm.channels=8",
                     "--set", "train.steps=2", "--set", "train.mcmc_steps=2",
                     "--set", "train.batch_size=16", "--set", "train.bank_size=32",
                     "--out", ebm])
        assert r.exit_code == 0, r.output

        report_path = tmp_path / "attack.json"
        r = run_cli(["attack", *task_args, *TINY, "--model", model, "--ebm", ebm,
                     "--n-images", "8", "--eps", "0.3", "--set", "attack.steps=3",
                     "--set", "attack.step_size=0.1", "--set", "attack.eot_reps=2",
                     "--set", "defense.steps=2", "--set", "defense.eot_reps=2",
                     "--out", report_path])
        assert r.exit_code == 0, r.output
    report = json.loads(report_path.read_text())
    assert report["task"] == "parity" and report["metric"] == "parity accuracy"
    assert report["dataset"] == "squares" and report["n_images"] == 8
    for label in ("undefended", "defended"):
        res = report["results"][label]
        # the headline is the per-image worst case: the mean of the 0/1 list (one seed)
        assert res["n_seeds"] == 1 and res["adversarial"] == pytest.approx(
            sum(res["per_image_robust"]) / res["n_images"])
        assert res["adversarial"] <= res["natural"]
    # a model for another task is refused by name
    r = run_cli(["attack", *TINY, "--model", model, "--undefended-only", "--n-images", "4"])
    assert r.exit_code != 0 and "parity" in r.stderr and "Traceback" not in r.output


class BrokenHookPlugin:
    @hookimpl
    def ebmctl_register_datasets(self, register):
        register(DatasetSpec("half-registered", load_squares))

    @hookimpl
    def ebmctl_register_tasks(self, register):
        raise RuntimeError("boom in the task hook")


class DuplicatePlugin:
    @hookimpl
    def ebmctl_register_datasets(self, register):
        register(DatasetSpec("digits", load_squares))

    @hookimpl
    def ebmctl_profile_schema(self, add):
        add("dup.key", "int", 1, "a key of a plugin that will be left out")


def _row(listing, name):
    return next(p for p in listing["plugins"] if p["plugin"] == name)


def test_failing_hook_is_isolated_and_named():
    with plugin_registered(BrokenHookPlugin(), "broken-hook"):
        r = run_cli(["plugins", "--json"])
        assert r.exit_code == 0
        listing = json.loads(r.stdout)
        row = _row(listing, "broken-hook")
        assert "broken-hook" in row["error"] and "boom in the task hook" in row["error"]
        assert row["registered"] == {}  # left out whole, not half-registered
        assert any("broken-hook" in f for f in listing["failures"])
        assert "half-registered" not in ebmctl.plugins.get_registries().datasets
        # the rest keeps working, with a one-line warning naming the plugin
        r = run_cli(["profiles", "show", "quick", "--json"])
        assert r.exit_code == 0 and json.loads(r.stdout)["data"]["dataset"] == "digits"
        assert "Warning: plugin 'broken-hook'" in r.stderr and "Traceback" not in r.output


def test_duplicate_name_is_refused_and_named():
    with plugin_registered(DuplicatePlugin(), "dup"):
        listing = json.loads(run_cli(["plugins", "--json"]).stdout)
        err = _row(listing, "dup")["error"]
        assert "dup" in err and "'digits'" in err and "classification" in err
        reg = ebmctl.plugins.get_registries()
        assert reg.datasets.owner("digits") == "classification"
        assert "dup.key" not in reg.schema.keys
        r = run_cli(["profiles", "show", "quick", "--set", "dup.key=2"])
        assert r.exit_code != 0 and "unknown profile key 'dup.key'" in r.stderr
        table = run_cli(["plugins"]).stdout
        assert "FAILED" in table and "classification" in table


def test_plugin_that_fails_to_import_is_named(monkeypatch):
    broken = md.EntryPoint(name="broken-import", value="ebmctl_no_such_module_12",
                           group="ebmctl")
    real = md.entry_points

    def fake_entry_points(**kw):
        return list(real(**kw)) + ([broken] if kw.get("group") == "ebmctl" else [])

    monkeypatch.setattr(ebmctl.plugins.md, "entry_points", fake_entry_points)
    ebmctl.plugins.reset()
    r = run_cli(["plugins", "--json"])
    assert r.exit_code == 0
    listing = json.loads(r.stdout)
    err = _row(listing, "broken-import")["error"]
    assert "broken-import" in err and "failed to load" in err and "ModuleNotFoundError" in err
    assert _row(listing, "classification")["error"] is None
    assert "Warning: plugin 'broken-import'" in r.stderr
    # EBMCTL_DISABLE_PLUGINS skips third-party entry points, so the broken one is not tried
    ebmctl.plugins.reset()
    r = run_cli(["plugins", "--json"], env={"EBMCTL_DISABLE_PLUGINS": "1"})
    ebmctl.plugins.reset()
    assert r.exit_code == 0 and "broken-import" not in r.stdout


def test_a_plugin_host_keeps_its_own_plugins():
    """Plugin state lives in a PluginHost: a host of one's own does not touch the process'
    default host, and a reset reloads the plugins but keeps run-time registrations."""
    from ebmctl.plugins import PluginHost, default_host, get_registries

    host = PluginHost()
    host.register(ThrowawayPlugin(), "throwaway")
    assert "squares" in host.registries().datasets and "parity" in host.registries().tasks
    assert "squares" not in get_registries().datasets  # the default host never saw it
    assert host is not default_host() and default_host() is default_host()
    first = host.registries()
    host.reset()
    again = host.registries()
    assert again is not first and "squares" in again.datasets
    assert host.manager.has_plugin("throwaway")
    host.unregister("throwaway")
    assert "squares" not in host.registries().datasets
    assert "digits" in host.registries().datasets  # the built-ins load in every host
