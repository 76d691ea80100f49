"""The quickstart task: prompts asking for a fruit, three one-token answers, and the
answer distribution μ the SFT policy is trained to reproduce."""

from __future__ import annotations

ANSWERS = (" apple", " banana", " cherry")
SFT_PROBS = (0.25, 0.5, 0.25)
"""μ(answer | x) for every prompt: the reference policy the SFT step aims at."""
PROMPTS = (
    "Pick a fruit:",
    "Name a fruit:",
    "Choose a fruit:",
    "Your favourite fruit:",
    "Say one fruit:",
    "Which fruit?",
    "A fruit, please:",
    "Fruit of the day:",
)
CORPUS = (
    *(p + a for p in PROMPTS for a in ANSWERS),
    "apple banana cherry fruit pick name choose say which please favourite day",
    "The quick brown fox jumps over the lazy dog.",
    "Nash learning from human feedback finds the policy preferred to any other.",
)
"""The text the quickstart tokenizer is trained on (each answer becomes one token)."""
QUICKSTART_SPEC = "specs/quickstart.yaml"
