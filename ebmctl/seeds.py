"""Derived randomness: every draw comes from a generator keyed by (run seed, index, ...), so a
resumed or sharded run reproduces an uninterrupted one."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(device: torch.device | str, *parts) -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(*parts))
    return gen
