"""Resume never mixes settings: a training checkpoint records the training-relevant settings
(and the contents of the artifacts it trains against); resuming with other ones is a one-line
error naming the keys, ``--force-resume`` may change only the keys declared safe and the
artifact records them. ``attack --resume`` compares artifact contents, not paths, of every
model that shapes the result (task model, EBM, fixer). Under torchrun ``--resume`` works
(``train ebm``) or is refused, never ignored."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ebmctl.context import evaluation_settings
from ebmctl.artifacts import file_digest, load_artifact, save_artifact
from ebmctl.errors import ConfigError
from ebmctl.profiles import resolve
from ebmctl.testing import run_cli, tiny_bundle

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_corpus import save_valid  # noqa: E402
import profile_runs as runs  # noqa: E402

CPU = torch.device("cpu")
TINY_EBM = ["train.steps=4", "train.checkpoint_every=2", "train.mcmc_steps=2",
            "train.batch_size=8", "train.bank_size=16", "ebm.channels=4", "run.threads=1",
            "langevin.precision=fp32", "train.log_every=1", "output.grid_every=1000"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _interrupted(monkeypatch, module, train, *args, **kw):
    """Run ``train`` until its first checkpoint is written, then stop it there (a kill).
    ``module`` writes the checkpoints (``ebmctl.training.trainer`` for the energy recipes)."""
    real = module.save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(*args, **kw)
    monkeypatch.setattr(module, "save_checkpoint", real)


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert file_digest(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_train_ebm_resume_with_other_tau_and_lr_is_an_error_naming_them(tmp_path, monkeypatch):
    import ebmctl.training.trainer as loop

    bundle, out = tiny_bundle(), tmp_path / "e.safetensors"
    _interrupted(monkeypatch, loop, runs.train_ebm, resolve("quick", TINY_EBM), bundle, out, CPU)
    other = resolve("quick", TINY_EBM + ["langevin.tau=0.02", "train.lr_adam=0.001",
                                         "run.threads=2"])
    with pytest.raises(ConfigError) as err:
        runs.train_ebm(other, bundle, out, CPU, resume=True)
    msg = str(err.value)
    assert "langevin.tau" in msg and "train.lr_adam" in msg and "run.threads" not in msg
    assert "\n" not in msg and not out.exists()
    with pytest.raises(ConfigError, match="langevin.tau"):  # force cannot change them either
        runs.train_ebm(other, bundle, out, CPU, force_resume=True)
    # The checkpoint's own settings (the environment may differ) resume as before.
    same = resolve("quick", TINY_EBM + ["run.threads=2"])
    runs.train_ebm(same, bundle, out, CPU, resume=True)
    assert "resumed" not in load_artifact(out).extra


def test_force_resume_may_change_safe_keys_only_and_the_artifact_records_them(tmp_path,
                                                                              monkeypatch):
    import ebmctl.training.trainer as loop

    bundle, out = tiny_bundle(), tmp_path / "e.safetensors"
    _interrupted(monkeypatch, loop, runs.train_ebm, resolve("quick", TINY_EBM), bundle, out, CPU)
    longer = resolve("quick", TINY_EBM + ["train.steps=6"])
    with pytest.raises(ConfigError, match="train.steps.*--force-resume"):
        runs.train_ebm(longer, bundle, out, CPU, resume=True)
    runs.train_ebm(longer, bundle, out, CPU, force_resume=True)
    art = load_artifact(out)
    assert art.extra["training"]["updates"] == 6
    assert art.extra["resumed"] == [{"at_step": 2, "changed": {
        "train.steps": {"checkpoint": 4, "now": 6}}}]


def test_train_and_fix_train_accept_force_resume():
    for argv in (["train", "ebm"], ["train", "hat"], ["train", "classifier"],
                 ["train", "segmenter"], ["train", "model"], ["fix", "train"]):
        r = run_cli([*argv, "--help"])
        assert r.exit_code == 0 and "--force-resume" in r.stdout, argv


def _hat_cfg(*extra):
    return resolve(None, ["hat.width=8", "hat.generator_width=8", "hat.latent_dim=8",
                          "train.batch_size=8", "train.mcmc_steps=2", "hat.bank_size=16",
                          "train.steps=4", "train.checkpoint_every=2", "run.threads=1",
                          "output.grid_every=1000", *extra])


@pytest.mark.parametrize("which", ["midrun", "hat", "classifier", "fixer"])
def test_every_trainer_refuses_a_resume_with_other_settings(which, tmp_path, monkeypatch):
    import ebmctl.training.trainer as loop
    from ebmctl.context import get_task

    bundle, out = tiny_bundle(), tmp_path / f"{which}.safetensors"
    if which == "midrun":
        import ebmctl.training.midrun as mod

        def go(cfg, **kw):
            return runs.train_midrun(cfg, bundle, out, CPU, **kw)

        base = resolve("quick", TINY_EBM + ["train.recipe=midrun", "train.target_horizon=4"])
        changed, key = base.with_overrides({"train.rejuv_prob": 0.25}), "train.rejuv_prob"
    elif which == "hat":
        import ebmctl.training.hat as mod

        def go(cfg, **kw):
            return runs.train_hat(cfg, bundle, out, CPU, **kw)

        base = _hat_cfg()
        changed, key = base.with_overrides({"hat.eps_y": 1e-3}), "hat.eps_y"
    elif which == "classifier":
        import ebmctl.training.task_model as mod

        def go(cfg, **kw):
            return runs.train_task_model(cfg, bundle, get_task(cfg), out, CPU, **kw)

        base = resolve("quick", ["model.epochs=2", "model.width=4", "run.threads=1"])
        changed, key = base.with_overrides({"model.lr": 0.01}), "model.lr"
    else:
        import ebmctl.training.fixer as mod
        from ebmctl.models import EnergyModel

        art = save_valid(tmp_path / "art")

        def go(cfg, **kw):
            run = mod.FixerRun(EnergyModel.load(art["ebm"], CPU), bundle)
            return runs.train_fixer(cfg, run, out, CPU, **kw)

        base = resolve("quick", ["fix.stage1_epochs=2", "fix.stage2_epochs=0", "fix.width=4",
                                 "fix.blocks=1", "fix.purify_steps=1", "run.threads=1",
                                 "fix.feature_net=vgg16"])
        changed, key = base.with_overrides({"fix.lr": 1e-3}), "fix.lr"
        monkeypatch.setattr(mod, "build_feature_net", lambda *a: torch.nn.Identity())
    _interrupted(monkeypatch, loop if which in ("midrun", "hat") else mod, go, base)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        go(changed, resume=True)
    if which == "fixer":  # the frozen EBM is compared by content
        ebm = load_artifact(art["ebm"])
        t = {k: v + 0.01 if v.is_floating_point() else v for k, v in ebm.tensors.items()}
        save_artifact(art["ebm"], t, kind="ebm", arch=ebm.arch, arch_args=ebm.arch_args,
                      data=ebm.data, extra=ebm.extra)
        with pytest.raises(ConfigError, match="--ebm"):
            go(base, resume=True)


def test_an_old_checkpoint_without_a_fingerprint_is_checked_against_its_profile(tmp_path):
    from ebmctl.nn.ebm import LightweightEBM
    from ebmctl.training.checkpoint import checkpoint_path, save_checkpoint

    cfg = resolve("quick", TINY_EBM)
    out = tmp_path / "e.safetensors"
    save_checkpoint(checkpoint_path(out), target="ebm", step=2, model=LightweightEBM(1, 8, 4),
                    tensors={"bank": torch.zeros(16, 1, 8, 8)}, config=cfg.record())
    with pytest.raises(ConfigError, match="train.bank_size"):
        runs.train_ebm(cfg.with_overrides({"train.bank_size": 24}), tiny_bundle(), out, CPU,
                       resume=True)


# ---- attack --resume: contents, not paths, of every model -------------------------------

ATTACK = ["attack.n_images=4", "attack.batch_size=2", "attack.steps=1", "attack.eot_reps=1",
          "attack.restarts=1", "defense.steps=1", "defense.eot_reps=1", "attack.seeds=0",
          "attack.sanity=false", "run.device=cpu", "langevin.precision=fp32",
          "attack.method=bpda-eot"]


def _interrupted_attack(monkeypatch, tmp_path, paths, out, fixer=None):
    from ebmctl.evaluate import attack_eval
    from ebmctl.evaluate.report import run_evaluation

    real, saved = attack_eval._save_part, []

    def save_one_then_die(path, outcome, meta):
        real(path, outcome, meta)
        saved.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(attack_eval, "_save_part", save_one_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(evaluation_settings(resolve("quick", ATTACK)), paths["classifier"],
                       paths["ebm"], CPU, out, undefended=False, fixer_path=fixer)
    monkeypatch.setattr(attack_eval, "_save_part", real)
    assert len(saved) == 1


def _rewrite_weights(path: Path) -> None:
    art = load_artifact(path)
    t = {k: v * 1.5 if v.is_floating_point() else v for k, v in art.tensors.items()}
    save_artifact(path, t, kind=art.kind, arch=art.arch, arch_args=art.arch_args,
                  task=art.meta.get("ebmctl.task", ""), data=art.data, extra=art.extra)


@pytest.mark.parametrize("swapped", ["ebm", "classifier", "fixer"])
def test_attack_resume_refuses_parts_of_a_model_rewritten_at_the_same_path(swapped, tmp_path,
                                                                          monkeypatch):
    from ebmctl.evaluate.report import run_evaluation

    paths = save_valid(tmp_path / "art")
    out = tmp_path / "r.json"
    _interrupted_attack(monkeypatch, tmp_path, paths, out, fixer=paths["fixer"])
    _rewrite_weights(paths[swapped])
    with pytest.raises(ConfigError, match="other settings"):
        run_evaluation(evaluation_settings(resolve("quick", ATTACK)), paths["classifier"],
                       paths["ebm"], CPU, out, undefended=False, fixer_path=paths["fixer"],
                       resume=True)


def test_attack_resume_reuses_parts_when_the_same_models_moved(tmp_path, monkeypatch):
    import shutil

    from ebmctl.evaluate.report import run_evaluation

    paths = save_valid(tmp_path / "art")
    out = tmp_path / "r.json"
    _interrupted_attack(monkeypatch, tmp_path, paths, out)
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "art", moved)
    rep = run_evaluation(evaluation_settings(resolve("quick", ATTACK)),
                         moved / paths["classifier"].name, moved / paths["ebm"].name, CPU, out,
                         undefended=False, resume=True)
    assert _reused(rep.to_json()["results"]) == 1


def _reused(obj) -> int:
    """Chunks a report says it reused, wherever its layout keeps the count."""
    if isinstance(obj, dict):
        return int(obj.get("chunks_reused", 0)) + sum(_reused(v) for k, v in obj.items()
                                                      if k != "chunks_reused")
    if isinstance(obj, list):
        return sum(_reused(v) for v in obj)
    return 0


# ---- torchrun ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["attack", "--model", "m.safetensors", "--ebm", "e.safetensors", "--resume"],
    ["--profile", "quick", "fix", "train", "--ebm", "e.safetensors", "--resume"],
    ["train", "hat", "--force-resume"],
])
def test_resume_under_torchrun_is_refused_where_it_would_be_ignored(argv, monkeypatch, capsys):
    from ebmctl import torchrun as D

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert D.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "torchrun" in err and err.count("\n") == 1


def test_train_ebm_resume_under_torchrun_is_not_refused():
    from ebmctl import torchrun as D

    assert D.unsupported_under_torchrun(["--seed", "3", "train", "ebm", "--resume"]) is None
    assert D.unsupported_under_torchrun(["attack", "--model", "m"]) is None
