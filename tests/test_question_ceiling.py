"""benchmarks/question_ceiling.py end to end on the fake backend: every pair gets the fixed
questions, the facts roleplayer answers them, and the gains are paired against Q_0's own."""

from star_gate.backends.base import SamplingParams
from star_gate.data.records import Conversation
from star_gate.roles.players import Questioner
from star_gate.roles.prompts import get_template


def rows(output: str, labels) -> dict[str, list[str]]:
    """questioner label -> the numbers of its row."""
    found = {}
    for line in output.splitlines():
        for label in labels:
            if line.startswith(label + " "):
                found[label] = line[len(label) :].split()
    return found


def run_with_facts(script, tmp_path, dataset_dir, fake_config_file, *extra: str) -> None:
    """The benchmark on split A, 2 conversations per pair, with the facts roleplayer."""
    config = fake_config_file(tmp_path, dataset_dir)
    config.write_text(config.read_text().replace("mode: persona", "mode: facts"))
    run_dir = str(tmp_path / "ceiling")
    script.main(["--config", str(config), "--split", "A", "--n", "2", "--run-dir", run_dir, *extra])


def test_fixed_questions_are_asked_answered_and_paired(
    tmp_path, dataset_dir, fake_config_file, benchmark_script, capsys
):
    script = benchmark_script("question_ceiling")
    run_with_facts(script, tmp_path, dataset_dir, fake_config_file)
    out = capsys.readouterr().out
    assert "split A: 4 pairs; Q_0 2 one-turn conversations per pair" in out
    table = rows(out, ["Q_0 (sampled)", *script.FIXED_QUESTIONS])
    assert len(table) == 5
    # Q_0 against itself: no gain, no spread
    assert table["Q_0 (sampled)"][:3] == ["+0.00", "±", "0.00"]
    # Asked for the name, the facts roleplayer tells "My name is ..." in every conversation; asked
    # about free time, never. The fake scorer rewards gold words found in the context, and every
    # gold answer opens with the name: the name-telling question must score higher, paired.
    name, hobby = table["name only"], table["what you enjoy"]
    assert float(name[-4]) == 1.0 and float(hobby[-4]) == 0.0  # share of replies with the name
    assert float(name[-3]) == 1.0 and float(hobby[-3]) == 0.0  # share of questions asking it
    assert float(table["about you"][-3]) == 0.0
    assert float(name[-2]) == 1.0  # every fixed question asks
    assert float(name[0]) > float(hobby[0])  # vs Q_0's mean
    assert float(name[3]) > float(hobby[3]) > 0  # vs the negative control


def test_overrides_come_after_the_whole_split_defaults(
    tmp_path, dataset_dir, fake_config_file, benchmark_script, capsys
):
    script = benchmark_script("question_ceiling")
    config = fake_config_file(tmp_path, dataset_dir)
    run_dir = str(tmp_path / "ceiling")
    argv = ["--config", str(config), "--split", "A", "--n", "1", "--run-dir", run_dir]
    script.main([*argv, "--set", "data.train_max_tasks=1"])
    assert "split A: 2 pairs;" in capsys.readouterr().out


def test_openings_start_q0s_questions_and_fixed_ones_can_be_left_out(
    tmp_path, dataset_dir, fake_config_file, benchmark_script, capsys
):
    script = benchmark_script("question_ceiling")
    opening = ["--no-fixed", "--opening", "What is your name"]
    run_with_facts(script, tmp_path, dataset_dir, fake_config_file, *opening)
    out = capsys.readouterr().out
    table = rows(out, ["Q_0 (sampled)", "Q_0 'What is your name'", *script.FIXED_QUESTIONS])
    assert set(table) == {"Q_0 (sampled)", "Q_0 'What is your name'"}
    # Every question of the opened row starts with the opening, so every one mentions a name
    assert float(table["Q_0 'What is your name'"][-3]) == 1.0


def test_address_column_leaves_the_name_out_of_the_gain(
    tmp_path, dataset_dir, fake_config_file, benchmark_script, capsys
):
    script = benchmark_script("question_ceiling")
    run_with_facts(script, tmp_path, dataset_dir, fake_config_file, "--address")
    out = capsys.readouterr().out
    table = rows(out, ["Q_0 (sampled)", *script.FIXED_QUESTIONS])
    assert "after address" in out and table["Q_0 (sampled)"][-3:] == ["+0.00", "±", "0.00"]
    # The fake scorer charges 1 for a gold word found in the context and 3 for one not found, and
    # here Q_0's replies always hold the name: a question that never draws it out is 2 nats
    # further behind with the address scored than without, and one that always does is not.
    name, hobby = table["name only"], table["what you enjoy"]
    assert float(table["Q_0 (sampled)"][-7]) == 1.0 and float(hobby[-7]) == 0.0  # name told
    assert float(hobby[-3]) == float(hobby[0]) + 2
    assert float(name[-3]) == float(name[0])


def test_hint_row_shows_q0_the_gold_and_counts_questions_that_copy_it(
    tmp_path, dataset_dir, fake_config_file, benchmark_script, capsys
):
    script = benchmark_script("question_ceiling")
    run_with_facts(script, tmp_path, dataset_dir, fake_config_file, "--no-fixed", "--hint")
    out = capsys.readouterr().out
    table = rows(out, ["Q_0 (sampled)", "Q_0 shown the gold"])
    assert set(table) == {"Q_0 (sampled)", "Q_0 shown the gold"}
    # The fake questioner's words come from a hash of the request, so none copies the gold, and
    # the summary pairs all 4 pairs' hinted conversations with Q_0's
    assert "Q_0 shown the gold: 0 of 8 questions hold" in out
    assert "over 4 pairs" in out


def test_the_hint_is_appended_to_the_request_the_questioner_sees(benchmark_script):
    script = benchmark_script("question_ceiling")
    seen = []

    class Recording:
        def generate(self, chats, params):
            seen.extend(chats)
            return [["What is your name?"] for _ in chats]

    questioner = Questioner(Recording(), get_template("questioner_plain"), SamplingParams())
    conversation = Conversation(task_id="t1", persona_id="p1", sample_index=0, target_turns=1)
    golds = {conversation.pair_id: "Aoife, try the lentil soup."}
    hinted = script.HintedQuestioner(questioner, golds)
    assert hinted.ask(["Suggest a dinner."], [conversation], seed=0) == ["What is your name?"]
    request = seen[0][-1]["content"]
    assert request.startswith("Suggest a dinner.") and '"Aoife, try the lentil soup."' in request


def test_copies_finds_the_name_or_four_words_of_the_gold(benchmark_script):
    copies = benchmark_script("question_ceiling").copies
    gold = "Aoife, a big pot of lentil soup will feed you all week."
    assert copies("Aoife, do you cook?", gold, "aoife")
    assert copies("Would a big pot of stew do?", gold, "aoife")  # "a big pot of"
    assert not copies("What do you like to eat?", gold, "aoife")
    assert not copies("Is a big pan fine?", gold, "aoife")  # three words only
