"""Train the task model (classifier, segmenter, ...) with the task's own loss."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ebmctl.architectures import build_model
from ebmctl.artifacts import atomic_write_json, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.models import TaskModel
from ebmctl.config import Config
from ebmctl.contracts import DatasetBundle, Task
from ebmctl.seeds import keeps_global_rng, make_generator, seed_global_rng
from ebmctl.training.checkpoint import (
    ResumeGuard,
    checkpoint_path,
    grads_finite,
    load_checkpoint,
    numerical_stop,
    restore_optimizer,
    save_checkpoint,
)


def evaluate_task_model(model: TaskModel, task: Task, x: torch.Tensor, y: torch.Tensor,
                        device, batch: int = 500) -> float:
    model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch].to(device))
            scores.append(task.score(out, y[i:i + batch].to(device)).float().cpu())
    return torch.cat(scores).mean().item() if scores else float("nan")


def task_lr(cfg: Config, it: int, total: int, milestones: list[int]) -> float:
    """Learning rate at iteration ``it`` of ``total``: step drops, or a one-cycle triangle
    (linear warm-up over ``model.warmup_fraction`` of training, then linear decay to 0)."""
    peak = cfg["model.lr"]
    if cfg["model.lr_schedule"] == "onecycle":
        warm = max(1, round(cfg["model.warmup_fraction"] * total))
        if it < warm:
            return peak * (it + 1) / warm
        return peak * max(0.0, (total - it) / max(1, total - warm))
    return peak * 0.1 ** sum(it >= m for m in milestones)


@keeps_global_rng
def train_task_model(cfg: Config, bundle: DatasetBundle, task: Task, out: Path,
                     device: torch.device, resume: bool = False,
                     force_resume: bool = False) -> Path:
    out = Path(out)
    ckpt_file = checkpoint_path(out)
    net, arch, args = build_model("task", cfg, bundle, (cfg["run.seed"], "task-init"), task)
    task.prepare_model(net, cfg)
    model = TaskModel(net, "[-1,1]", bundle.image_size, bundle.channels, task.model_kind,
                      task.name).to(device)
    memory_format = torch.channels_last if cfg["model.channels_last"] else torch.contiguous_format
    net.to(memory_format=memory_format)
    epochs, bs = cfg["model.epochs"], cfg["model.batch_size"]
    if cfg["model.optimizer"] == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=cfg["model.lr"], momentum=cfg["model.momentum"],
                              weight_decay=cfg["model.weight_decay"], nesterov=True)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=cfg["model.lr"],
                               weight_decay=cfg["model.weight_decay"])
    x, y = bundle.train.x, bundle.train.y
    n = len(x)
    steps_per_epoch = max(1, (n + bs - 1) // bs)
    total = epochs * steps_per_epoch
    milestones = [int(f * total) for f in cfg["model.lr_milestones"]]
    start_epoch, history = 0, []
    guard = ResumeGuard.for_run(cfg, task.model_kind)
    if (resume or force_resume) and ckpt_file.exists():
        ck = load_checkpoint(ckpt_file, task.model_kind)
        guard.check(ck, force_resume, ckpt_file)
        net.load_state_dict(ck["model"])
        restore_optimizer(opt, ck)
        start_epoch, history = ck["step"], ck["state"].get("history", [])
        info(f"resumed from {ckpt_file} at epoch {start_epoch}")
    seed = cfg["run.seed"]
    t0 = time.time()
    with progress_bar(total - start_epoch * steps_per_epoch, f"train {task.model_kind}") as bar:
        for epoch in range(start_epoch, epochs):
            gen = make_generator("cpu", seed, "task-train", epoch)
            # Dropout draws from the global RNG: keyed by epoch, so a resumed run matches too.
            seed_global_rng(seed, "task-dropout", epoch)
            perm = torch.randperm(n, generator=gen)
            model.train()
            losses = []
            for i in range(steps_per_epoch):
                it = epoch * steps_per_epoch + i
                lr = task_lr(cfg, it, total, milestones)
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = perm[i * bs:(i + 1) * bs]
                xb, yb = task.augment(x[idx], y[idx], gen, cfg)
                xb = xb.to(device).contiguous(memory_format=memory_format)
                loss = task.train_loss(model(xb), yb.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not torch.isfinite(loss) or not grads_finite(net):
                    raise numerical_stop(f"task-model loss or gradient became NaN/Inf in epoch "
                                         f"{epoch + 1}", ckpt_file)
                opt.step()
                losses.append(loss.item())
                bar.advance(1, f"loss {loss.item():.3f}")
            val = evaluate_task_model(model, task, bundle.val.x, bundle.val.y, device)
            history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses),
                            f"val_{task.metric_name}": val, "seconds": round(time.time() - t0, 1)})
            if epoch + 1 < epochs:
                save_checkpoint(ckpt_file, target=task.model_kind, step=epoch + 1, model=net,
                                optimizer=opt, state={"history": history}, config=cfg,
                                arch=arch, arch_args=args, guard=guard)
    net.to(memory_format=torch.contiguous_format)  # artifacts store plain contiguous tensors
    test = evaluate_task_model(model, task, bundle.test.x, bundle.test.y, device)
    data = {"range": "[-1,1]", "image_size": bundle.image_size, "channels": bundle.channels,
            "num_classes": bundle.num_classes, "class_names": bundle.class_names,
            "dataset": cfg["data.dataset"]}
    extra = {"history": history, f"test_{task.metric_name}": test, **guard.artifact_extra()}
    save_artifact(out, model_tensors(net), kind=task.model_kind, arch=arch, arch_args=args,
                  task=task.name, data=data, config=cfg, step=epochs, extra=extra)
    from ebmctl.context import environment

    atomic_write_json(out.with_suffix(".log.json"), {"history": history, "test": test,
                                                     "config": cfg.to_dict(),
                                                     "environment": environment(cfg, device)})
    ckpt_file.unlink(missing_ok=True)
    info(f"{task.model_kind} test {task.metric_name}: {test:.4f}")
    return out
