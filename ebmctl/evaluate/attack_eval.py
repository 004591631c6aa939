"""Run an attack over a set of images in fixed chunks and summarise it.

Chunk i covers images [i·batch, (i+1)·batch) and is keyed by (seed, label, chunk start), so any
subset of chunks reproduces the full run's figures. With ``parts_dir`` each finished chunk is
written as a small safetensors file (per-image outcomes, the adversarial images, its wall time
and image-step count); ``resume`` reuses those files, so an interrupted evaluation continues
without redoing finished images and ends with the same report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ebmctl.artifacts import atomic_write_bytes
from ebmctl.attacks.base import Attack, AttackOutcome
from ebmctl.defense import Defense
from ebmctl.distributed import DistContext, current, run_chunks
from ebmctl.errors import ConfigError
from ebmctl.evaluate.results import SeedResult
from ebmctl.contracts import Task


def _part_path(parts_dir: Path, label: str, attack: str, seed: int, start: int) -> Path:
    return parts_dir / f"{label}.{attack}.seed{seed}.{start:06d}.safetensors"


def _save_part(path: Path, outcome: AttackOutcome, meta: dict) -> None:
    tensors = {"natural_ok": outcome.natural_ok.to(torch.uint8),
               "robust_ok": outcome.robust_ok.to(torch.uint8),
               "clean_score": outcome.clean_score.float(),
               "x_adv": outcome.x_adv.contiguous(),  # its own float type: resumes exactly
               "ok_by_step": outcome.ok_by_step.to(torch.uint8)}
    atomic_write_bytes(path, st_save(tensors, metadata={"ebmctl.part": json.dumps(meta)}))


def _load_part(path: Path, fingerprint: str) -> tuple[AttackOutcome, dict] | None:
    try:
        raw = path.read_bytes()
        t = st_load(raw)
        from safetensors import safe_open  # header only, for the metadata

        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("ebmctl.part", "{}"))
    except Exception:  # a torn or foreign file is simply recomputed
        return None
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path} belongs to an evaluation with other settings; "
                          "drop --resume or remove its parts folder")
    out = AttackOutcome(t["natural_ok"].bool(), t["robust_ok"].bool(), t["clean_score"],
                        t["x_adv"], t["ok_by_step"].bool(), meta.get("info", {}))
    return out, meta


def evaluate_attack(attack: Attack, defense: Defense, task: Task, x: torch.Tensor,
                    y: torch.Tensor, *, seed: int, batch_size: int, device: torch.device,
                    label: str, progress: Callable[[int], None] | None = None,
                    parts_dir: Path | None = None, fingerprint: str = "",
                    resume: bool = False) -> SeedResult:
    """``attack`` on seed ``seed`` over the images ``x`` [M,C,H,W] in [0,1] (targets ``y``), in
    chunks of ``batch_size`` keyed (seed, label, chunk start); under torchrun the chunks are
    spread over the ranks. ``progress`` advances by evaluation points.

    Raises:
        ConfigError: a part in ``parts_dir`` written with other settings (under ``resume``).
    """
    if current().active:  # under torchrun: chunks spread over the ranks, results merged
        return evaluate_attack_sharded(attack, defense, task, x, y, seed=seed,
                                       batch_size=batch_size, device=device, label=label,
                                       ctx=current(), progress=progress)
    outcomes: list[AttackOutcome] = []
    seconds, image_steps, reused = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        part = _part_path(parts_dir, label, attack.name, seed, start) if parts_dir else None
        loaded = _load_part(part, fingerprint) if (resume and part and part.exists()) else None
        if loaded is not None:
            outcome, meta = loaded
            seconds += float(meta.get("seconds", 0.0))
            image_steps += int(meta.get("image_steps", 0))
            reused += 1
            if progress is not None:
                progress(attack.restarts * (attack.steps + 1))
        else:
            outcome, dt, steps_done = _run_chunk(attack, defense, task, x, y, start, seed=seed,
                                                 batch_size=batch_size, device=device,
                                                 label=label, progress=progress)
            seconds += dt
            image_steps += steps_done
            if part is not None:
                _save_part(part, outcome, {"fingerprint": fingerprint, "seconds": dt,
                                           "image_steps": steps_done, "info": outcome.info})
        outcomes.append(outcome)
    return summarise(outcomes, seed=seed, seconds=seconds, image_steps=image_steps,
                     chunks_reused=reused)


def _run_chunk(attack: Attack, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor,
               start: int, *, seed: int, batch_size: int, device: torch.device, label: str,
               progress: Callable[[int], None] | None) -> tuple[AttackOutcome, float, int]:
    """The attack on the chunk of images starting at start, keyed (seed, label, start):
    its outcome, wall seconds and the Langevin image-steps the defense computed for it."""
    xb = x[start:start + batch_size].to(device)
    yb = y[start:start + batch_size].to(device)
    before = defense.image_steps
    t0 = time.time()
    outcome = attack.run(defense, task, xb, yb, (seed, label, start), progress)
    return outcome, time.time() - t0, defense.image_steps - before


def evaluate_attack_sharded(attack: Attack, defense: Defense, task: Task, x: torch.Tensor,
                            y: torch.Tensor, *, seed: int, batch_size: int, device: torch.device,
                            label: str, ctx: DistContext,
                            progress: Callable[[int], None] | None = None) -> SeedResult:
    """:func:`evaluate_attack` over the ranks of a torchrun launch (:mod:`ebmctl.distributed`):
    same chunks, same keys, one merged :class:`~ebmctl.evaluate.results.SeedResult`
    (``seconds`` and ``image_steps`` are totals over the ranks)."""

    def one_chunk(start: int) -> dict:
        outcome, dt, steps_done = _run_chunk(attack, defense, task, x, y, start, seed=seed,
                                             batch_size=batch_size, device=device, label=label,
                                             progress=progress)
        return {"outcome": outcome, "seconds": dt, "image_steps": steps_done}

    parts = run_chunks(one_chunk, len(x), batch_size, ctx)
    return summarise([p["outcome"] for p in parts], seed=seed,
                     seconds=sum(p["seconds"] for p in parts),
                     image_steps=sum(p["image_steps"] for p in parts), chunks_reused=0,
                     world_size=ctx.world_size)


def worst_case_curve(natural_ok: torch.Tensor, ok_by_step: torch.Tensor) -> torch.Tensor:
    """Robust fraction vs attack-step budget n, worst case over restarts: an image counts at
    budget n iff it passed the natural check and no restart broke it within its first n
    steps. Entry N equals the final robust accuracy."""
    ok = natural_ok.clone().unsqueeze(0).expand(ok_by_step.shape[1], -1).clone()
    started = natural_ok.clone()
    for r in range(ok_by_step.shape[0]):
        ok &= ~started.unsqueeze(0) | ok_by_step[r]
        started = ok_by_step[r, -1]
    return ok.float().mean(1)


def per_image(natural_ok: torch.Tensor, robust_ok: torch.Tensor,
              ok_by_step: torch.Tensor) -> list[dict]:
    """Outcome of each image: natural check, robust, and (restart, step) of the break."""
    rows = []
    for i in range(len(natural_ok)):
        broken_at = None
        if natural_ok[i] and not robust_ok[i]:
            hits = (~ok_by_step[:, :, i]).nonzero()
            if len(hits):
                broken_at = [int(hits[0, 0]), int(hits[0, 1])]
        rows.append({"index": i, "natural_ok": bool(natural_ok[i]),
                     "robust_ok": bool(robust_ok[i]), "broken_at": broken_at})
    return rows


def summarise(outcomes: list[AttackOutcome], *, seed: int, seconds: float, image_steps: int,
              chunks_reused: int = 0, world_size: int | None = None) -> SeedResult:
    """One seed's chunk outcomes, in image order, as a :class:`SeedResult` (``seconds``
    rounded to 0.01)."""
    nat = torch.cat([o.natural_ok for o in outcomes])
    rob = torch.cat([o.robust_ok for o in outcomes])
    by_step = torch.cat([o.ok_by_step for o in outcomes], dim=2)  # [R, N+1, M]
    return SeedResult(
        seed=seed, natural=nat.float().mean().item(), adversarial=rob.float().mean().item(),
        robust_by_step=[by_step[r].float().mean(1).tolist() for r in range(by_step.shape[0])],
        accuracy_curve=worst_case_curve(nat, by_step).tolist(),
        natural_ok=nat.tolist(), robust_ok=rob.tolist(), per_image=per_image(nat, rob, by_step),
        seconds=round(seconds, 2), image_steps=image_steps, chunks_reused=chunks_reused,
        x_adv=torch.cat([o.x_adv for o in outcomes]), world_size=world_size)
