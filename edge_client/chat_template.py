"""Render the target's chat template on the client, which owns the conversation.

The daemon sends its tokenizer's Jinja template in WELCOME. Text from the network is
rendered in Jinja's immutable sandbox, the way transformers renders templates itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def render_chat(template: str, messages: list[dict[str, str]], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages``, as transformers' ``apply_chat_template`` would give."""
    if not template:
        raise ChatTemplateError("the target has no chat template; use --raw prompts")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(
        value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    context: dict[str, Any] = dict(
        messages=messages, bos_token=bos_token, eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
    )
    try:
        return env.from_string(template).render(**context)
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
