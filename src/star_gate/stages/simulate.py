"""Simulate conversations between the questioner and the roleplayer.

All live conversations of a turn are generated in one batched call per player, not one
conversation at a time. Each conversation's length is drawn uniformly from 1..K up front (the
paper's), or, with stop_early, the questioner decides: a turn that answers instead of asking
(roles/answers.py) ends the conversation and becomes its final answer, at most K questions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from star_gate.data.records import Conversation, Pair, Persona
from star_gate.roles.answers import is_non_answer
from star_gate.roles.players import Questioner, Roleplayer


def simulate(
    pairs: Sequence[Pair],
    questioner: Questioner,
    roleplayer: Roleplayer,
    conversations_per_pair: int,
    max_turns: int,
    seed: int,
    roleplayer_personas: dict[str, Persona] | None = None,
    stop_early: bool = False,
    openings: Sequence[str] = (),
) -> list[Conversation]:
    """Return conversations_per_pair conversations for each pair, in pair order.

    Args:
        roleplayer_personas: pair_id -> persona the roleplayer plays instead of the pair's own
            (the random-persona control); None means each pair's own persona.
        openings: the first question of a pair's conversation s starts with
            openings[s % len(openings)], the questioner writing the rest ('' : all of it);
            empty: no openings.
    """
    rng = random.Random(seed)
    by_id = {p.pair_id: p for p in pairs}
    acting = {p.pair_id: (roleplayer_personas or {}).get(p.pair_id, p.persona) for p in pairs}
    conversations = [
        Conversation(
            task_id=p.task.task_id,
            persona_id=p.persona.persona_id,
            sample_index=s,
            target_turns=max_turns if stop_early else rng.randint(1, max_turns),
            roleplayer_persona_id=acting[p.pair_id].persona_id,
        )
        for p in pairs
        for s in range(conversations_per_pair)
    ]
    for turn in range(max_turns):
        live = [i for i, c in enumerate(conversations) if not c.is_finished]
        if not live:
            break
        tasks = [by_id[conversations[i].pair_id].task.text for i in live]
        extra = {}
        if openings and turn == 0:
            extra["openings"] = [
                openings[conversations[i].sample_index % len(openings)] for i in live
            ]
        questions, rejected = _ask(
            questioner, tasks, [conversations[i] for i in live], seed * 1000 + 2 * turn, extra
        )
        for i, count in zip(live, rejected):
            if count:
                conversations[i] = conversations[i].replace(
                    rejected_questions=conversations[i].rejected_questions + count
                )
        if stop_early:  # an answer instead of a question ends the conversation
            asking = []
            for i, question in zip(live, questions):
                if is_non_answer(question):
                    asking.append((i, question))
                else:
                    conversations[i] = conversations[i].replace(response=question)
            if not asking:
                break
            live, questions = [i for i, _ in asking], [q for _, q in asking]
        for i, question in zip(live, questions):
            conversations[i] = conversations[i].with_turn("questioner", question)
        answers = roleplayer.answer(
            [acting[conversations[i].pair_id] for i in live],
            tasks,
            [conversations[i] for i in live],
            seed=seed * 1000 + 2 * turn + 1,
        )
        for i, answer in zip(live, answers):
            conversations[i] = conversations[i].with_turn("roleplayer", answer)
    return conversations


def _ask(questioner, tasks, conversations, seed, extra) -> tuple[list[str], list[int]]:
    """The questions, and per question the samples rejected for asking nothing where the
    questioner resamples (Questioner.ask_counting); a fixed or scripted questioner rejects none."""
    if hasattr(questioner, "ask_counting"):
        return questioner.ask_counting(tasks, conversations, seed=seed, **extra)
    questions = questioner.ask(tasks, conversations, seed=seed, **extra)
    return questions, [0] * len(questions)
