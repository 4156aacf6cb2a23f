"""The prompt text of the eval tasks, shared by the eval (``zaya_vl.eval_vl``) and the synthetic data generator
(``zaya_vl.data``) so that a model is trained on exactly the prompts it is tested on.

The strings are lmms-eval's: DocVQA's ``post_prompt`` (``tasks/docvqa/_default_template_docvqa_yaml``) and AI2D's
``mcq`` format, ``f"{question}\\n{A. opt\\nB. opt...}{post_prompt}"`` (``tasks/ai2d/utils.py``).
No imports, so anything can use it.
"""

from __future__ import annotations

from typing import Iterable

DOCVQA_POST_PROMPT = "\nAnswer the question using a single word or phrase."
AI2D_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def option_letters(n_options: int) -> list[str]:
    """``A``, ``B``, ... for ``n_options`` options."""
    return [chr(ord("A") + i) for i in range(n_options)]


def option_lines(options: Iterable[str]) -> str:
    """``A. first``, ``B. second``, ... one a line: how AI2D and MathVista list a question's choices."""
    options = list(options)
    return "\n".join(f"{letter}. {option}" for letter, option in zip(option_letters(len(options)), options))


def docvqa_prompt(question: str) -> str:
    return f"{question}{DOCVQA_POST_PROMPT}"


def ai2d_prompt(question: str, options: Iterable[str]) -> str:
    return f"{question}\n{option_lines(options)}{AI2D_POST_PROMPT}"


__all__ = ["AI2D_POST_PROMPT", "DOCVQA_POST_PROMPT", "ai2d_prompt", "docvqa_prompt", "option_letters", "option_lines"]
