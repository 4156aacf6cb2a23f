"""The row stream: samples in a seeded order, packed into rows of at most ``seq_len`` tokens.

Order: epoch ``e`` visits the records in ``permutation(seed, e)`` (or file order without shuffling). Rows are
built greedily in that order:

- a text-only sample joins the current row if it fits, else the row is closed and the sample starts the next;
- a sample with images is never packed or split: it closes the current row and gets a row of its own;
- with ``packing: false`` every sample gets its own row.

Every row boundary is therefore a pure function of ``(epoch, cursor, piece)``, the stream's whole state: a
sample that did not fit is not consumed, so resuming from a saved state continues with exactly the rows
an uninterrupted run would have produced. Every process runs the same stream and takes its own rows of each
global batch, so a run's data do not depend on how many processes share it.

With ``defer`` (a cheap ``record -> has images``), an image sample is not encoded when the stream plans its row:
the row only names the record (``Row.deferred``), and :meth:`RowStream.materialize` encodes it, on the process
that trains on that row. Planning needs the lengths of text samples only (packing), so every process tokenises
the text but decodes only its own images. An image sample found invalid when materialised (unreadable, too long)
raises, or under ``on_invalid: skip`` leaves an empty row (padding only) in its place and is counted: the other
rows stay where they were, whatever the number of processes.

A text-only sample longer than ``seq_len`` is invalid unless ``split_long_documents`` cuts it into
``seq_len`` pieces (each piece its own document). Invalid samples raise, or with ``on_invalid: skip`` are
skipped and counted by reason, each bad record once (and warned about once), however many epochs visit it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from zaya_vl.training.data import DataError, Encoded, InvalidSample

logger = logging.getLogger(__name__)

WARN_FIRST = 20  # skipped samples warned about one by one; after that every 100th


@dataclass
class Row:
    samples: list[Encoded]
    deferred: tuple[int, str] | None = None  # (record index, where) of an image sample not encoded yet

    @property
    def length(self) -> int:
        return sum(len(sample) for sample in self.samples)

    @property
    def has_images(self) -> bool:
        return self.deferred is not None or any(sample.has_images for sample in self.samples)


class RowStream:
    """An endless stream of rows over ``records``; ``encode(record, where)`` tokenises one record."""

    def __init__(self, records: Sequence, encode: Callable[[dict, str], Encoded], *, seq_len: int,
                 packing: bool = True, seed: int = 0, shuffle: bool = True, on_invalid: str = "error",
                 split_long_documents: bool = False, warn: Callable[[str], None] | None = None,
                 defer: Callable[[dict, str], bool] | None = None) -> None:
        if len(records) == 0:
            raise DataError("the training data has no records")
        self.records, self.encode = records, encode
        self.seq_len, self.packing, self.seed, self.shuffle = seq_len, packing, seed, shuffle
        self.on_invalid, self.split_long_documents = on_invalid, split_long_documents
        self.warn = warn or logger.warning
        self.defer = defer
        self.epoch = self.cursor = self.piece = self.rows_in_epoch = 0
        self.skipped: Counter = Counter()  # bad records by reason, each counted once however many epochs visit it
        self.skipped_records: set[int] = set()
        self._order_epoch, self._order = None, None
        self._cache: tuple[tuple, list[Encoded] | InvalidSample] | None = None
        self._defer_cache: tuple[tuple, tuple[int, str] | None] | None = None

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "piece": self.piece,
                "rows_in_epoch": self.rows_in_epoch, "skipped": dict(self.skipped), "seed": self.seed,
                "num_records": len(self.records), "skipped_records": sorted(self.skipped_records)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_records", len(self.records)) != len(self.records):
            raise DataError(f"the checkpoint's data position is for {state['num_records']} records but the data "
                            f"now has {len(self.records)}; exact resume needs the same data")
        self.epoch, self.cursor, self.piece = state["epoch"], state["cursor"], state["piece"]
        self.rows_in_epoch = state["rows_in_epoch"]
        self.skipped = Counter(state["skipped"])
        self.skipped_records = set(state.get("skipped_records", ()))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    # -- rows -------------------------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.records)
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                           else np.arange(n))
            self._order_epoch = epoch
        return self._order

    def next_row(self) -> Row:
        pending: list[Encoded] = []
        used = 0
        while True:
            if self.cursor >= len(self.records):
                if pending:
                    return self._emit(pending)
                if self.rows_in_epoch == 0:
                    raise DataError(f"no usable sample in {len(self.records)} records "
                                    f"(skipped: {dict(self.skipped)})")
                self.epoch, self.cursor, self.piece, self.rows_in_epoch = self.epoch + 1, 0, 0, 0
                continue
            if self.piece == 0 and self._deferred() is not None:
                if pending:
                    return self._emit(pending)
                deferred = self._deferred()
                self._consume(1)
                self.rows_in_epoch += 1
                return Row([], deferred=deferred)
            pieces = self._pieces()
            if isinstance(pieces, InvalidSample):
                self._skip(pieces)
                continue
            sample = pieces[self.piece]
            if sample.has_images or not self.packing:
                if pending:
                    return self._emit(pending)
                self._consume(len(pieces))
                return self._emit([sample])
            if used + len(sample) > self.seq_len:
                return self._emit(pending)
            pending.append(sample)
            used += len(sample)
            self._consume(len(pieces))
            if used == self.seq_len:
                return self._emit(pending)

    def materialize(self, row: Row, skipped: Counter | None = None) -> Row:
        """``row`` with its deferred image sample encoded. Invalid: raise, or (``on_invalid: skip``) an empty row,
        the reason counted in ``skipped``."""
        if row.deferred is None:
            return row
        index, where = row.deferred
        try:
            return Row(self._fit(self.encode(self.records[index], where)))
        except InvalidSample as error:
            if self.on_invalid != "skip":
                raise
            if skipped is not None:
                skipped[error.reason] += 1
            self.warn(f"skipped {error} (its row stays empty)")
            return Row([])

    def _deferred(self) -> tuple[int, str] | None:
        """(index, where) when the current record is an image sample to defer, else None."""
        if self.defer is None:
            return None
        key = ("defer", self.epoch, self.cursor)
        if self._defer_cache is None or self._defer_cache[0] != key:
            index = int(self.order(self.epoch)[self.cursor])
            where = self.records.describe(index) if hasattr(self.records, "describe") else f"record {index}"
            self._defer_cache = (key, (index, where) if self.defer(self.records[index], where) else None)
        return self._defer_cache[1]

    def _emit(self, samples: list[Encoded]) -> Row:
        self.rows_in_epoch += 1
        return Row(samples)

    def _consume(self, num_pieces: int) -> None:
        self.piece += 1
        if self.piece >= num_pieces:
            self.cursor, self.piece = self.cursor + 1, 0

    def _pieces(self) -> list[Encoded] | InvalidSample:
        """The current record, encoded (cached: a sample that did not fit is looked at again)."""
        key = (self.epoch, self.cursor)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        index = int(self.order(self.epoch)[self.cursor])
        where = self.records.describe(index) if hasattr(self.records, "describe") else f"record {index}"
        try:
            encoded = self.encode(self.records[index], where)
            result = self._fit(encoded)
        except InvalidSample as error:
            result = error
        self._cache = (key, result)
        return result

    def _fit(self, sample: Encoded) -> list[Encoded]:
        if len(sample) <= self.seq_len:
            return [sample]
        if self.split_long_documents and not sample.has_images:
            n = self.seq_len
            return [Encoded(sample.input_ids[i:i + n], sample.labels[i:i + n], f"{sample.where} piece {k}")
                    for k, i in enumerate(range(0, len(sample), n))]
        hint = ("it has images, so it is never split" if sample.has_images
                else "set data.split_long_documents to cut text into pieces")
        raise InvalidSample(sample.where, "overlength",
                            f"{len(sample)} tokens, more than data.seq_len={self.seq_len} ({hint})")

    def _skip(self, error: InvalidSample) -> None:
        if self.on_invalid != "skip":
            raise error
        index = int(self.order(self.epoch)[self.cursor])
        if index not in self.skipped_records:  # a later epoch skips it again, silently
            self.skipped_records.add(index)
            self.skipped[error.reason] += 1
            total = self.total_skipped
            if total <= WARN_FIRST or total % 100 == 0:
                self.warn(f"skipped {error} ({total} skipped so far: {dict(self.skipped)})")
        self.cursor, self.piece = self.cursor + 1, 0


__all__ = ["Row", "RowStream"]
