"""The client renders the target's chat template exactly as transformers does."""

from __future__ import annotations

import pytest
from edgespec.edge_client.chat_template import ChatTemplateError, render_chat

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "Ünïcode ✓ 你好\ttabs"},
     {"role": "assistant", "content": "Sure."},
     {"role": "user", "content": "And <|im_end|> inside text?"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_render_matches_transformers(target_dir, messages):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    got = render_chat(tokenizer.chat_template, messages, bos_token=tokenizer.bos_token or "",
                      eos_token=tokenizer.eos_token or "")
    assert got == want


def test_missing_template_is_a_clear_error():
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat("", [{"role": "user", "content": "x"}])


def test_template_cannot_reach_python_internals():
    evil = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(ChatTemplateError):
        render_chat(evil, [{"role": "user", "content": "x"}])


def test_template_raise_exception_is_reported():
    with pytest.raises(ChatTemplateError, match="nope"):
        render_chat("{{ raise_exception('nope') }}", [])
