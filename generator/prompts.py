"""Cut prompts to the text encoder's window with the model's own tokenizer.

CLIP-based SD v1.x sees 77 tokens: a start token, at most 75 text tokens and an end
token. Anything beyond is silently dropped by the pipeline; cutting here instead lets
the caller store and show exactly what the model saw and what it did not.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS = 2  # start-of-text and end-of-text


@dataclass(frozen=True)
class PromptCut:
    """The prompt the model sees, and what was cut from the original."""

    text: str
    dropped: str
    text_tokens: int
    kept_tokens: int

    @property
    def truncated(self) -> bool:
        return self.kept_tokens < self.text_tokens


def text_token_budget(tokenizer: PreTrainedTokenizerBase) -> int:
    """Text tokens that fit in the window: 75 for CLIP's 77."""
    return tokenizer.model_max_length - SPECIAL_TOKENS


def cut_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> PromptCut:
    """Keep the longest prefix of ``text`` whose tokens fit the model's window.

    The cut falls on a token boundary of the original string, so case and punctuation
    survive (decoding CLIP ids would lowercase and re-space the text).
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    budget = text_token_budget(tokenizer)
    if len(offsets) <= budget:
        return PromptCut(text.strip(), "", len(offsets), len(offsets))
    kept = budget
    # A cut inside a word re-tokenizes differently ("hyper" alone is "hyper</w>"),
    # so step back until the kept text itself fits the window.
    while _token_count(tokenizer, text[: offsets[kept - 1][1]]) > budget:
        kept -= 1
    end = offsets[kept - 1][1]
    return PromptCut(
        text=text[:end].strip(),
        dropped=text[end:].strip(),
        text_tokens=len(offsets),
        kept_tokens=_token_count(tokenizer, text[:end]),
    )


def _token_count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
