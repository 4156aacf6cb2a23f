"""This process's micro-batches, encoded ahead of the step by DataLoader workers.

Each worker (or the main process, with ``data.num_workers: 0``) runs its own copy of the row stream from the
same starting state, so every copy plans the same global sequence of rows: planning tokenises text samples
(packing needs their lengths) but leaves image samples unencoded (``RowStream(defer=...)``). Micro-batch ``m``
of the run is global rows ``[m·B·P, (m+1)·B·P)`` (B rows per process, P processes); process ``p`` keeps rows
``[p·B, (p+1)·B)`` of it, and worker ``m mod W`` materialises and collates them: decodes its images, runs the
processor. The DataLoader returns its workers' batches in ``m`` order.

Each item carries the stream's state after its micro-batch was planned: the trainer saves the state of the last
micro-batch it trained on, so a resumed run plans exactly the rows an uninterrupted run would have, however
many micro-batches the workers had prepared ahead.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zaya_vl.training.packing import Row, RowStream


class MicroBatches(IterableDataset):
    """Endless ``{"batch": tensors, "state": stream state, "skipped": {reason: n}}`` for one process."""

    def __init__(self, stream: RowStream, collate: Callable[[list[Row]], dict[str, torch.Tensor]], *,
                 rows_per_process: int, process_index: int, num_processes: int) -> None:
        self.stream, self.collate = stream, collate
        self.rows_per_process, self.process_index, self.num_processes = rows_per_process, process_index, num_processes

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.stream  # a worker's own copy (each worker process holds one)
        if worker != 0:
            stream.warn = _quiet  # the same plan in every worker: warn once
        start = self.process_index * self.rows_per_process
        step = 0
        while True:
            rows = [stream.next_row() for _ in range(self.rows_per_process * self.num_processes)]
            state = stream.state_dict()
            if step % workers == worker:
                skipped: Counter = Counter()
                mine = [stream.materialize(row, skipped) for row in rows[start:start + self.rows_per_process]]
                yield {"batch": self.collate(mine), "state": state, "skipped": dict(skipped)}
            step += 1


def _quiet(message: str) -> None:
    pass


def micro_batch_loader(stream: RowStream, collate, *, rows_per_process: int, process_index: int,
                       num_processes: int, num_workers: int) -> DataLoader:
    dataset = MicroBatches(stream, collate, rows_per_process=rows_per_process, process_index=process_index,
                           num_processes=num_processes)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers,
                      prefetch_factor=2 if num_workers else None)


__all__ = ["MicroBatches", "micro_batch_loader"]
