"""Artifacts: one ``.safetensors`` file per model, with string metadata. No pickle anywhere.

Metadata keys: ebmctl.schema, ebmctl.kind, ebmctl.arch, ebmctl.arch_args (JSON), ebmctl.task,
ebmctl.data (JSON), ebmctl.config (JSON resolved profile), ebmctl.version, ebmctl.step and
ebmctl.extra (JSON, kind-specific: e.g. an EBM's tau and temperature).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ebmctl import __version__
from ebmctl.errors import ArtifactError, EbmctlError

SCHEMA_VERSION = "1"
MAX_HEADER_BYTES = 64 * 1024 * 1024


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target folder; rename it onto ``path`` on success only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix or ".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get normal modes
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def claim_output(path: str | os.PathLike, *, force: bool = False, resume: bool = False,
                 option: str = "--out") -> Path:
    """The one check every command makes before it writes an output: an existing file is
    replaced only with ``force`` (or ``resume``, for a run continuing its own work), so no
    earlier result is lost silently. Returns the path; creates nothing."""
    from ebmctl.errors import OutputExistsError

    p = Path(path)
    if p.is_dir():
        raise OutputExistsError(f"output {p} is a folder; give a file path with {option}")
    if p.exists() and not (force or resume):
        raise OutputExistsError(f"{p} already exists; pass --force to replace it, or choose "
                                f"another path with {option}")
    return p


def output_stems(inputs: list[tuple[str | os.PathLike, str]]) -> list[str]:
    """Output stems for the inputs of one call, given as (output folder, input stem): a stem
    already taken in its folder by an earlier input (``a/x.png`` and ``b/x.jpg`` into one
    ``--out-dir``) becomes ``x-2``, ``x-3``, ..., so no output of the call replaces another."""
    taken: set[tuple[Path, str]] = set()
    out = []
    for folder, stem in inputs:
        key, n, name = Path(folder).resolve(), 1, stem
        while (key, name) in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add((key, name))
        out.append(name)
    return out


@dataclass
class Artifact:
    path: Path
    meta: dict[str, str]
    tensors: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        return self.meta.get("ebmctl.kind", "")

    @property
    def arch(self) -> str:
        return self.meta.get("ebmctl.arch", "")

    def json(self, key: str, default: Any = None) -> Any:
        raw = self.meta.get(f"ebmctl.{key}")
        if raw is None or raw == "":
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ArtifactError(f"{self.path}: metadata field ebmctl.{key} is not valid JSON") from None

    @property
    def arch_args(self) -> dict[str, Any]:
        return self.json("arch_args", {})

    @property
    def data(self) -> dict[str, Any]:
        return self.json("data", {})

    @property
    def extra(self) -> dict[str, Any]:
        return self.json("extra", {})

    @property
    def config(self) -> dict[str, Any]:
        return self.json("config", {})


def save_artifact(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, kind: str,
                  arch: str = "", arch_args: dict | None = None, task: str = "",
                  data: dict | None = None, config: Any = None, step: int = 0,
                  extra: dict | None = None) -> Path:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    meta = {
        "ebmctl.schema": SCHEMA_VERSION,
        "ebmctl.kind": kind,
        "ebmctl.arch": arch,
        "ebmctl.arch_args": json.dumps(arch_args or {}, sort_keys=True),
        "ebmctl.task": task,
        "ebmctl.data": json.dumps(data or {}, sort_keys=True),
        "ebmctl.config": json.dumps(config or {}, sort_keys=True, default=_json_default),
        "ebmctl.version": __version__,
        "ebmctl.step": str(int(step)),
        "ebmctl.extra": json.dumps(extra or {}, sort_keys=True, default=_json_default),
    }
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(clean, metadata=meta))
    return Path(path)


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
    """Read the safetensors header only: (metadata, tensor table). Validates the framing."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"artifact not found: {p}")
    if p.is_dir():
        raise ArtifactError(f"artifact path is a folder: {p}")
    size = p.stat().st_size
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ArtifactError(f"{p} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or n + 8 > size:
                raise ArtifactError(f"{p} is not a valid safetensors file (bad header length)")
            raw = fh.read(n)
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {p}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError(f"{p} is not a valid safetensors file (corrupt header)") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{p} is not a valid safetensors file (corrupt header)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ArtifactError(f"{p} has malformed metadata")
    end = 0
    for name, info in header.items():
        if not isinstance(info, dict) or "data_offsets" not in info:
            raise ArtifactError(f"{p} is not a valid safetensors file (bad entry {name!r})")
        end = max(end, int(info["data_offsets"][1]))
    if 8 + n + end > size:
        raise ArtifactError(f"{p} is truncated ({size} bytes, header says {8 + n + end})")
    return meta, header


def check_meta(path: Path, meta: dict[str, str], kind: str | tuple[str, ...] | None) -> None:
    if "ebmctl.kind" not in meta or "ebmctl.schema" not in meta:
        raise ArtifactError(f"{path} is a safetensors file but not an ebmctl artifact "
                            "(no ebmctl metadata)")
    if meta["ebmctl.schema"] != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has artifact schema {meta['ebmctl.schema']!r}; this ebmctl "
                            f"reads schema {SCHEMA_VERSION!r}")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and meta["ebmctl.kind"] not in kinds:
        raise ArtifactError(f"{path} is a {meta['ebmctl.kind']!r} artifact, expected "
                            f"{' or '.join(repr(k) for k in kinds)}")


