"""The training loop: one function, :func:`train`, over composable pieces.

    config → model (+ tokenizer / processor, freezing, optional PEFT LoRA) → row stream → optimizer,
    schedule, balancing controller → accelerate.prepare → [resume] → steps → checkpoints → final save

One optimizer step takes ``grad_accum_steps`` micro-batches of ``micro_batch_size`` rows on each process.
The loss is the sum of token losses over the whole global batch divided by the global number of counted
tokens (counted before the backward passes and all-reduced), so 2 processes × b rows, 1 process × 2b rows
and 1 process × b rows × 2 accumulation steps all compute the same update. After the step the expert loads
of the global batch drive the balancing controller (no gradient goes through the biases).

Outputs under ``output_dir``: ``config.yaml``, ``run_info.json`` (trainable parameter count …),
``metrics.jsonl`` (one line per logged step), ``tensorboard/``, ``checkpoints/step-N/`` and ``final/``
(``save_pretrained``: loads with ``ZayaLM`` / ``ZayaVL.from_pretrained``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from zaya_vl.fileio import OutputLock, OutputLockedError, write_atomic
from zaya_vl.training import balancing, sharding
from zaya_vl.training.cell_loss import cell_loss, count_cells
from zaya_vl.training.checkpoint import (complete_checkpoints, latest_checkpoint, load_checkpoint,
                                         save_checkpoint, write_json_atomic)
from zaya_vl.training.collate import collate_rows, count_targets
from zaya_vl.training.config import ConfigError, RunConfig, save_config
from zaya_vl.training.data import SampleEncoder, open_records
from zaya_vl.training.freezing import apply_freezing
from zaya_vl.training.loader import micro_batch_loader
from zaya_vl.training.models import add_lora, build_model, save_final, upcast_trainable_
from zaya_vl.training.packing import RowStream
from zaya_vl.training.schedules import build_scheduler

logger = logging.getLogger("zaya_vl.training")

BALANCING_STATE = "balancing.pt"


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    steps: int
    resumed_from: Path | None
    trainable_parameters: int
    total_parameters: int
    metrics: list[dict] = field(default_factory=list)  # this run's logged steps (main process)


def resolve_mixed_precision(setting: str, cpu: bool) -> str:
    if setting != "auto":
        return setting
    if not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; weight decay on matrices only (not norms, biases, scales)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas),
                             eps=config.eps)


def _flat_hparams(config: RunConfig) -> dict:
    """The config as TensorBoard hparams: ``group/key`` → a scalar or a JSON string."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}/{key}" if prefix else key, item)
        else:
            flat[prefix] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)

    walk("", config.to_dict())
    return flat


