"""Prompts through a chat template (nlhf.data.tokenizer): a plain prompt is one user turn,
an HH-RLHF dialogue prefix its alternating turns, both followed by the generation prompt;
expected texts written by hand for a small template."""

from __future__ import annotations

from pathlib import Path

import pytest
from nlhf.data.tokenizer import dialogue_messages, format_prompt, load_tokenizer

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
DIALOGUE = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I sleep better?\n\nAssistant:"


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    pytest.importorskip("transformers", reason="chat templates render through transformers")
    from nlhf.testing.tiny_models import build_tokenizer

    tok = load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok") / "tok"))
    tok.chat_template = TEMPLATE
    return tok


def test_dialogue_messages() -> None:
    assert dialogue_messages(DIALOGUE) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I sleep better?"},
    ]
    assert dialogue_messages("\n\nHuman: one\n\nAssistant:") == [{"role": "user", "content": "one"}]
    plain = "What is 2+2?"
    assert dialogue_messages(plain) == [{"role": "user", "content": plain}]
    odd = "\n\nHuman: a\n\nHuman: b\n\nAssistant:"  # not alternating: kept whole
    assert dialogue_messages(odd) == [{"role": "user", "content": odd}]


def test_format_prompt_renders_turns(chat_tokenizer: object, tmp_path: Path) -> None:
    assert format_prompt(chat_tokenizer, "Hi", None) == "<user>Hi</user><assistant>"
    assert format_prompt(chat_tokenizer, DIALOGUE, None) == (
        "<user>Hi there</user><assistant>Hello!</assistant>"
        "<user>How do I sleep better?</user><assistant>"
    )
    assert format_prompt(chat_tokenizer, DIALOGUE, False) == DIALOGUE