def load_artifact(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> Artifact:
    p = Path(path)
    meta, _ = read_header(p)
    check_meta(p, meta, kind)
    try:
        tensors = st_load(p.read_bytes())
    except EbmctlError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{p} is corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    art = Artifact(p, meta, tensors)
    for field in ("arch_args", "data", "extra", "config"):
        art.json(field)
    return art


def build_model(artifact: Artifact) -> torch.nn.Module:
    """Rebuild an artifact's network through the model registry and load its weights."""
    from ebmctl.plugins import get_registries

    arch = artifact.arch
    models = get_registries().models
    if arch not in models:
        raise ArtifactError(f"{artifact.path}: architecture {arch!r} is not registered "
                            "(is the plugin that provides it installed?)")
    spec = models.get(arch)
    try:
        net = spec.build(**artifact.arch_args)
    except EbmctlError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{artifact.path}: cannot build {arch!r} from its arguments: {exc}") from None
    state = {k[len("model."):]: v for k, v in artifact.tensors.items() if k.startswith("model.")}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{artifact.path}: weights do not match architecture {arch!r} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ArtifactError(f"{artifact.path}: tensor {k!r} has shape {tuple(v.shape)}, "
                                f"architecture {arch!r} expects {tuple(expected[k].shape)}")
        if not torch.isfinite(v.float()).all():
            raise ArtifactError(f"{artifact.path}: tensor {k!r} contains NaN or Inf")
    net.load_state_dict(state, strict=True)
    net.eval()
    return net


def model_tensors(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in net.state_dict().items()}


def load_model(path: str | os.PathLike, kind: str | tuple[str, ...]) -> tuple[torch.nn.Module, Artifact]:
    art = load_artifact(path, kind)
    return build_model(art), art


# --- training checkpoints: model + optimizer + bank + RNG, all as tensors -----------------

def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "class": type(opt).__name__}
    return tensors, meta


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict) -> None:
    if meta.get("class") != type(opt).__name__:
        raise ArtifactError(f"checkpoint optimizer is {meta.get('class')}, expected "
                            f"{type(opt).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta.get("scalars", {}).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes: what a resume compares, so that an artifact rewritten at
    the same path is noticed and one moved elsewhere is not."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ArtifactError(f"cannot read {p}: {exc.strerror or exc}") from None
    return h.hexdigest()
