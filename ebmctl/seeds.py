"""Derived randomness: every draw comes from a generator keyed by (run seed, index, ...), so a
resumed or sharded run reproduces an uninterrupted one."""

from __future__ import annotations

import functools
import hashlib

import torch


def derive_seed(*parts) -> int:
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(device: torch.device | str, *parts) -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(*parts))
    return gen


def keeps_global_rng(fn):
    """Decorator for trainers: library code (weight init, dropout) draws from torch's global
    RNG, so a trainer seeds it with :func:`seed_global_rng`; this restores the caller's state
    afterwards, so nothing else's random stream shifts."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
            return fn(*args, **kwargs)

    return wrapper


def seed_global_rng(*parts) -> None:
    """Seed torch's global RNG (CPU and CUDA) from ``parts``; only inside
    :func:`keeps_global_rng`."""
    torch.manual_seed(derive_seed(*parts))
