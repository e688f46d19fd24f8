"""How the packaged SmolLM2's chat template renders a conversation under vLLM's chat extras:
``add_generation_prompt``, ``continue_final_message`` (a prefilled answer) and ``chat_template_kwargs``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.llm import ChatTokenizer, TemplateOptions
from shared_engine.errors import InvalidRequest

QUESTION = {"role": "user", "content": "Name the capital of France."}
PREFILL = {"role": "assistant", "content": "The capital of France is"}


@pytest.fixture
def chat(smollm2_folder: Path) -> ChatTokenizer:
    return ChatTokenizer(smollm2_folder, "smollm2")


def text_of(chat: ChatTokenizer, ids: list[int]) -> str:
    return str(chat.tokenizer.decode(ids))


def test_the_default_opens_the_assistants_turn(chat: ChatTokenizer) -> None:
    opened = text_of(chat, chat.encode_chat([QUESTION]))
    closed = text_of(chat, chat.encode_chat([QUESTION], options=TemplateOptions(add_generation_prompt=False)))
    assert opened == closed + "<|im_start|>assistant\n"
    assert closed.endswith("Name the capital of France.<|im_end|>\n")


def test_continue_final_message_leaves_the_answer_open(chat: ChatTokenizer) -> None:
    options = TemplateOptions(add_generation_prompt=False, continue_final_message=True)
    prefilled = text_of(chat, chat.encode_chat([QUESTION, PREFILL], options=options))
    assert prefilled.endswith("<|im_start|>assistant\nThe capital of France is")
    closed = text_of(chat, chat.encode_chat([QUESTION, PREFILL], options=TemplateOptions(False)))
    assert closed == prefilled + "<|im_end|>\n"


def test_continue_final_message_needs_add_generation_prompt_off() -> None:
    with pytest.raises(InvalidRequest) as raised:
        TemplateOptions(continue_final_message=True)
    assert raised.value.param == "continue_final_message"


def test_chat_template_kwargs_reach_the_template(chat: ChatTokenizer) -> None:
    chat.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if shout %}!!{% endif %}"
    )
    plain = text_of(chat, chat.encode_chat([QUESTION]))
    shouted = text_of(chat, chat.encode_chat([QUESTION], options=TemplateOptions(kwargs={"shout": True})))
    assert (plain, shouted) == ("Name the capital of France.", "Name the capital of France.!!")


@pytest.mark.parametrize(
    "name",
    ["tokenize", "messages", "add_generation_prompt", "eos_token", "tools", "namespace", "range", "self"],
)
def test_chat_template_kwargs_cannot_take_the_templates_own_names(chat: ChatTokenizer, name: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        chat.encode_chat([QUESTION], options=TemplateOptions(kwargs={name: True}))
    assert raised.value.param == "chat_template_kwargs" and name in str(raised.value)


def test_a_template_that_refuses_the_messages_is_a_client_error(chat: ChatTokenizer) -> None:
    chat.tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message comes first') }}"
        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(InvalidRequest) as raised:
        chat.encode_chat([QUESTION])
    assert raised.value.param == "messages" and "a system message comes first" in str(raised.value)


def test_a_kwarg_of_the_wrong_type_for_the_template_is_a_client_error(chat: ChatTokenizer) -> None:
    chat.tokenizer.chat_template = "{{ messages[0]['content'] }}{{ repeat * 2 + 1 }}"
    with pytest.raises(InvalidRequest) as raised:
        chat.encode_chat([QUESTION], options=TemplateOptions(kwargs={"repeat": "twice"}))
    assert raised.value.param == "messages"


def test_a_final_message_the_template_does_not_show_cannot_be_continued(chat: ChatTokenizer) -> None:
    chat.tokenizer.chat_template = (
        "{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %}"
    )
    prefilled = TemplateOptions(add_generation_prompt=False, continue_final_message=True)
    with pytest.raises(InvalidRequest, match="final message") as raised:
        chat.encode_chat([QUESTION, PREFILL], options=prefilled)
    assert raised.value.param == "messages"
