"""Chat templates rendered the way transformers renders them: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, loop controls, transformers' `tojson`, `raise_exception`, `strftime_now`, a `{% generation %}` tag,
and the variables transformers' apply_chat_template passes: the tokenizer's special-token strings that are set
(bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token, and model-specific ones such as
image_token, as the file stores them; an unset one is no variable, not "None"),
`tools` and `documents` (None), and messages without their None-valued keys, their reasoning also under
`reasoning_content` and `thinking`."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .format import is_special_token_name

Message = dict[str, Any]

# names a message's reasoning may come under, the standard one first (transformers' _REASONING_FIELDS)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The chat template failed to render (its own raise_exception, or a Jinja error); says why."""


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; rendering just emits it."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _TemplateDict:
    """transformers' `dict` global: calls and fromkeys, with no attribute of the type itself to reach through."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """transformers' `namespace` global: no underscore-prefixed attribute (a way towards CPython's internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: namespace(self=...) still works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}")


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


def _normalize_messages(messages: list[Message]) -> list[Message]:
    """transformers' _normalize_chat_messages and _alias_reasoning_fields: a message's keys whose value is None are
    dropped (a template then sees no `content`, not "None"), and its reasoning (under any of its names) is also its
    `reasoning_content` and, unless it has one, its `thinking`."""
    aliased = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):  # transformers refuses these too (a template would skip them silently)
            raise ChatTemplateError(f"chat message {index} is {type(message).__name__} {message!r:.60}, not a map "
                                    "such as {\"role\": \"user\", \"content\": \"...\"}")
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


def render(template: str, messages: list[Message], special_tokens: dict[str, Any],
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """The prompt text for `messages` (a list of {"role", "content"} maps), with transformers' variables."""
    variables = {"tools": None, "documents": None,
                 **{key: str(value) for key, value in special_tokens.items()
                    if is_special_token_name(key) and value is not None}, **extra}
    messages = _normalize_messages(messages)
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the template is the template's
        # the template is code from the model file: the sandbox's own limits (a range beyond MAX_RANGE raises
        # OverflowError), its filters' assertions (truncate), a MemoryError, and its runtime errors are its
        # failures, not ours
        raise ChatTemplateError(f"chat template: {type(exc).__name__}: {exc}") from None
