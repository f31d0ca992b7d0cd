"""The training loop shared by the methods: optimiser, schedule, early stopping, checkpoints.

Every epoch ends with an atomically written checkpoint that holds the configurations, the
weights, the optimiser and schedule, every RNG state and the early-stopping state, so a run
interrupted at any point resumes from its last complete epoch and ends with the same
parameters as an uninterrupted run (the data order of epoch e is seeded with seed + e).

Two-stage models (Bayes-PFL, fapfl with the class_mapping head) follow Bayes-PFL: stage 1
trains everything and stops when validation pixel AP has not improved for ``patience + 1``
epochs (the official counter); the best stage-1 weights are restored and stage 2 trains the
image path on validation image AP the same way, ending on its best weights. Both stages share
the ``epochs`` budget, as officially, so stage 2 never runs if stage 1 never plateaus (a
warning says so); ``stage2_epochs = N`` reserves the last N epochs of the budget for stage 2
(stage 1 then ends after ``epochs - N`` epochs at the latest). Every checkpoint records the
stage it ends in.

The model's own random draws in training (Bayes-PFL's flow noise and bank pair) come from a
stream the trainer keeps apart from the data pipeline's (seeded from the run's seed, stored in
every checkpoint), so they do not depend on data-loader workers, augmentation draws or the
number of processes.

Under ``torchrun`` (:mod:`engine.distributed`) ``--batch_size`` stays the global batch: each of
the N processes trains on its 1/N of every batch (``DistributedSampler`` with the run's seed
gives the same batches as one process), the flow noise is drawn for the whole batch and each
process takes its images' rows, losses that pool over a batch pool over all of it (a
``models.losses.BatchSplit`` passed to the model) and DistributedDataParallel averages the
gradients: one step on N processes is the single-process step. Validation is scored by all
processes and its figures come from rank 0, so early stopping and the stage switch decide
identically everywhere; rank 0 logs and writes the checkpoints, which hold every process's RNG
state for an exact resume.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from datasets.meta import collate
from engine import distributed
from engine.feature_cache import DatasetCache
from models.factory import learnable_state_dict, save_checkpoint
from models.losses import BatchSplit
from utils.errors import UserError

log = logging.getLogger("zsad.train")


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    seed: int
    save_path: Path
    lr: Dict[str, float]  # per parameter-group name ("all" for single-group methods)
    betas: tuple = (0.5, 0.999)
    weight_decay: float = 0.0  # > 0: AdamW's decoupled decay (AdaCLIP), else Adam
    warmup: float = 0.1  # fraction of the steps, cosine schedule (two-stage models only)
    patience: int = 3
    num_workers: int = 0
    keep_checkpoints: int = 3
    save_freq: int = 1
    stage2_epochs: int = 0  # epochs of the budget reserved for stage 2 (two-stage models)
    interrupt_after_epoch: Optional[int] = None  # test hook: behave as if Ctrl-C hit then


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    stage: int = 1
    best: float = -math.inf
    patience: int = 0
    best_state: Optional[Dict[str, torch.Tensor]] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    done: bool = False


def rng_state() -> Dict[str, Any]:
    """Every RNG state as tensors, ints and lists, so checkpoints load with ``weights_only``."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "words": list(words), "gauss": gauss},
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py, nps = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["words"]), py["gauss"]))
    np.random.set_state((nps["kind"], np.array(nps["keys"], dtype=np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cosine_with_warmup(optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up over ``warmup_fraction`` of the steps, then a half cosine to 0."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LossStep(nn.Module):
    """A training step's forward, ending in the loss terms: the module DistributedDataParallel
    wraps, so the tensors it follows are exactly those the gradients flow from."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Optional[torch.Tensor], class_names, masks: torch.Tensor, labels: torch.Tensor,
                features=None, split: Optional[BatchSplit] = None) -> Dict[str, torch.Tensor]:
        return self.model.loss(self.model(images, class_names, features, split), masks, labels, split)


class ModelStream:
    """The random stream of the model's training draws: the global torch generators (CPU and
    the training GPU) are swapped for it while a step runs."""

    def __init__(self, seed: int, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        derived = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])  # apart from seed's own stream
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(derived)
            self.state = self._get()

    def _get(self) -> Dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.devices:
            state["cuda"] = torch.cuda.get_rng_state(self.devices[0])
        return state

    @contextlib.contextmanager
    def active(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.state["cpu"])
            if self.devices and "cuda" in self.state:
                torch.cuda.set_rng_state(self.state["cuda"], self.devices[0])
            yield
            self.state = self._get()


class Trainer:
    """Runs epochs of ``model`` on ``dataset``; ``validate(model)`` returns validation scores.

    With ``cache`` (the dataset's :class:`engine.feature_cache.DatasetCache`) the image features
    come from the cache once it is filled; ``epoch_seconds`` records each epoch's duration.
    """

    def __init__(self, model, dataset, settings: TrainSettings, backbone_config, device: torch.device,
                 validate: Optional[Callable[[Any], Dict[str, Optional[float]]]] = None,
                 run_info: Optional[Dict[str, Any]] = None, cache: Optional[DatasetCache] = None,
                 ctx: Optional[distributed.Context] = None):
        self.model, self.dataset, self.settings = model, dataset, settings
        self.backbone_config, self.device, self.validate = backbone_config, device, validate
        self.run_info = run_info or {}
        self.cache = cache
        self.epoch_seconds: List[float] = []
        self.ctx = ctx or distributed.SINGLE
        if settings.batch_size % self.ctx.world_size:  # train.py says so before anything is built
            raise ValueError(f"batch size {settings.batch_size} is not a multiple of {self.ctx.world_size} processes")
        if cache is not None and self.ctx.enabled:  # train.py refuses --feature_cache under torchrun
            raise ValueError("the feature cache runs in one process")
        self.local_batch = settings.batch_size // self.ctx.world_size
        self.two_stage = model.two_stage
        self.state = TrainState()
        self.steps_per_epoch = math.ceil(len(dataset) / settings.batch_size)
        self.stream = ModelStream(settings.seed, device)
        self.step = LossStep(model)
        if self.ctx.enabled:
            frozen = [name for name, p in self.step.named_parameters() if not p.requires_grad]
            # every process loads the same frozen CLIP: only the learned parameters are synchronised
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.step, frozen)
            self.step = DistributedDataParallel(self.step, device_ids=[device] if device.type == "cuda" else None,
                                                find_unused_parameters=True, broadcast_buffers=False)
        self._build_optimizer()

    # ------------------------------------------------------------------ set-up
    def _build_optimizer(self) -> None:
        groups, betas = self.model.param_groups(self.settings.lr), self.settings.betas
        decay = self.settings.weight_decay
        if decay > 0:  # AdaCLIP's AdamW
            self.optimizer = torch.optim.AdamW(groups, betas=betas, weight_decay=decay)
        else:
            self.optimizer = torch.optim.Adam(groups, betas=betas)
        self.scheduler = None
        if self.two_stage and self.state.stage == 1:  # the official schedule drives stage 1 only
            self.scheduler = cosine_with_warmup(self.optimizer, self.settings.epochs * self.steps_per_epoch,
                                                self.settings.warmup)

    def resume(self, training: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint's ``training`` entry."""
        self.model.load_state_dict(state_dict, strict=False)
        saved = training["state"]
        self.state = TrainState(**saved)
        if self.two_stage:
            self.model.set_stage(self.state.stage)
        self._build_optimizer()
        self.optimizer.load_state_dict(training["optimizer"])
        if self.scheduler is not None and training.get("scheduler"):
            self.scheduler.load_state_dict(training["scheduler"])
        per_rank = training.get("rng_per_rank") or [training["rng"]]
        if len(per_rank) != self.ctx.world_size and self.ctx.world_size > 1:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the data pipeline's "
                        "random draws (augmentation) continue from rank 0's state", len(per_rank), self.ctx.world_size)
        set_rng_state(per_rank[self.ctx.rank] if len(per_rank) == self.ctx.world_size else training["rng"])
        if training.get("model_rng") is not None:
            self.stream.state = dict(training["model_rng"])
        if training.get("model_random_state") is not None:
            self.model.set_random_state(training["model_random_state"])
        log.info("resuming after epoch %d (stage %d)", self.state.epoch, self.state.stage)

    def _loader(self, epoch: int) -> DataLoader:
        """Epoch ``epoch``'s batches of this process: a permutation seeded with seed + epoch
        (the same one whatever the number of processes), dealt out round-robin over them."""
        # the cached view has the same length, so the sampler draws the same order either way
        dataset = self.dataset if self.cache is None else self.cache.loader_dataset()
        sampler = DistributedSampler(dataset, self.ctx.world_size, self.ctx.rank, shuffle=True,
                                     seed=self.settings.seed, drop_last=False)  # one process: the permutation
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.settings.seed + epoch)  # the workers' seeds
        return DataLoader(dataset, batch_size=self.local_batch, sampler=sampler, generator=generator,
                          num_workers=self.settings.num_workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", drop_last=False)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, name: str, with_training: bool = True) -> Path:
        """Rank 0 writes ``name`` (every process takes part: the RNG states are gathered)."""
        path = self.settings.save_path / name
        training = None
        if with_training:
            per_rank = distributed.gather_object(rng_state(), self.ctx)
            training = {"state": self.state.__dict__, "optimizer": self.optimizer.state_dict(),
                        "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                        "rng": rng_state(), "model_rng": self.stream.state,
                        "model_random_state": self.model.random_state(),
                        "rng_per_rank": per_rank if self.ctx.enabled else None,
                        "settings": {k: str(v) for k, v in self.settings.__dict__.items()},
                        "run": self.run_info}
        if self.ctx.is_main:
            save_checkpoint(path, self.model, self.backbone_config, training, self.summary())
        distributed.barrier(self.ctx)
        return path

    def summary(self) -> Dict[str, Any]:
        """What a checkpoint says about its run: name, seed, the stage it ends in, epochs per stage."""
        stages = (1, 2) if self.two_stage else (1,)
        per_stage = [sum(1 for h in self.state.history if h["stage"] == s) for s in stages]
        return {"run_name": self.settings.save_path.name, "seed": self.settings.seed, "stage": self.state.stage,
                "stages": len(stages), "epochs_per_stage": per_stage}

    def _prune(self) -> None:
        if not self.ctx.is_main:
            return
        keep = self.settings.keep_checkpoints
        files = sorted(self.settings.save_path.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        for old in files[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ loop
    def _epoch(self) -> Dict[str, float]:
        model = self.model
        model.train()
        self.step.train()
        sums: Dict[str, float] = {}
        epoch = self.state.epoch + 1
        bar = tqdm(self._loader(epoch), total=self.steps_per_epoch, dynamic_ncols=True, disable=not self.ctx.is_main,
                   desc=f"epoch {epoch}/{self.settings.epochs} stage {self.state.stage}")
        for step, batch in enumerate(bar, start=1):
            masks = batch["mask"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device)
            if self.cache is None:
                images, features = batch["image"].to(self.device, non_blocking=True), None
            else:
                images, features = None, self.cache.features(self.model, batch, self.device)
            terms = self.forward_step(images, batch["cls_name"], masks, labels, features)
            total = terms["total"].detach().reshape(1)
            if not bool(torch.isfinite(distributed.all_reduce_(total.clone(), self.ctx)).all()):
                raise UserError(f"training diverged in epoch {epoch}, step {step}: the loss is "
                                f"{float(terms['total'])}; the last complete checkpoint is intact; lower the "
                                "learning rates (--learning_rate, or the --learning_rate_* group rates)")
            self.optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix({k: f"{v / step:.3f}" for k, v in sums.items() if k in ("total", "map1", "map",
                                                                                 "segmentation", "image")})
        return self._mean_over_processes({k: v / max(1, self.steps_per_epoch) for k, v in sums.items()})

    def forward_step(self, images: torch.Tensor, class_names, masks: torch.Tensor, labels: torch.Tensor,
                     features=None) -> Dict[str, torch.Tensor]:
        """The loss terms of this process's part of a batch, with the model's random draws from
        the trainer's stream and, under torchrun, the whole batch's noise and pooled totals."""
        split = None
        if self.ctx.enabled:
            split = BatchSplit(distributed.differentiable_sum, len(class_names) * self.ctx.world_size, self.ctx.rank,
                               self.ctx.world_size)
        with self.stream.active():
            return self.step(images, class_names, masks, labels, features, split)

    def _mean_over_processes(self, means: Dict[str, float]) -> Dict[str, float]:
        """The epoch's mean loss terms over every process (the same record on each)."""
        if not self.ctx.enabled:
            return means
        every = distributed.all_gather_object(means, self.ctx)
        return {k: sum(m[k] for m in every) / len(every) for k in means}

    def _early_stopping(self, scores: Dict[str, Optional[float]]) -> None:
        """Bayes-PFL's rule: improve (>=) resets; the (patience+1)-th miss ends the stage."""
        if self.two_stage:
            key = "pixel_ap" if self.state.stage == 1 else "image_ap"
        else:
            key = "pixel_ap" if scores.get("pixel_ap") is not None else "image_ap"
        value = scores.get(key)
        if value is None:
            return
        if value >= self.state.best:
            self.state.best, self.state.patience = value, 0
            self.state.best_state = learnable_state_dict(self.model)
            log.info("validation %s improved to %.4f", key, value)
            return
        if self.state.patience < self.settings.patience:
            self.state.patience += 1
            return
        if self.two_stage and self.state.stage == 1:
            self._start_stage2(f"stage 1 stopped early; best pixel AP {self.state.best:.4f}")
        else:
            self._restore_best()
            log.info("early stop; best %s %.4f", key, self.state.best)
            self.state.done = True

    def _start_stage2(self, reason: str) -> None:
        """Restore the best stage-1 weights and switch to stage 2 with a fresh early-stopping state."""
        self._restore_best()
        log.info("%s; starting stage 2", reason)
        self.state.stage, self.state.best, self.state.patience = 2, -math.inf, 0
        self.state.best_state = None
        self.model.set_stage(2)
        self._build_optimizer()

    def _restore_best(self) -> None:
        if self.state.best_state is not None:
            self.model.load_state_dict(self.state.best_state, strict=False)

    def run(self) -> Path:
        """Train until the epochs are spent or early stopping ends; return the final checkpoint."""
        settings = self.settings
        try:
            while self.state.epoch < settings.epochs and not self.state.done:
                start = time.perf_counter()
                means = self._epoch()
                self.epoch_seconds.append(time.perf_counter() - start)
                self.state.epoch += 1
                log.info("epoch %d took %.1f s (%.2f images/s)", self.state.epoch, self.epoch_seconds[-1],
                         len(self.dataset) / self.epoch_seconds[-1])
                scores = self.validate(self.model) if self.validate is not None else {}
                record = {"epoch": self.state.epoch, "stage": self.state.stage, **means, **scores,
                          "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}}
                self.state.history.append(record)
                log.info("epoch %d (stage %d): %s", self.state.epoch, record["stage"],
                         ", ".join(f"{k} {v:.4f}" for k, v in {**means, **scores}.items() if v is not None))
                if scores:
                    self._early_stopping(scores)
                    reserved = settings.stage2_epochs
                    if self.two_stage and self.state.stage == 1 and reserved \
                            and self.state.epoch >= settings.epochs - reserved:
                        self._start_stage2(f"stage 1 has used its {settings.epochs - reserved} of --epochs "
                                           f"{settings.epochs} (--stage2_epochs {reserved} are reserved)")
                if self.state.epoch % settings.save_freq == 0 or self.state.done \
                        or self.state.epoch == settings.epochs:
                    path = self._checkpoint(f"epoch_{self.state.epoch}.pth")
                    log.info("saved %s", path)
                    self._prune()
                if settings.interrupt_after_epoch == self.state.epoch:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            last = sorted(settings.save_path.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            hint = f"; resume with --resume {last[-1]}" if last else ""
            log.error("interrupted during epoch %d: the last complete checkpoint is intact%s",
                      self.state.epoch + 1, hint)
            raise
        if self.validate is not None and not self.state.done:
            self._restore_best()  # the epochs ran out: end on the best validated weights
        if self.two_stage and self.validate is not None and self.state.stage == 1:
            log.warning("stage 1 never plateaued within --epochs %d, so stage 2 (the image head trained on "
                        "validation image AP) never ran and final.pth is a stage-1 model; pass "
                        "--stage2_epochs N to reserve N epochs for stage 2, or raise --epochs", settings.epochs)
        final = self._checkpoint("final.pth", with_training=False)
        log.info("final model (stage %d) written to %s", self.state.stage, final)
        return final
