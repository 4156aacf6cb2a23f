"""lmms-eval model adapter: ``lmms-eval --model zaya_vl --model_args pretrained=PATH --tasks docvqa_val,ai2d``.

lmms-eval finds this class through the ``lmms_eval.models`` entry point declared in ``pyproject.toml``
(``manifest`` below), so no copy into lmms-eval's source tree is needed. Requests are answered by
``zaya_vl.inference.VLAssistant`` (the same path as ``zaya-vl eval``), greedy unless the task asks otherwise;
generation stops at the task's ``until`` strings, as lmms-eval's own adapters do.

Only generation is implemented (the tasks in DESIGN §7 need nothing else); loglikelihood requests raise.
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


class ZayaVLLmms(lmms):
    def __init__(self, pretrained: str, batch_size: int | str = 8, dtype: str | None = None,
                 device: str | None = None, device_map: str | None = None, image_attention: str | None = None, max_new_tokens: int = 64,
                 **kwargs) -> None:
        super().__init__()
        model_kwargs = {"image_attention": image_attention} if image_attention else {}
        self.assistant = VLAssistant.from_pretrained(
            pretrained, dtype=dtype, device=device, device_map=device_map, batch_size=int(batch_size),
            settings=GenerationSettings(max_new_tokens=int(max_new_tokens)), **model_kwargs)
        self.batch_size_per_gpu = int(batch_size)

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
