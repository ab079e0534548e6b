"""Training checkpoints in safetensors: tensors (weights, optimizer state) plus string metadata
(config, epoch, history). Written atomically; read without pickle, so an untrusted checkpoint
cannot run code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qrdeploy.core.fileio import atomic_write_bytes
from qrdeploy.errors import CheckpointError

FORMAT = "qrdeploy-checkpoint-1"


@dataclass
class Checkpoint:
    """What a checkpoint holds: named tensor groups ("model", "best", "optim") and metadata."""

    tensors: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    from safetensors.torch import save

    flat = {f"{group}/{k}": v.detach().cpu().contiguous()
            for group, tensors in ckpt.tensors.items() for k, v in tensors.items()}
    # One metadata key: safetensors keeps metadata in a hash map whose order varies per process,
    # so several keys would make the same checkpoint differ byte for byte between runs.
    header = json.dumps({"format": FORMAT, "meta": ckpt.meta}, sort_keys=True)
    return atomic_write_bytes(path, save(flat, metadata={"qrdeploy": header}))


def load_checkpoint(path: str | Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    data = p.read_bytes()
    try:
        flat = load(data)
        header = json.loads(_metadata(data).get("qrdeploy", "{}"))
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{p} is not a qrdeploy safetensors checkpoint: {exc}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a qrdeploy checkpoint (format {header.get('format')!r})")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        group, _, name = key.partition("/")
        tensors.setdefault(group, {})[name] = value
    return Checkpoint(tensors, dict(header.get("meta", {})))


def _metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8:
        raise ValueError("bad header length")
    meta = json.loads(data[8:8 + n]).get("__metadata__", {})
    return dict(meta) if isinstance(meta, dict) else {}


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """Flatten an optimizer's state into tensors plus its JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {f"{idx}.{k}": (v if torch.is_tensor(v) else torch.tensor(v))
               for idx, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: Any
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})
