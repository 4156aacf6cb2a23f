"""Strict checkpoint loading: a missing, unexpected or misshapen key is an error that names it.

transformers only logs such keys and initialises missing weights at random, which turns a wrong checkpoint
into a model that quietly produces noise. ``StrictLoadingMixin.from_pretrained`` raises instead; pass
``strict=False`` to get transformers' lenient behaviour back (e.g. to add new adapters to an old checkpoint).
"""

from __future__ import annotations


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model's parameters."""


def _preview(keys, limit: int = 12) -> str:
    keys = sorted(str(k) for k in keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def raise_for_loading_info(info: dict, source: str) -> None:
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing from the checkpoint: {_preview(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected in the checkpoint: {_preview(info['unexpected_keys'])}")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        shapes = []
        for entry in mismatched:
            if isinstance(entry, (tuple, list)) and len(entry) == 3:
                key, found, expected = entry
                shapes.append(f"{key} (checkpoint {tuple(found)}, model {tuple(expected)})")
            else:
                shapes.append(str(entry))
        problems.append(f"wrong shape: {_preview(shapes)}")
    if info.get("error_msgs"):
        problems.append("; ".join(str(m) for m in info["error_msgs"]))
    if problems:
        raise CheckpointMismatchError(f"Cannot load {source}: " + "; ".join(problems)
                                      + ". Pass strict=False to load anyway.")


class StrictLoadingMixin:
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        if strict:
            # Let transformers finish loading so that we can report every bad key at once, by name and shape.
            kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if strict:
            raise_for_loading_info(info, f"{cls.__name__} from {pretrained_model_name_or_path}")
        return (model, info) if want_info else model


__all__ = ["CheckpointMismatchError", "StrictLoadingMixin", "raise_for_loading_info"]
