"""Tokenizers for ZAYA1-VL: the chat template, and small tokenizers trained locally.

ZAYA1 uses the Gemma 3 tokenizer (262,272 entries), which is loaded from a checkpoint with
``AutoTokenizer.from_pretrained``. It cannot be downloaded in tests, and it is far too large for the tiny
models used there. ``train_tokenizer`` builds a small byte-level BPE with the same special tokens instead, so
tokenisation, chat templating and image-token expansion run through the same code paths a real checkpoint uses.

The chat template is Gemma style (``<start_of_turn>user … <end_of_turn>``). It writes each image as the
placeholder ``<image>``, which the processor expands into ``<start_of_image>`` + N × ``<image_soft_token>`` +
``<end_of_image>``. Assistant turns are wrapped in ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks the tokens a fine-tune trains on.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN = "<image_soft_token>"
VISION_START_TOKEN = "<start_of_image>"
VISION_END_TOKEN = "<end_of_image>"
# Gemma 3's ids for the first four: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>",
    "<start_of_turn>", "<end_of_turn>",
    VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_TOKEN, IMAGE_PLACEHOLDER,
]

CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}<image>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<start_of_turn>model{{ '\n' }}{% generation %}{{ render(message['content']) }}<end_of_turn>{% endgeneration %}"
    "{{ '\n' }}"
    "{%- else -%}"
    "<start_of_turn>{{ message['role'] }}{{ '\n' }}{{ render(message['content']) }}<end_of_turn>{{ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model{{ '\n' }}{%- endif -%}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2,
                    split_digits: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``, with ZAYA1-VL's special tokens and chat template.

    ``split_digits`` makes every digit its own token (as Llama / Gemma tokenizers do), so a number is
    read and written one digit at a time.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                               if split_digits else byte_level)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        padding_side="left",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


__all__ = [
    "CHAT_TEMPLATE", "IMAGE_PLACEHOLDER", "IMAGE_TOKEN", "SPECIAL_TOKENS", "VISION_END_TOKEN",
    "VISION_START_TOKEN", "train_tokenizer",
]
