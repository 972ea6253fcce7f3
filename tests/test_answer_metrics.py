"""The evaluation's new judging methods, persona fit and non-answer shares, end to end with the
fake backend: records written by the pipeline, read back by RunResults, shown by the table and
the report; the final-answer prompt; and the labelled judge set's accuracy."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
from rich.console import Console

from star_gate import cli
from star_gate.backends.base import SamplingParams
from star_gate.backends.fake import FakeBackend
from star_gate.config import load_config
from star_gate.data.records import AnswerFit, Conversation
from star_gate.judge_eval import judge_accuracy, labelled_comparisons
from star_gate.pipeline import Pipeline
from star_gate.report import write_report
from star_gate.results import RunResults
from star_gate.roles.factory import Players
from star_gate.roles.players import Judge
from star_gate.roles.prompts import get_template
from star_gate.rundir import RunDir


def printed(function, *args) -> str:
    buffer = io.StringIO()
    saved, cli.console = cli.console, Console(file=buffer, width=250)
    try:
        function(*args)
    finally:
        cli.console = saved
    return buffer.getvalue()


@pytest.mark.parametrize(
    "method, order",
    [("persona_fit", "random"), ("pointwise", "random"), ("logprobs", "calibrated")],
)
def test_pipeline_records_new_methods_and_persona_fit(
    method, order, fake_config_file, tmp_path, dataset_dir
):
    extra = (
        f"evaluate: {{conversations_per_pair: 2, judge_method: {method}, judge_order: {order}, "
        "random_persona: false}\n"
    )
    config = load_config(fake_config_file(tmp_path, dataset_dir, extra))
    with Pipeline(config, progress=False, checkpoints={1: "q1"}) as pipeline:
        pipeline.evaluate_checkpoints()
        stages = pipeline.run.manifest["stages"]
        assert stages["eval/iter_1/judge"]["method"] == method
        results = pipeline.results()
    judgements = results.judgements(1)
    assert len(judgements) == 4 and all(j.margin is not None for j in judgements)
    assert all(len(j.verdicts) == (2 if order == "calibrated" else 0) for j in judgements)
    rate = results.win_rate(1)
    assert rate.count == 4 and (math.isnan(rate.position_bias) == (order != "calibrated"))
    for k in (0, 1):  # every iteration's answers get their persona fit
        fits = results.answer_fits(k)
        assert [f.pair_id for f in fits] == [c.pair_id for c in results.answers(k)] and len(
            fits
        ) == 4
        assert all(f.unit == "words" and f.length > 0 for f in fits)
    gain = results.persona_fit_gain(1)
    assert gain.count == 4 and math.isfinite(gain.mean)
    assert results.non_answers(1).mean == 0.0  # the fake policy always answers
    table = printed(cli.print_answer_table, results)
    assert "final answers on the test split" in table and "persona fit" in table and "Q_1" in table
    assert ("n/a" in table) == (order != "calibrated")
    report = write_report([results.root], tmp_path / "report").read_text(encoding="utf-8")
    turns = sum(len(c.questions) for c in results.scored(1))
    asking = results.asking(1)  # the fake questioner asks "... what about you matters here?"
    assert asking.mean == 1.0 and asking.count == turns > 0
    assert "## Final answers" in report
    assert f"| Q_1 | 1.00 ± 0.00 ({turns}) | 0.00 ± 0.00 (4) |" in report


def test_persona_fit_off_and_no_win_rates_write_no_fit(fake_config_file, tmp_path, dataset_dir):
    extra = "evaluate: {conversations_per_pair: 2, persona_fit: false, random_persona: false}\n"
    config = load_config(fake_config_file(tmp_path, dataset_dir, extra))
    with Pipeline(config, progress=False, checkpoints={1: "q1"}) as pipeline:
        pipeline.evaluate_checkpoints()
        results = pipeline.results()
    assert results.answer_fits(1) == [] and results.persona_fit_gain(1) is None
    assert results.judgements(1)[0].margin is None  # logprobs in random order: as before
    assert "margin" not in (results.root / "eval" / "iter_1_judge.jsonl").read_text()


def test_shares_and_paired_fit_from_records(fake_config_file, tmp_path, dataset_dir):
    config = load_config(fake_config_file(tmp_path, dataset_dir))
    run = RunDir(config)

    def conversation(pair, s, response, logprob=-5.0):
        return Conversation(pair[0], pair[1], s, 1, logprob=logprob, response=response)

    pairs = [("t5", "p5"), ("t6", "p6")]
    texts = {
        0: ["What do you like to read?", "Read a novel about the sea tonight."],
        1: ["Read a novel about the sea tonight.", "Try a long walk along the river."],
    }
    for k in (0, 1):
        run.write_records(
            f"eval/iter_{k}",
            f"eval/iter_{k}_scored.jsonl",
            [conversation(p, 0, None) for p in pairs],
        )
        run.write_records(
            f"eval/iter_{k}/answers",
            f"eval/iter_{k}_answers.jsonl",
            [conversation(p, s, texts[k][s]) for p in pairs for s in (0, 1)],
        )
        fits = [
            AnswerFit(
                p[0],
                p[1],
                s,
                1,
                0.0,
                0.0,
                1,
                "tokens",
                fit=0.1 * k + 0.01 * s + (0.2 if p == pairs[1] else 0),
            )
            for p in pairs
            for s in (0, 1)
        ]
        run.write_records(f"eval/iter_{k}/persona_fit", f"eval/iter_{k}_persona_fit.jsonl", fits)
    run.write_records(
        "iter_1/regularize",
        "iter_1/regularized.jsonl",
        [conversation(pairs[0], 0, "Sure?"), conversation(pairs[1], 0, "Read it now, please.")],
    )
    results = RunResults(run.root)
    assert results.non_answers(0).mean == 0.5 and results.non_answers(0).count == 4
    assert results.non_answers(1).mean == 0.0
    assert results.regularized_non_answers(1).mean == 0.5 and results.training_iterations() == [1]
    gain = results.persona_fit_gain(1)
    assert gain.mean == pytest.approx(0.1) and gain.sem == pytest.approx(0.0) and gain.count == 2
    assert results.persona_fit(0).mean == pytest.approx(0.105)  # pair means 0.005 and 0.205
    table = printed(cli.print_answer_table, results)
    assert (
        "50% ± " in table
        and "regularization answers that are no answer: iter_1 (by Q_0) 50%" in table
    )


def test_answer_prompt_is_used_for_final_answers_only(
    fake_config_file, tmp_path, dataset_dir, recording, dataset
):
    pair = dataset.pairs("A")[0]
    conversation = (
        Conversation(pair.task.task_id, pair.persona.persona_id, 0, 1)
        .with_turn("questioner", "What do you like?")
        .with_turn("roleplayer", "I like the sea.")
    )
    systems = {}
    for answer_prompt in ("", "questioner_answer"):
        config = load_config(
            fake_config_file(tmp_path, dataset_dir), [f"regularize.answer_prompt='{answer_prompt}'"]
        )
        questioner = Players(config).questioner()
        questioner.backend = recording(questioner.backend)
        questioner.respond([pair.task.text], [conversation], max_new_tokens=20)
        questioner.ask([pair.task.text], [conversation], seed=0)
        (_, [answer_chat], _), (_, [ask_chat], _) = questioner.backend.calls
        assert "Now please answer my original request" in answer_chat[-1]["content"]
        systems[answer_prompt] = (answer_chat[0]["content"], ask_chat[0]["content"])
    fewshot, answer = get_template("questioner_fewshot"), get_template("questioner_answer")
    assert systems[""] == (fewshot.system, fewshot.system)  # default: as before
    assert systems["questioner_answer"] == (answer.system, fewshot.system)


def _love(description: str) -> str:
    return description.split("I love ")[1].rstrip(".")


class LoveJudge:
    """A judge backend with a fixed bias toward position A that outweighs its content signal: an
    answer that mentions what the persona loves (read from the system prompt) earns 0.5 for its
    letter or 'Yes'."""

    name = "love-judge"

    def logprobs(self, chats, completions):
        scores = []
        for chat, completion in zip(chats, completions):
            love = _love(chat[0]["content"].split("My name is ")[1])
            request = chat[-1]["content"]
            if completion in ("Yes", "No"):
                answer = request.split("Answer:\n")[1]
                scores.append(0.5 * (completion == "Yes" and love in answer))
                continue
            shown = request.split(f"Answer {completion}:\n")[1].split("\n\n")[0]
            scores.append(1.0 * (completion == "A") + 0.5 * (love in shown))
        return scores


def _with_persona_content(dataset):
    """Gold answers that differ by what fits the person (not only by the name they open with)."""
    for (task_id, persona_id), gold in dataset.gold.items():
        love = _love(dataset.personas[persona_id].description)
        dataset.gold[task_id, persona_id] = dataclasses.replace(
            gold, text=f"{gold.text} Enjoy {love}."
        )
    return dataset


def test_labelled_judge_set_takes_the_names_out(dataset):
    comparisons = labelled_comparisons(dataset, count=72, seed=0)
    assert comparisons == []  # the fixture's golds differ only by the name: nothing left to judge
    comparisons = labelled_comparisons(_with_persona_content(dataset), count=72, seed=0)
    names = [p.name.split()[0] for p in dataset.personas.values()]
    assert comparisons and not any(
        n in c.fitting or n in c.other for c in comparisons for n in names
    )


def test_labelled_judge_set_and_accuracy(dataset):
    comparisons = labelled_comparisons(_with_persona_content(dataset), count=72, seed=0)
    assert len(comparisons) == 8  # 2 tasks x 2 personas x 1 other persona, in A and in B
    assert all(
        c.persona.persona_id != c.other_persona_id and c.fitting != c.other for c in comparisons
    )
    assert {c.task.task_id for c in comparisons} <= {"t1", "t2", "t3", "t4"}  # never the test split
    assert labelled_comparisons(dataset, count=3, seed=1) == labelled_comparisons(
        dataset, count=3, seed=1
    )
    with pytest.raises(ValueError, match="never the test split"):
        labelled_comparisons(dataset, ("A", "test"))
    judge = Judge(LoveJudge(), get_template("judge"), SamplingParams(temperature=0.0), "logprobs")
    one_order = judge_accuracy(comparisons, "logprobs", judge=judge, seed=0)
    assert one_order.position_bias == 1.0 and one_order.count == 8
    assert (
        one_order.mean == sum(o == "contender" for o in _firsts(comparisons, judge)) / 8
    )  # follows position
    calibrated = judge_accuracy(comparisons, "calibrated", judge=judge)
    assert calibrated.mean == 1.0 and calibrated.position_bias == 1.0
    pointwise = judge_accuracy(comparisons, "pointwise", judge=judge)
    assert pointwise.mean == 1.0 and math.isnan(pointwise.position_bias)
    fit = judge_accuracy(comparisons, "persona_fit", scorer=FakeBackend())
    assert fit.mean == 1.0 and math.isnan(
        fit.position_bias
    )  # the fitting gold shares the persona's words
    with pytest.raises(ValueError, match="unknown method"):
        judge_accuracy(comparisons, "vibes", judge=judge)


def _firsts(comparisons, judge) -> list[str]:
    from star_gate.stages.evaluate import compare

    items = [(c.persona, c.task.text, c.fitting, c.other) for c in comparisons]
    return [o.shown_first[0] for o in compare(items, judge, "random", 0)]


def test_the_config_sets_how_final_answers_are_sampled_again(
    fake_config_file, tmp_path, dataset_dir
):
    from star_gate.roles.factory import Players

    config = load_config(
        fake_config_file(tmp_path, dataset_dir),
        ["regularize.answer_samples=3", "regularize.answer_temperature=0.6"],
    )
    questioner = Players(config).questioner()
    assert (questioner.answer_samples, questioner.answer_temperature) == (3, 0.6)


def test_judged_pairs_judges_the_same_drawn_pairs_for_every_questioner(
    fake_config_file, tmp_path, dataset_dir
):
    extra = "evaluate: {conversations_per_pair: 2, judged_pairs: 2, random_persona: false}\n"
    config = load_config(fake_config_file(tmp_path, dataset_dir, extra))
    with Pipeline(config, progress=False, checkpoints={1: "q1"}) as pipeline:
        pipeline.evaluate_checkpoints()
        results = pipeline.results()
    tested = {c.pair_id for c in results.scored(1)}
    judged = [{c.pair_id for c in results.answers(k)} for k in (0, 1)]
    assert len(tested) == 4 and judged[0] == judged[1] and len(judged[0]) == 2
    assert {j.pair_id for j in results.judgements(1)} == judged[0]
