"""Building a dataset: importing requests, writing personas and gold with an oracle, resuming."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from star_gate.backends.base import SamplingParams
from star_gate.build import (
    DatasetFolder,
    assign_splits,
    build_gold,
    build_personas,
    build_tasks,
    dedupe,
    extract_requests,
    parse_split_sizes,
    persona_name,
    plan_gold,
    read_requests,
)
from star_gate.cli import app
from star_gate.data.jsonl import DataError
from star_gate.data.loaders import load_dataset
from star_gate.data.records import Persona
from star_gate.roles.prompts import get_template

REQUESTS = [
    "Recommend me a book.",
    "recommend me   a book!",  # the same request again
    "What should I cook tonight?",
    "",
    "Plan a weekend trip for me.",
    "How do I start running?",
    "Help me pick a laptop.",
    "What gift should I buy my sister?",
]
SEEDS = [
    Persona("s1", "Ada Byron", "My name is Ada Byron and I am 36 years old. I love mathematics."),
    Persona("s2", "Kofi Mensah", "My name is Kofi Mensah and I am 52 years old. I farm cocoa."),
    Persona("s3", "Mei Lin", "My name is Mei Lin and I am 19 years old. I study dance."),
]
PEOPLE = [
    "Rosa",
    "Tariq",
    "Ines",
    "Bram",
    "Yuki",
    "Olu",
    "Sven",
    "Priya",
    "Lena",
    "Omar",
    "Nia",
    "Hugo",
]


class ScriptedOracle:
    """Writes a distinct person per call (or a retold example first, to test rejection); answers
    gold requests with a line naming the persona's first word. Counts every prompt it receives."""

    def __init__(self, copy_first: int = 0, empty_gold: int = 0):
        self.name = "scripted"
        self.prompts = 0
        self.copy_first = copy_first
        self.empty_gold = empty_gold
        self.people = iter(PEOPLE)

    def generate(self, chats, params):
        out = []
        for chat in chats:
            self.prompts += 1
            request = chat[-1]["content"]
            if request.startswith("Here are two example people"):
                out.append([self._person(request)])
            elif self.empty_gold:
                self.empty_gold -= 1
                out.append(["   "])
            else:
                out.append(
                    [f"For you: an answer to '{request}' shaped by {chat[0]['content'][-30:]}"]
                )
        return out

    def _person(self, request: str) -> str:
        if self.copy_first:
            self.copy_first -= 1
            return request.split("Example 1:\n")[1].split("\n")[0] + " " + " ".join(["more"] * 30)
        name = next(self.people)
        habits = " ".join(
            f"{name.lower()}{i}" for i in range(30)
        )  # distinct words: no near-duplicates
        return f"My name is {name} Quill and I am {20 + len(name)} years old. My habits: {habits}."


