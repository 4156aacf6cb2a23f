"""Answering questions about images with a ZayaVL model: one question, or batches for the eval runner.

    from zaya_vl.inference import VLAssistant
    assistant = VLAssistant.from_pretrained("path/to/checkpoint")
    print(assistant.ask("receipt.png", "What is the total?"))

``VLAssistant`` owns the model, its processor and the generation settings; ``predict`` implements the
evaluation runner's ``Predictor`` protocol (batched, left-padded, greedy by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zaya_vl.tokenization import IMAGE_PLACEHOLDER


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0

    def generate_kwargs(self, max_new_tokens: int | None = None) -> dict:
        kwargs = {"max_new_tokens": max_new_tokens or self.max_new_tokens, "do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_placement(device: str | None = None, device_map: str | dict | None = None,
                      dtype: torch.dtype | str | None = None) -> tuple[str | dict, torch.dtype | str]:
    """``(device_map, dtype)`` for ``from_pretrained``, as lmms-eval's Qwen2.5-VL model chooses them: the model on
    ``device`` (default CUDA when available) unless a ``device_map`` is given, bf16 on a GPU, fp32 on CPU.
    ``dtype`` may be a torch dtype, its name (``"bfloat16"``) or ``"auto"`` (the checkpoint's)."""
    if device_map is None:
        device_map = device or default_device()
    if dtype is None:
        on_cpu = device_map == "cpu" or (isinstance(device_map, dict) and set(map(str, device_map.values())) <= {"cpu"})
        dtype = torch.float32 if on_cpu else torch.bfloat16
    elif isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype (e.g. 'bfloat16', 'float32' or 'auto').")
        dtype = getattr(torch, dtype)
    return device_map, dtype


class VLAssistant:
    def __init__(self, model, processor, settings: GenerationSettings | None = None, batch_size: int = 8) -> None:
        self.model = model.eval()
        self.processor = processor
        self.settings = settings or GenerationSettings()
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: torch.dtype | str | None = None, device: str | None = None,
                        device_map: str | dict | None = None, batch_size: int = 8,
                        settings: GenerationSettings | None = None, **model_kwargs):
        """``device`` (default: CUDA when available, else CPU) places the whole model; ``device_map`` (e.g.
        ``"auto"`` to split over several GPUs) overrides it. ``dtype`` defaults to bf16 on a GPU, fp32 on CPU."""
        from zaya_vl import ZayaVL
        from zaya_vl.processing import ZayaVLProcessor

        device_map, dtype = resolve_placement(device, device_map, dtype)
        model = ZayaVL.from_pretrained(path, dtype=dtype, device_map=device_map, **model_kwargs)
        return cls(model, ZayaVLProcessor.from_pretrained(path), settings=settings, batch_size=batch_size)

    # -- prompts ---------------------------------------------------------------------------------------
    def chat_text(self, prompt: str, num_images: int) -> str:
        """The model's chat template around one user turn. ``prompt`` may already hold one ``<image>``
        placeholder per image (the eval tasks put them first); otherwise they are put in front of it."""
        if prompt.count(IMAGE_PLACEHOLDER) != num_images:
            if IMAGE_PLACEHOLDER in prompt:
                raise ValueError(f"The prompt has {prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders "
                                 f"for {num_images} images.")
            prompt = IMAGE_PLACEHOLDER * num_images + prompt
        messages = [{"role": "user", "content": prompt}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # -- generation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: list[list], prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """One reply per prompt; ``images[i]`` are the images of prompt ``i`` (paths, PIL images, bytes…)."""
        texts = [self.chat_text(prompt, len(row)) for prompt, row in zip(prompts, images)]
        inputs = self.processor(images=images if any(images) else None, text=texts, return_tensors="pt",
                                padding=True, add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        output = self.model.generate(**inputs, **self.settings.generate_kwargs(max_new_tokens))
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [reply.strip() for reply in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def ask(self, image, question: str, max_new_tokens: int | None = None) -> str:
        images = image if isinstance(image, (list, tuple)) else [image]
        return self.generate([list(images)], [question], max_new_tokens)[0]

    def predict(self, requests: list) -> list[str]:
        """The evaluation runner's ``Predictor``: batches of ``Request`` (images, prompt, max_new_tokens)."""
        replies: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            replies += self.generate([list(r.images) for r in chunk], [r.prompt for r in chunk],
                                     max(r.max_new_tokens for r in chunk))
        return replies


__all__ = ["GenerationSettings", "VLAssistant", "default_device", "resolve_placement"]
