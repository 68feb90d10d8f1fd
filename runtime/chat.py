"""Chat templates rendered the way transformers renders them: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, loop controls, transformers' `tojson`, `raise_exception`, `strftime_now`, a `{% generation %}` tag,
and the tokenizer's special-token strings (bos_token, eos_token, …) as variables."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]


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


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render(template: str, messages: list[Message], special_tokens: dict[str, Any],
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """The prompt text for `messages` (a list of {"role", "content"} maps)."""
    variables = {key: value for key, value in special_tokens.items() if key.endswith("_token")}
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **variables, **extra)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"chat template: {exc}") from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        # the template is code from the model file: the sandbox's own limits (a range beyond MAX_RANGE raises
        # OverflowError) and the template's runtime errors are its failures, not ours
        raise ChatTemplateError(f"chat template: {type(exc).__name__}: {exc}") from None