def write_requests(path, rows, key="prompt"):
    path.write_text("".join(json.dumps({key: r}) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    built = DatasetFolder(tmp_path / "built")
    build_tasks(
        built, REQUESTS, {"A": 2, "B": 2, "test": 1}, seed=0, source="inline", say=lambda _: None
    )
    return built


def params():
    return SamplingParams(temperature=0.9, max_new_tokens=64)


def test_dedupe_drops_empty_and_near_duplicates_and_stops_when_enough():
    kept, dropped = dedupe(REQUESTS, wanted=3)
    assert kept == [
        "Recommend me a book.",
        "What should I cook tonight?",
        "Plan a weekend trip for me.",
    ]
    assert dropped == 2


def test_split_sizes_and_assignment():
    sizes = parse_split_sizes("A=3, B=2,test=1")
    assert sizes == {"A": 3, "B": 2, "test": 1}
    splits = assign_splits([f"x{i}" for i in range(8)], sizes, seed=1)
    assert [len(v) for v in splits.values()] == [3, 2, 1]
    assert len({i for ids in splits.values() for i in ids}) == 6
    assert assign_splits([f"x{i}" for i in range(8)], sizes, seed=1) == splits
    for bad in ("A=0", "A", "A=x,B=2", "=3"):
        with pytest.raises(ValueError, match="NAME=COUNT"):
            parse_split_sizes(bad)


def test_requests_from_jsonl_csv_txt_and_a_dataset_folder(tmp_path):
    jsonl = write_requests(tmp_path / "r.jsonl", ["a b", "c d"])
    assert read_requests(str(jsonl), "prompt") == ["a b", "c d"]
    (tmp_path / "r.csv").write_text("id,prompt\n1,first one\n2,second one\n", encoding="utf-8")
    assert read_requests(str(tmp_path / "r.csv"), "prompt") == ["first one", "second one"]
    (tmp_path / "r.txt").write_text("one\ntwo\n", encoding="utf-8")
    assert read_requests(str(tmp_path / "r.txt")) == ["one", "two"]
    # A folder of data files loads through `datasets.load_dataset`, the same call a hub id takes.
    hub = tmp_path / "hub"
    hub.mkdir()
    write_requests(hub / "train.jsonl", ["from the hub", "another"], key="instruction")
    assert read_requests(str(hub), "instruction") == ["from the hub", "another"]
    with pytest.raises(DataError, match="field 'prompt': no such column"):
        read_requests(str(hub), "prompt")


def test_bad_request_sources_name_file_line_and_field(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"prompt": "ok"}\n{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r.jsonl, line 2: field 'prompt' is not a string"):
        read_requests(str(jsonl), "prompt")
    with pytest.raises(DataError, match="line 1: field 'text' is missing"):
        read_requests(str(jsonl), "text")
    (tmp_path / "r.csv").write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="r.csv, line 1: field 'prompt': no such column"):
        read_requests(str(tmp_path / "r.csv"), "prompt")
    with pytest.raises(DataError, match="file not found"):
        read_requests(str(tmp_path / "missing.jsonl"), "prompt")


def test_tasks_are_split_disjointly_and_a_rerun_is_a_no_op(folder):
    tasks, splits = folder.tasks(), folder.splits()
    assert len(tasks) == 5
    assert sorted(i for spec in splits.values() for i in spec["tasks"]) == sorted(tasks)
    assert folder.build["tasks"]["dropped"] == 2
    before = folder.file("tasks.jsonl").read_text(encoding="utf-8")
    build_tasks(
        folder, REQUESTS, {"A": 2, "B": 2, "test": 1}, seed=0, source="inline", say=lambda _: None
    )
    assert folder.file("tasks.jsonl").read_text(encoding="utf-8") == before
    with pytest.raises(DataError, match="other settings"):
        build_tasks(folder, REQUESTS, {"A": 2, "B": 2, "test": 1}, seed=1, source="inline")


def test_too_few_distinct_requests(tmp_path):
    with pytest.raises(DataError, match="only 6 distinct requests, but the splits need 9"):
        build_tasks(
            DatasetFolder(tmp_path), REQUESTS, {"A": 3, "B": 3, "test": 3}, seed=0, source="r"
        )


def test_each_persona_call_shows_two_seed_personas_and_copies_are_rejected(folder):
    oracle = ScriptedOracle(copy_first=2)
    result = build_personas(
        folder,
        oracle,
        get_template("persona_writer"),
        SEEDS,
        {"A": 2, "B": 2, "test": 1},
        params(),
        say=lambda _: None,
    )
    personas = folder.personas()
    assert result.added == 5 and len(personas) == 5
    assert oracle.prompts == 7  # two retold examples were rejected and retried
    assert [p.name for p in personas.values()] == [
        "Rosa Quill",
        "Tariq Quill",
        "Ines Quill",
        "Bram Quill",
        "Yuki Quill",
    ]
    splits = folder.splits()
    assert sorted(i for spec in splits.values() for i in spec["personas"]) == sorted(personas)
    assert folder.build["personas"]["attempts"] == 7


def test_persona_prompt_holds_two_different_seeds(folder, recording):
    oracle = recording(ScriptedOracle())
    build_personas(
        folder,
        oracle,
        get_template("persona_writer"),
        SEEDS,
        {"A": 2, "B": 2, "test": 1},
        params(),
        say=lambda _: None,
    )
    for _, chats, _ in oracle.calls:
        for chat in chats:
            shown = [s.name for s in SEEDS if s.description in chat[-1]["content"]]
            assert len(shown) == 2


def test_gold_for_every_pair_then_the_folder_loads(folder):
    build_personas(
        folder,
        ScriptedOracle(),
        get_template("persona_writer"),
        SEEDS,
        {"A": 2, "B": 2, "test": 1},
        params(),
        say=lambda _: None,
    )
    oracle = ScriptedOracle()
    result = build_gold(
        folder, oracle, get_template("oracle"), params(), chunk=3, say=lambda _: None
    )
    assert result.calls == oracle.prompts == 2 * 2 + 2 * 2 + 1 * 1
    dataset = load_dataset(folder.root)
    assert len(dataset.gold) == 9 and all(g.oracle == "scripted" for g in dataset.gold.values())
    assert len(dataset.pairs("A")) == 4
    # the gold prompt carries the persona and the task
    pair = dataset.pairs("test")[0]
    assert pair.task.text in pair.gold.text
    again = ScriptedOracle()
    assert (
        build_gold(folder, again, get_template("oracle"), params(), say=lambda _: None).calls == 0
    )
    assert again.prompts == 0


def test_gold_resumes_after_a_crash_without_repeating_calls(folder):
    build_personas(
        folder,
        ScriptedOracle(),
        get_template("persona_writer"),
        SEEDS,
        {"A": 2, "B": 2, "test": 1},
        params(),
        say=lambda _: None,
    )

    class Crashing(ScriptedOracle):
        def generate(self, chats, params):
            if self.prompts >= 4:
                raise KeyboardInterrupt
            return super().generate(chats, params)

    with pytest.raises(KeyboardInterrupt):
        build_gold(
            folder, Crashing(), get_template("oracle"), params(), chunk=2, say=lambda _: None
        )
    assert len(folder.gold()) == 4  # two whole chunks were saved
    rest = ScriptedOracle()
    build_gold(folder, rest, get_template("oracle"), params(), chunk=2, say=lambda _: None)
    assert rest.prompts == 5 and len(folder.gold()) == 9


def test_empty_gold_answers_stay_pending(folder):
    build_personas(
        folder,
        ScriptedOracle(),
        get_template("persona_writer"),
        SEEDS,
        {"A": 2, "B": 2, "test": 1},
        params(),
        say=lambda _: None,
    )
    result = build_gold(
        folder, ScriptedOracle(empty_gold=2), get_template("oracle"), params(), say=lambda _: None
    )
    assert result.added == 7 and len(plan_gold(folder)) == 2


def test_persona_name_patterns():
    assert persona_name("My name is Aoife Brennan and I am 72.", "x") == "Aoife Brennan"
    assert persona_name("Meet Reece. He is a profiler.", "x") == "Reece"
    assert persona_name("Name: Emma Kiley Age: 30", "x") == "Emma Kiley"
    assert persona_name("a person with no name given", "p7") == "p7"


def test_steps_out_of_order_are_refused_before_any_model_loads(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "gold", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    result = runner.invoke(
        app, ["data", "personas", str(tmp_path / "nothing"), "roles.oracle.model=/no/such/model"]
    )
    assert result.exit_code == 2 and "run `star-gate data tasks` first" in result.output


def test_cli_tasks_prints_the_call_count_and_refuses_bad_sizes(tmp_path):
    source = write_requests(tmp_path / "r.jsonl", REQUESTS)
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "data",
            "tasks",
            str(out),
            "--source",
            str(source),
            "--column",
            "prompt",
            "--splits",
            "A=2,B=2,test=1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "0 model calls" in result.output
    bad = runner.invoke(
        app,
        [
            "data",
            "tasks",
            str(tmp_path / "o2"),
            "--source",
            str(source),
            "--column",
            "prompt",
            "--splits",
            "A=two",
        ],
    )
    assert bad.exit_code == 2 and "NAME=COUNT" in bad.output
    assert not (tmp_path / "o2").exists()


def test_extract_keeps_the_request_inside_each_row(tmp_path):
    # Rows shaped like the paper's source dataset: the human's turn, then the assistant's.
    rows = [f"Human: {text} Assistant: Sure, here is an answer." for text in REQUESTS if text]
    rows.insert(1, "no human turn in this row")
    pattern = r"Human:\s*(.*?)\s*Assistant:"
    assert extract_requests(rows[:2], pattern) == ["Recommend me a book.", ""]
    folder = DatasetFolder(tmp_path / "d")
    build_tasks(
        folder,
        rows,
        {"A": 2, "B": 2, "test": 1},
        seed=0,
        source="inline",
        say=lambda _: None,
        extract=pattern,
    )
    assert sorted(t.text for t in folder.tasks().values()) == sorted(dedupe(REQUESTS, 5)[0])
    assert folder.build["tasks"]["extract"] == pattern
    assert folder.build["tasks"]["dropped"] == 2  # the near-duplicate and the row without a match


def test_cli_refuses_a_bad_extract_pattern_before_reading(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "data",
            "tasks",
            str(tmp_path / "d"),
            "--source",
            "owner/never-read",
            "--extract",
            "Human:(",
            "--splits",
            "A=1",
        ],
    )
    assert result.exit_code == 2 and "not a valid regular expression" in result.output
    assert not (tmp_path / "d").exists()
