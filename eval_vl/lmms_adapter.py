"""lmms-eval model adapter: ``lmms-eval --model zaya_vl --model_args pretrained=PATH --tasks docvqa_val,ai2d``.

lmms-eval finds this class through the ``lmms_eval.models`` entry point declared in ``pyproject.toml``
(``manifest`` below), so no copy into lmms-eval's source tree is needed. Requests are answered by
``zaya_vl.inference.VLAssistant`` (the same path as ``zaya-vl eval``), greedy unless the task asks otherwise;
generation stops at the task's ``until`` strings, as lmms-eval's own adapters do.

Only generation is implemented (DocVQA, AI2D and MathVista need nothing else); loglikelihood requests raise.
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from zaya_vl.inference import GenerationSettings, VLAssistant
from zaya_vl.tokenization import IMAGE_PLACEHOLDER


def manifest():
    """The ``lmms_eval.models`` entry point: registers ``zaya_vl`` with lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="zaya_vl", simple_class_path="zaya_vl.eval_vl.lmms_adapter.ZayaVLLmms")


def truncate_at_stops(text: str, until: list[str]) -> str:
    """Cut ``text`` at the earliest stop string (lmms-eval passes these in ``gen_kwargs['until']``)."""
    cut = min((text.find(stop) for stop in until if stop and stop in text), default=-1)
    return text[:cut] if cut >= 0 else text


_DTYPES = {"auto": None, "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32"}


class ZayaVLLmms(lmms):
    """``--model_args`` keys: ``pretrained`` (required), ``batch_size``, ``max_new_tokens``, ``device`` (default
    ``cuda`` when there is a GPU, else ``cpu``; under a multi-process launch each process takes its own GPU),
    ``device_map``, ``dtype`` (``auto``: bfloat16 on GPU, float32 on CPU; or bfloat16 / float16 / float32),
    ``min_pixels`` / ``max_pixels`` (the processor's pixel budget per image), ``image_attention``. Any other key
    is an error, so a misspelt or unsupported setting never goes silently unused.

    ``rank`` / ``world_size`` / ``device`` / ``accelerator`` follow lmms-eval's own models: lmms-eval gives each
    process its share of the requests by them.
    """

    def __init__(self, pretrained: str, batch_size: int | str = 8, dtype: str | None = "auto",
                 device: str | None = None, device_map: str | None = None, image_attention: str | None = None,
                 max_new_tokens: int | str = 64, min_pixels: int | str | None = None,
                 max_pixels: int | str | None = None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"zaya_vl: unknown --model_args {sorted(unknown)}; known: pretrained, batch_size, "
                             "max_new_tokens, device, device_map, dtype, min_pixels, max_pixels, image_attention")
        import torch
        from accelerate import Accelerator

        key = "auto" if dtype is None else str(dtype).lower()
        if key not in _DTYPES:
            raise ValueError(f"zaya_vl: dtype={dtype!r}; use one of {sorted(set(_DTYPES))}")
        has_gpu = torch.cuda.is_available()
        self.accelerator = Accelerator(cpu=not has_gpu)
        if self.accelerator.num_processes > 1:
            # One model per process, on this process's own GPU (the CPU without GPUs), as lmms-eval's models do.
            self._device = self.accelerator.device
            device_map = str(self._device) if has_gpu else None
        else:
            self._device = torch.device(device or ("cuda" if has_gpu else "cpu"))
            device_map = device_map or (None if self._device.type == "cpu" else str(self._device))
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        model_kwargs = {"image_attention": image_attention} if image_attention else {}
        self.assistant = VLAssistant.from_pretrained(
            pretrained, dtype=_DTYPES[key], device_map=device_map, batch_size=int(batch_size),
            settings=GenerationSettings(max_new_tokens=int(max_new_tokens)), **model_kwargs)
        if min_pixels is not None or max_pixels is not None:
            processor = self.assistant.processor
            low, high = processor._pixel_budget(None if min_pixels is None else int(min_pixels),
                                                None if max_pixels is None else int(max_pixels))
            processor.image_processor.size = {"shortest_edge": low, "longest_edge": high}
        self.batch_size_per_gpu = int(batch_size)

    @property
    def device(self):
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def model(self):
        return self.assistant.model

    def generate_until(self, requests: list[Instance]) -> list[str]:
        replies = []
        for start in range(0, len(requests), self.batch_size_per_gpu):
            replies += self._generate_chunk([request.args for request in requests[start:start + self.batch_size_per_gpu]])
        return replies

    def _generate_chunk(self, chunk) -> list[str]:
        images, prompts = [], []
        for context, _, doc_to_visual, doc_id, task, split in chunk:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            images.append(list(visuals))
            # lmms-eval contexts may carry their own "<image>" markers; we place one placeholder per image.
            prompts.append(IMAGE_PLACEHOLDER * len(visuals) + context.replace(IMAGE_PLACEHOLDER, ""))
        gen_kwargs = [args[1] for args in chunk]
        max_new_tokens = max(int(g.get("max_new_tokens", self.assistant.settings.max_new_tokens)) for g in gen_kwargs)
        temperature = max(float(g.get("temperature") or 0) for g in gen_kwargs)
        default = self.assistant.settings
        self.assistant.settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)
        try:
            replies = self.assistant.generate(images, prompts, max_new_tokens=max_new_tokens)
        finally:
            self.assistant.settings = default
        return [truncate_at_stops(reply, _stops(g)) for reply, g in zip(replies, gen_kwargs)]

    def loglikelihood(self, requests):
        raise NotImplementedError("zaya_vl's lmms-eval adapter implements generation tasks only.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("zaya_vl's lmms-eval adapter implements single-round generation only.")


def _stops(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


__all__ = ["ZayaVLLmms", "manifest", "truncate_at_stops"]