class Trainer:
    """Holds the pieces of one run; :func:`train` is the entry point."""

    def __init__(self, config: RunConfig, resume: bool | str | None = False, tokenizer=None,
                 processor=None, overwrite: bool = False) -> None:
        self.config = config
        self.overwrite = overwrite
        self.output_dir = Path(config.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        loop = config.train
        mixed_precision = resolve_mixed_precision(loop.mixed_precision, loop.cpu)
        find_unused = {"true": True, "false": False}.get(loop.ddp_find_unused_parameters)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if config.model.dtype != "float32" and mixed_precision == "no":
            raise ConfigError(f"model.dtype={config.model.dtype} keeps frozen weights in low precision; "
                              "it needs train.mixed_precision bf16 (autocast) so fp32 trainable weights mix")
        # Several processes without a GPU: accelerate uses gloo only when told the run is on CPU.
        cpu = loop.cpu or (not torch.cuda.is_available() and world_size > 1)
        self.tensorboard = loop.tensorboard and _tensorboard_available()
        try:
            self.accelerator = Accelerator(
                mixed_precision=mixed_precision,
                gradient_accumulation_steps=loop.grad_accum_steps,
                cpu=cpu,
                log_with="tensorboard" if self.tensorboard else None,
                project_dir=str(self.output_dir),
                step_scheduler_with_optimizer=False,
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=bool(find_unused))],
            )
        except ValueError as error:
            if "already been initialized" not in str(error):
                raise
            # accelerate keeps its settings for the life of the process and offers no public way to reset them.
            raise ConfigError(f"train.mixed_precision / train.cpu: an earlier run in this process set accelerate "
                              f"up with other settings, which accelerate keeps until the process ends ({error}). "
                              "Start this run in a new process") from None
        self.output_lock = self._lock_output_dir()
        try:
            self.resume_path = self._resume_path(resume)
        except BaseException:
            if self.output_lock is not None:
                self.output_lock.release()
            raise
        if loop.tensorboard and not self.tensorboard:
            self._warn("train.tensorboard is on but the tensorboard package is not installed (pip install "
                       "tensorboard): logging to metrics.jsonl only")

        set_seed(config.seed)
        self.bundle = build_model(config.model, config.seed, tokenizer=tokenizer, processor=processor)
        model = self.bundle.model
        if find_unused is None and self.bundle.is_vl:
            # Text-only rows leave the vision LoRA and merger unused on that process.
            self.accelerator.ddp_handler.find_unused_parameters = True
        with_lora = config.lora is not None
        if with_lora:
            model = add_lora(model, config.lora)
        self.freeze_report = apply_freezing(model, config.stage, self.bundle.is_vl, config.freeze.train,
                                            config.freeze.freeze, with_lora=with_lora)
        if config.model.dtype != "float32":
            upcast_trainable_(model)
        self.with_lora = with_lora
        self.fsdp = self._fsdp_enabled(with_lora)

        records, image_root = open_records(config.data)
        encoder = SampleEncoder(self.bundle.tokenizer, config.data, self.bundle.processor, image_root)
        self.stream = RowStream(
            records, encoder, seq_len=config.data.seq_len, packing=config.data.packing, seed=config.seed,
            shuffle=config.data.shuffle, on_invalid=config.data.on_invalid,
            split_long_documents=config.data.split_long_documents,
            warn=logger.warning if self.accelerator.is_main_process else _quiet,
            # VL: image samples are planned unencoded; each process decodes only the images of its own rows.
            defer=encoder.has_images if self.bundle.is_vl else None)
        self._batches = None  # this process's micro-batches, started at the first step (after any resume)
        self.data_state = self.stream.state_dict()  # the stream's state after the last micro-batch trained on
        self.late_skipped = 0  # image samples found invalid when their rows were encoded, all processes

        if self.fsdp:  # before the optimizer exists: it holds the sharded parameters
            model = sharding.fully_shard_model(model, self.accelerator.device)
        optimizer = build_optimizer(model, config.optim)
        self.schedule = scheduler = build_scheduler(optimizer, config.schedule, loop.max_steps)

        self.routers = balancing.find_routers(model)
        self.controller = None
        if self.routers and self._balancing_enabled():
            gains = config.balancing
            self.controller = balancing.BalancingController(
                balancing.current_biases(model), kp=gains.kp, ki=gains.ki, kd=gains.kd,
                include_skip=gains.include_skip, output_limit=gains.output_limit,
                active_layers=self._trained_routers() if gains.enabled == "auto" else None)

        self._configure_deepspeed()
        if self.fsdp:
            # accelerate must not wrap the sharded model in DDP, nor save the optimizer's shards as one file: the
            # trainer saves both with torch.distributed.checkpoint; accelerate keeps the scheduler and RNG states.
            self.model, self.optimizer = model, optimizer
            self.scheduler = self.accelerator.prepare(scheduler)
        else:
            self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.step = 0
        self.metrics: list[dict] = []

    # -- setup helpers -----------------------------------------------------------------------------------
    def _lock_output_dir(self) -> OutputLock | None:
        """One run per output folder: a second live run would mix metrics and delete the other's checkpoints.
        The main process holds the lock; every process learns whether it got it, so none is left waiting."""
        lock, refusal = None, None
        if self.accelerator.is_main_process:
            try:
                lock = OutputLock(self.output_dir, "zaya-vl train").acquire()
            except OutputLockedError as error:
                refusal = str(error)
        if self.accelerator.num_processes > 1:
            refusal = broadcast_object_list([refusal])[0]
        if refusal:
            raise ConfigError(refusal)
        return lock

    def _resume_path(self, resume) -> Path | None:
        existing = complete_checkpoints(self.checkpoint_root)
        if resume is True:
            latest = latest_checkpoint(self.checkpoint_root)
            if latest is None:
                # Nothing to continue. A run killed before its first checkpoint is simply started again (so
                # `--resume` stays safe to always pass); a finished one is not silently trained over.
                self._refuse_earlier_run("there is no checkpoint to resume from", only=("final",))
            return latest
        if resume:
            return Path(resume)
        if existing:
            self._refuse_earlier_run(f"it has checkpoints (newest {existing[-1][1].name}); pass --resume to "
                                     "continue that run")
        self._refuse_earlier_run("")
        return None

    def _fsdp_enabled(self, with_lora: bool) -> bool:
        if not self.config.train.fsdp:
            return False
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ConfigError(f"train.fsdp shards the model in the trainer, but accelerate was launched with "
                              f"{self.accelerator.distributed_type.value}: launch with a plain multi-process "
                              "config (--multi_gpu), or set train.fsdp false to use accelerate's plugin")
        if with_lora:
            raise ConfigError("train.fsdp with lora: merging a sharded PEFT model for final/ is not supported; "
                              "train LoRA without train.fsdp")
        if self.accelerator.num_processes == 1:
            self._info("train.fsdp: a single process holds the whole model, so nothing is sharded")
            return False
        return True

    def _refuse_earlier_run(self, reason: str, only: tuple[str, ...] = ("final", "metrics.jsonl", "checkpoints")
                            ) -> None:
        """Starting fresh over an earlier run's ``final/``, ``metrics.jsonl`` or checkpoints replaces them: only
        with ``overwrite``, which clears them first so nothing of the old run mixes into the new one. ``only``: the
        outputs whose presence refuses (all of them are cleared under ``overwrite``)."""
        if not any(_has_content(self.output_dir / name) for name in only):
            return
        earlier = [name for name in ("final", "metrics.jsonl", "checkpoints") if _has_content(self.output_dir / name)]
        if not self.overwrite:
            reason = f"; {reason}" if reason else ""
            raise ConfigError(f"{self.output_dir} holds an earlier run ({', '.join(earlier)}){reason}. Pass "
                              "--resume to continue it, --overwrite to replace it, or choose another output_dir")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            for name in earlier:
                target = self.output_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        self.accelerator.wait_for_everyone()

    def _configure_deepspeed(self) -> None:
        """DeepSpeed needs the micro-batch size (there is no prepared DataLoader to read it from) and does the
        clipping itself: fill both from the training config where the accelerate config says ``auto``."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is None:
            return
        ds_config = plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = self.config.train.micro_batch_size
        if ds_config.get("gradient_clipping", "auto") == "auto":
            ds_config["gradient_clipping"] = self.config.optim.grad_clip or 0.0

    def _trained_routers(self) -> list[bool]:
        """Per MoE layer: is any of its router's parameters trainable?"""
        return [any(p.requires_grad for p in router.parameters()) for router in self.routers]

    def _balancing_enabled(self) -> bool:
        setting = self.config.balancing.enabled
        if setting != "auto":
            return setting == "true"
        # Steer the routers only while they are being trained: a frozen LM keeps its routing exactly.
        return any(self._trained_routers())

    def _warn(self, message: str) -> None:
        if self.accelerator.is_main_process:
            logger.warning(message)

    def _info(self, message: str) -> None:
        if self.accelerator.is_main_process:
            logger.info(message)

    # -- data --------------------------------------------------------------------------------------------
    def _local_micro_batch(self) -> tuple[dict[str, torch.Tensor], int]:
        """This process's rows of the next global micro-batch (see ``loader.py``), and how many of its image
        samples were skipped when encoded."""
        if self._batches is None:
            data = self.config.data
            collate = partial(collate_rows, pad_token_id=self.bundle.tokenizer.pad_token_id, seq_len=data.seq_len,
                              pad_to=data.pad_to, with_segments=data.packing)
            self._batches = iter(micro_batch_loader(
                self.stream, collate, rows_per_process=self.config.train.micro_batch_size,
                process_index=self.accelerator.process_index, num_processes=self.accelerator.num_processes,
                num_workers=data.num_workers))
        item = next(self._batches)
        self.data_state = item["state"]
        batch = item["batch"]
        if self.fsdp and self.bundle.is_vl and "pixel_values" not in batch:
            batch = sharding.add_placeholder_image(batch, self.bundle.model.config,
                                                   self.bundle.tokenizer.pad_token_id)
        return batch, sum(item["skipped"].values())

    # -- state -------------------------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"data": self.data_state, "late_skipped": self.late_skipped,
                "num_processes": self.accelerator.num_processes,
                "max_steps": self.config.train.max_steps,
                "global_rows_per_step": self.config.train.micro_batch_size * self.config.train.grad_accum_steps
                * self.accelerator.num_processes}

    def save(self) -> Path:
        extra = {BALANCING_STATE: self.controller.state_dict()} if self.controller is not None else {}
        path = save_checkpoint(self.accelerator, self.checkpoint_root, self.step, self._trainer_state(), extra,
                               keep=self.config.train.keep_checkpoints,
                               sharded=(self.model, self.optimizer) if self.fsdp else None)
        self._info(f"saved checkpoint {path}")
        return path

    def restore(self, path: Path) -> None:
        state = load_checkpoint(self.accelerator, path, sharded=(self.model, self.optimizer) if self.fsdp else None)
        rows_now = self._trainer_state()["global_rows_per_step"]
        if state.get("global_rows_per_step", rows_now) != rows_now:
            self._warn(f"the checkpoint was written with {state['global_rows_per_step']} rows per step, this run "
                       f"uses {rows_now}: training continues, but not as an exact resume")
        if state.get("max_steps", self.config.train.max_steps) != self.config.train.max_steps:
            self._info(f"train.max_steps changed from {state['max_steps']} to {self.config.train.max_steps}: the "
                       "learning-rate schedule follows the new value from here on")
        # The sharded optimizer's state is loaded after the scheduler's and brings back the saved run's rates.
        self.schedule.set_optimizer_lr()
        self.stream.load_state_dict(state["data"])
        self.data_state, self.late_skipped = state["data"], int(state.get("late_skipped", 0))
        if self.controller is not None:
            balancing_file = path / BALANCING_STATE
            if balancing_file.is_file():
                # Only tensors and plain values: a checkpoint someone hands us must not run code when read.
                try:
                    balancing_state = torch.load(balancing_file, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as error:
                    raise ConfigError(f"{balancing_file}: refused, it holds more than tensors and plain values "
                                      f"(loading it would run code): {error}") from None
                self.controller.load_state_dict(balancing_state)
        self.step = int(state["step"])
        if self.accelerator.is_main_process:
            self._truncate_metrics(self.step)
        self._info(f"resumed from {path} at step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and _parse_step(line) is not None and _parse_step(line) <= step]
        write_atomic(path, "".join(line + "\n" for line in kept))

    # -- the loop ----------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        accelerator, loop = self.accelerator, self.config.train
        started = time.perf_counter()
        drawn = [self._local_micro_batch() for _ in range(loop.grad_accum_steps)]
        micro_batches = [batch for batch, _ in drawn]
        device = accelerator.device
        weight = loop.cell_loss_weight
        local_counts = [sum(count_targets(batch) for batch in micro_batches),
                        sum(count_cells(batch.get("cell_labels")) for batch in micro_batches) if weight else 0,
                        sum(skipped for _, skipped in drawn)]
        global_count, global_cells, late_skipped = (
            int(n) for n in accelerator.reduce(torch.tensor(local_counts, device=device), reduction="sum"))
        self.late_skipped += late_skipped
        # accelerate divides by grad_accum_steps and DDP averages over processes; undo both so the gradient
        # is (sum of token losses over the global batch) / (global counted tokens).
        scale = accelerator.num_processes * loop.grad_accum_steps / max(global_count, 1)
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        cell_sum = torch.zeros((), dtype=torch.float64, device=device)
        loads = None
        for batch in micro_batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            cell_labels = batch.pop("cell_labels", None) if weight else None
            batch.pop("cell_labels", None)
            count = count_targets(batch)
            # Sharded, the zero of a micro-batch without targets must come through the forward (the logits).
            zero_from_logits = self.fsdp and count == 0
            with accelerator.accumulate(self.model):
                with accelerator.autocast():  # the auxiliary loss too: it reads the model's head like the forward
                    out = self.model(**batch, output_router_logits=bool(self.routers), return_logits=zero_from_logits,
                                     loss_chunk_size=loop.loss_chunk_size, use_cache=False)
                    cell = None
                    if cell_labels is not None:
                        image_mask = batch["input_ids"] == self.bundle.model.config.image_token_id
                        cell = cell_loss(self._base_model(), out.image_hidden_states, image_mask, cell_labels,
                                         reduction="sum")
                lm_loss = batch_loss = out.loss * count
                if cell is not None:  # × scale below: weight × (sum of cell losses) / (global labelled cells)
                    cell_sum += cell.detach().double()
                    batch_loss = lm_loss + weight * cell * (max(global_count, 1) / max(global_cells, 1))
                if self.routers:
                    layer_loads = balancing.expert_loads(out["routings"], batch["attention_mask"], len(self.routers))
                    loads = layer_loads if loads is None else loads + layer_loads
                if batch_loss.grad_fn is None:  # no counted token here: a zero that still reaches every weight
                    reach = out.logits.float().sum() if zero_from_logits else sum(p.sum() for p in self.trainable)
                    batch_loss = batch_loss + reach * 0.0
                accelerator.backward(batch_loss * scale)
                loss_sum += lm_loss.detach().double()
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with accelerate (internal error)")
        max_norm = self.config.optim.grad_clip if self.config.optim.grad_clip is not None else math.inf
        if self.fsdp:
            grad_norm = sharding.clip_grad_norm_(self.trainable, max_norm)
        else:
            grad_norm = accelerator.clip_grad_norm_(self.trainable, max_norm)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

        total_loss = accelerator.reduce(loss_sum, reduction="sum")
        metrics = {"step": self.step, "loss": float(total_loss) / max(global_count, 1), "lr": lr,
                   "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                   "tokens": global_count, "data/epoch": self.data_state["epoch"],
                   "data/skipped": sum(self.data_state["skipped"].values()) + self.late_skipped}
        if global_cells:
            metrics["cell_loss"] = float(accelerator.reduce(cell_sum, reduction="sum")) / global_cells
        if loads is not None:
            loads = accelerator.reduce(loads.to(device), reduction="sum").cpu()
            metrics.update(balancing.load_metrics(loads))
            if self.controller is not None:
                balancing.set_biases(accelerator.unwrap_model(self.model), self.controller.update(loads))
        seconds = time.perf_counter() - started
        metrics["tokens_per_second"] = global_count / seconds if seconds > 0 else 0.0
        return metrics

    def _base_model(self) -> torch.nn.Module:
        """The ZayaLM / ZayaVL itself: through accelerate's wrapper (DDP) and PEFT's."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def log(self, metrics: dict) -> None:
        self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
        if self.accelerator.is_main_process:
            self.metrics.append(metrics)
            with open(self.output_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(metrics) + "\n")

    def run(self) -> TrainResult:
        accelerator, loop, config = self.accelerator, self.config.train, self.config
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output_dir / "config.yaml")
        accelerator.wait_for_everyone()
        if self.resume_path is not None:
            self.restore(self.resume_path)
        elif accelerator.is_main_process:
            (self.output_dir / "metrics.jsonl").write_text("")
        report = self.freeze_report
        self._info(f"stage {config.stage}: {report.describe()}")
        if accelerator.is_main_process:
            write_json_atomic(self.output_dir / "run_info.json", {
                "stage": config.stage, "model_kind": "vl" if self.bundle.is_vl else "lm",
                "trainable_parameters": report.trainable_parameters, "total_parameters": report.total_parameters,
                "trainable_tensors": report.trainable_names, "num_processes": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision, "balancing": self.controller is not None,
                "resumed_from": str(self.resume_path) if self.resume_path else None,
            })
        if self.tensorboard:
            accelerator.init_trackers("tensorboard", config=_flat_hparams(config))
            accelerator.log({"model/trainable_parameters": report.trainable_parameters}, step=self.step)

        progress = tqdm(total=loop.max_steps, initial=self.step, desc=f"{config.stage}", dynamic_ncols=True,
                        disable=not (loop.progress and accelerator.is_local_main_process))
        while self.step < loop.max_steps:
            metrics = self.train_step()
            if self.step % loop.log_every == 0 or self.step == loop.max_steps:
                self.log(metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            if loop.save_every and (self.step % loop.save_every == 0 or self.step == loop.max_steps):
                self.save()
        progress.close()

        final_dir = None
        if loop.save_final:
            final_dir = save_final(accelerator, self.model, self.bundle, self.output_dir / "final", self.with_lora,
                                   full_state_dict=sharding.full_state_dict(self.model) if self.fsdp else None)
            self._info(f"saved the trained model to {final_dir}")
        accelerator.end_training()
        return TrainResult(self.output_dir, final_dir, self.step, self.resume_path, report.trainable_parameters,
                           report.total_parameters, self.metrics)


def _quiet(message: str) -> None:
    pass


def _tensorboard_available() -> bool:
    from accelerate.utils import is_tensorboard_available

    return is_tensorboard_available()


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir()) or path.is_file() and path.stat().st_size > 0


def _parse_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def train(config: RunConfig, resume: bool | str | None = False, *, tokenizer=None, processor=None,
          overwrite: bool = False) -> TrainResult:
    """Run ``config`` to ``train.max_steps``. ``resume=True`` continues from the newest complete checkpoint in
    ``output_dir`` (or starts fresh if there is none); a path resumes from that checkpoint. ``tokenizer`` /
    ``processor`` objects replace loading them from the config's ``model.tokenizer`` folder."""
    trainer = Trainer(config.validate(), resume, tokenizer=tokenizer, processor=processor, overwrite=overwrite)
    try:
        return trainer.run()
    finally:
        if trainer.output_lock is not None:
            trainer.output_lock.release()


__all__ = ["TrainResult", "Trainer", "build_optimizer", "resolve_mixed_precision", "train"]
