"""zaya_vl.training: the accelerate trainer for ZAYA1 and ZAYA1-VL.

    from zaya_vl.training import load_config, train
    result = train(load_config("examples/train/text_sft.yaml"), resume=True)

or ``zaya-vl train CONFIG [--resume]`` (``accelerate launch -m zaya_vl.training CONFIG`` for several
processes). Modules: ``config`` (YAML → dataclasses), ``data`` (records → token ids + labels), ``packing``
(rows with document boundaries), ``collate``, ``schedules``, ``balancing`` (PID on the MoE balancing biases),
``freezing`` (stage presets), ``checkpoint`` (atomic save, exact resume), ``models``, ``trainer``, ``cli``.
"""

from zaya_vl.training.balancing import BalancingController, expert_loads, load_metrics
from zaya_vl.training.checkpoint import is_complete, latest_checkpoint
from zaya_vl.training.collate import collate_rows, count_targets
from zaya_vl.training.config import ConfigError, RunConfig, config_from_dict, load_config
from zaya_vl.training.data import DataError, Encoded, InvalidSample, SampleEncoder, open_records
from zaya_vl.training.freezing import apply_freezing
from zaya_vl.training.packing import Row, RowStream
from zaya_vl.training.schedules import LRMultiplier, StepSchedule, build_scheduler
from zaya_vl.training.trainer import TrainResult, Trainer, train

__all__ = [
    "BalancingController", "ConfigError", "DataError", "Encoded", "InvalidSample", "LRMultiplier", "Row",
    "RowStream", "RunConfig", "SampleEncoder", "StepSchedule", "TrainResult", "Trainer", "apply_freezing", "build_scheduler",
    "collate_rows", "config_from_dict", "count_targets", "expert_loads", "is_complete", "latest_checkpoint",
    "load_config", "load_metrics", "open_records", "train",
]
