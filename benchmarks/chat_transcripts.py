"""Ten chats with a run's Q_k, as `star-gate chat RUN --iteration k` holds them, written out to read.

The user's side is played by the run's roleplayer holding a test persona (the facts it is asked
about, quoted), so the transcripts can be rerun; the verdicts (does it ask a real question, does
its final answer answer the request) are a reader's, made on the printed text. Each chat takes
one test task, the first ten tasks in order, with the personas in turn.

    python benchmarks/chat_transcripts.py runs/demo --iteration 2 [--tries 10] > transcripts.md
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from star_gate.cli import _chat_questioner, _load
from star_gate.data.records import Conversation
from star_gate.pipeline import Pipeline
from star_gate.roles.answers import asks, is_non_answer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--iteration", type=int, default=None)
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--first-task", type=int, default=0, help="index of the first test task")
    args = parser.parse_args(argv)
    questioner, turns, answer_tokens = _chat_questioner(args.run_dir, args.iteration, "", None)
    config = _load(f"{args.run_dir}/config.yaml", [])
    pipeline = Pipeline(config, progress=False)
    pairs = pipeline.pairs(config.data.test_split)
    tasks = sorted({p.task.task_id for p in pairs})
    personas = sorted({p.persona.persona_id for p in pairs})
    by_id = {(p.task.task_id, p.persona.persona_id): p for p in pairs}
    roleplayer = pipeline.players.roleplayer()
    for chat in range(args.tries):
        task_id = tasks[(args.first_task + chat) % len(tasks)]
        pair = by_id[(task_id, personas[chat % len(personas)])]
        conversation = Conversation(task_id, pair.persona.persona_id, 0, turns)
        for turn in range(turns):
            question = questioner.ask([pair.task.text], [conversation], seed=turn)[0]
            conversation = conversation.with_turn("questioner", question)
            answer = roleplayer.answer([pair.persona], [pair.task.text], [conversation], turn)[0]
            conversation = conversation.with_turn("roleplayer", answer)
        final = questioner.respond([pair.task.text], [conversation], answer_tokens)[0]
        print(f"### {chat + 1}. {task_id} with {pair.persona.name} ({pair.persona.persona_id})\n")
        print(f"- **user**: {pair.task.text}")
        for t in conversation.turns:
            speaker = "assistant" if t.speaker == "questioner" else "user"
            print(f"- **{speaker}**: {t.text}")
        print(f"- **assistant (final)**: {final}")
        rule = [asks(q) for q in conversation.questions]
        print(
            f"\nrule: turns that ask {rule}; final answer is a non-answer: {is_non_answer(final)}\n"
        )


if __name__ == "__main__":
    main()
