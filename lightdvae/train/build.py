"""What a run trains and how it describes itself: the model with its optimizer and gradient scaler (wrapped in
``DistributedDataParallel`` under DDP), and the run's ``config.json`` (written through :mod:`lightdvae.runs`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from lightdvae._io import utc_now
from lightdvae.errors import ConfigError
from lightdvae.models import DVAE, build
from lightdvae.runs import clear_run_files, read_config, write_config, write_status
from lightdvae.runtime import versions
from lightdvae.train import distrib
from lightdvae.train.config import TrainConfig
from lightdvae.train.data import TrainData
from lightdvae.train.state import seed_all


@dataclass
class Learner:
    """The model (``name``: its registry name), what the steps call (``net``: the model or its DDP wrapper), the
    optimizer and the gradient scaler (enabled for fp16)."""

    model: DVAE
    name: str
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            "precision fp16 needs a CUDA GPU (autocast to float16 with a GradScaler); on the CPU use bf16 or fp32"
        )
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")


def supports_scheduled_sampling(model: DVAE) -> bool:
    return "ss_prob" in inspect.signature(type(model).forward).parameters


def _model_config(cfg: TrainConfig) -> dict:
    model_config = dict(cfg.model_config)
    if cfg.training == "ss" and "prior_on_own_past" not in model_config and cfg.model.strip().lower() == "srnn":
        # The published scheduled-sampling SRNN also feeds its prior the h of its own past predictions
        # (the authors' code and golden vectors); teacher forcing keeps the classic, parallel SRNN.
        model_config["prior_on_own_past"] = True
    return model_config


def build_learner(cfg: TrainConfig, device: torch.device) -> Learner:
    """The model of ``cfg`` seeded with ``cfg.seed`` (the same initialisation on every process), on ``device``,
    with Adam and the gradient scaler.  Raises :class:`ConfigError` for settings the model or device refuse."""
    check_precision(cfg, device)
    world = distrib.world_size()
    if cfg.batch_size % world:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is the global batch and must divide evenly over {world} processes"
        )
    seed_all(cfg.seed)  # the same initialisation on every process (DDP also broadcasts rank 0's weights)
    try:
        model = build(cfg.model, **_model_config(cfg))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {cfg.model}: {exc}") from None
    if cfg.training == "ss" and not supports_scheduled_sampling(model):
        raise ConfigError(
            "training 'ss' (scheduled sampling) applies to models that feed back their own past speech step "
            f"by step (srnn); {cfg.model} trains with 'tf'"
        )
    model = model.to(device)
    causal_rvae = model.name == "rvae" and model.config.to_dict().get("causal")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    net: torch.nn.Module = model
    if distrib.is_distributed():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Learner(model, "rvae-causal" if causal_rvae else model.name, net, optimizer, scaler)


def run_meta(cfg: TrainConfig, learner: Learner, data: TrainData, device: torch.device) -> dict:
    """The run's description, as config.json records it (without ``created`` / ``resumed``)."""
    model = learner.model
    return {
        "model": learner.name,
        "config": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "training": {k: v for k, v in cfg.to_dict().items() if k not in ("resume", "force")},
        "data": data.info,
        "distributed": {
            "world_size": distrib.world_size(),
            "backend": distrib.backend(),
            "local_batch": data.local_batch,
        },
        "device": str(device),
        "versions": versions(cuda=True),
        "schedules": {
            "kl_warm": "min(1, epoch / kl_warmup_epochs)",
            "ss_prob": "clip((epoch - ss_start) / (ss_end - ss_start), 0, 1)" if cfg.training == "ss" else None,
        },
    }


def write_meta(cfg: TrainConfig, out: Path, meta: dict, start_epoch: int) -> None:
    """Rank 0 writes config.json (a resumed run keeps ``created`` and appends to ``resumed``; a forced one first
    deletes the old run files) and a ``running`` status; ``meta`` gains ``created`` / ``resumed``."""
    if distrib.is_main():
        if cfg.resume:
            old = read_config(out)
            meta["created"] = old.get("created")
            meta["resumed"] = [*old.get("resumed", []), {"at_epoch": start_epoch, "time": utc_now()}]
        else:
            if cfg.force:
                clear_run_files(out)
            meta["created"] = utc_now()
        write_config(out, meta)
        write_status(out, "running", epoch=start_epoch, epochs=cfg.epochs)
    distrib.barrier()
