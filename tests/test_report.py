"""The evaluation records of a whole tiny run, the report written from them, and `star-gate eval`."""

from __future__ import annotations

import matplotlib.image
import pytest
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.config import config_to_yaml
from star_gate.data.records import Conversation
from star_gate.pipeline import Pipeline
from star_gate.report import fmt, write_report
from star_gate.results import RunResults


@pytest.fixture(scope="module")
def results(tiny_run) -> RunResults:
    config, _ = tiny_run
    return RunResults(config.run_dir)


def test_every_condition_and_judgement_is_recorded(results):
    assert results.iterations() == [0, 1, 2]
    for k in (0, 1, 2):
        true, other = results.scored(k), results.scored(k, "random")
        assert len(true) == len(other) == 4  # 4 test pairs x 1 conversation
        # same pairs, same conversation lengths (shared random stream), different acting persona
        assert [(c.pair_id, c.target_turns) for c in true] == [
            (c.pair_id, c.target_turns) for c in other
        ]
        assert all(c.roleplayer_persona_id == c.persona_id for c in true)
        assert all(c.roleplayer_persona_id != c.persona_id for c in other)
        assert all(c.response is not None for c in results.answers(k))
    for k in (1, 2):
        judgements = results.judgements(k)
        assert len(judgements) == 4 and all(len(j.verdicts) == 1 for j in judgements)
        rate = results.win_rate(k)
        assert rate.count + rate.unreadable == 4 and 0 <= rate.mean <= 1
    assert results.judgements(0) == []


def test_report_files_and_numbers(results, tmp_path):
    report = write_report([results.root], tmp_path)
    text = report.read_text(encoding="utf-8")
    for name in ("logprobs.png", "gap_share.png", "win_rates.png", "win_rates_by_length.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert f"({name})" in text
    for k in (0, 1, 2):
        est = results.logprob(k)
        assert f"| Q_{k} | {fmt(est.mean, est.sem)} ({est.count})" in text
    rate = results.win_rate(2)
    assert f"| Q_2 | {fmt(rate.mean, rate.sem, 3)} | {rate.count} |" in text
    negative = results.control_rows()[0]
    assert f"negative control: {fmt(negative.mean, negative.sem)}" in text
    assert "A weak judge" in text  # the tiny judge model
    assert "<b>final answer</b>" in text and "<th>Q_2</th>" in text


def test_several_runs_share_one_report(results, tmp_path):
    write_report([results.root, results.root], tmp_path, examples=1)
    wide = matplotlib.image.imread(tmp_path / "logprobs.png")
    single = tmp_path / "single"
    write_report([results.root], single)
    assert wide.shape[1] > 1.7 * matplotlib.image.imread(single / "logprobs.png").shape[1]
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert text.count(f"### {results.name}") >= 4
    side_by_side = text.split("## Side by side")[1].split("##")[0]
    rows = [line for line in side_by_side.splitlines() if line.startswith(f"| `{results.name}`")]
    gain = results.paired_gain(2, 0)
    assert len(rows) == 2 and "SFT, final answer: policy" in rows[0]
    assert fmt(gain.mean, gain.sem) in rows[0] and " min |" in rows[0]


def repeat_of(results, folder, gain_shift: float = 0.0, **changes):
    """A copy of the run as if run again with other settings (e.g. seed), its Q_2 test
    conversations' gold log-probs moved by gain_shift."""
    import json
    import shutil

    import yaml

    shutil.copytree(results.root, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        section = config
        for name in path:
            section = section[name]
        section[last] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    scored = folder / results.stages["eval/iter_2"]["output"]
    rows = [json.loads(line) for line in scored.read_text(encoding="utf-8").splitlines()]
    scored.write_text(
        "".join(json.dumps(row | {"logprob": row["logprob"] + gain_shift}) + "\n" for row in rows),
        encoding="utf-8",
    )
    return RunResults(folder)


def test_seeds_of_one_config_are_pooled(results, tmp_path):
    again = repeat_of(results, tmp_path / "seed-7", gain_shift=3.0, seed=7)
    write_report([results.root, again.root], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    pooled = text.split("## Pooled over 2 seeds")[1].split("##")[0]
    first, second = results.paired_gain(2).mean, again.paired_gain(2).mean
    assert second == pytest.approx(first + 3.0)
    # two runs: the mean of the two gains; the SEM over runs is half their difference (1.5),
    # unless the runs' own SEMs, in root mean square over sqrt(2), are larger
    own = results.paired_gain(2).sem  # the same in both: the shift moves every value alike
    assert again.paired_gain(2).sem == pytest.approx(own)
    row = next(line for line in pooled.splitlines() if line.startswith("| Q_2 − Q_0"))
    expected = fmt((first + second) / 2, max(1.5, own / 2**0.5))
    assert expected in row and f"{first:+.2f}, {second:+.2f}" in row
    assert "| Q_1 − Q_0 |" in pooled


def test_runs_that_agree_by_chance_keep_their_own_error_bars(results, tmp_path):
    from star_gate.results import pooled_gain

    again = repeat_of(results, tmp_path / "seed-7", gain_shift=1e-3, seed=7)
    pooled = pooled_gain([results, again], 2)
    assert pooled.sem == pytest.approx(results.paired_gain(2).sem / 2**0.5, rel=1e-6)
    assert pooled.sem > 1e-3  # not the runs' tiny spread


def test_runs_of_other_settings_are_not_pooled(results, tmp_path):
    other = repeat_of(results, tmp_path / "lr", **{"seed": 7, "train.learning_rate": 0.5})
    write_report([results.root, other.root], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Side by side" in text and "## Pooled" not in text


def test_report_of_a_non_run_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in " ".join(result.output.split())


def test_eval_alone_on_another_runs_checkpoints(tiny_run, tmp_path):
    config, _ = tiny_run
    config_file = tmp_path / "eval.yaml"
    eval_config = config.model_copy(update={"run_dir": str(tmp_path / "eval-run")})
    config_file.write_text(config_to_yaml(eval_config), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "eval",
            str(config_file),
            "--from",
            config.run_dir,
            "evaluate.response_model_ablation=true",
            "evaluate.judge_order=counterbalanced",
        ],
    )
    assert result.exit_code == 0, result.output
    evaluated = RunResults(tmp_path / "eval-run")
    assert evaluated.iterations() == [0, 1, 2]
    assert not (tmp_path / "eval-run" / "iter_1").exists()  # nothing trained here
    assert all(len(j.verdicts) == 2 for j in evaluated.judgements(2))
    base = evaluated.judgements(2, "judge_base")
    assert len(base) == 4 and base[0].contender == "Q_BASE answering after Q_2"
    # the same checkpoints and seed give the same test conversations as the run that trained them
    original = Pipeline(config, progress=False).run.records("eval/iter_2", Conversation.from_json)
    assert [c.turns for c in evaluated.scored(2)] == [c.turns for c in original]
    assert (tmp_path / "eval-run" / "report.md").exists()
    again = runner.invoke(
        app,
        [
            "eval",
            str(config_file),
            "--from",
            config.run_dir,
            "evaluate.response_model_ablation=true",
            "evaluate.judge_order=counterbalanced",
        ],
    )
    assert again.exit_code == 0 and "done" not in again.output


def test_eval_needs_checkpoints(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "configs/tiny.yaml",
            f"run_dir={tmp_path / 'r'}",
            "--checkpoint",
            str(tmp_path / "missing"),
        ],
    )
    assert result.exit_code == 2 and "not found" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["eval", "configs/tiny.yaml", f"run_dir={tmp_path / 'r'}"])
    assert result.exit_code == 2 and "no checkpoints" in " ".join(result.output.split())


def test_win_rate_plot_without_judged_answers_has_no_empty_legend(tmp_path):
    import warnings

    from star_gate.report import plot_win_rates

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when a legend has nothing to show
        path = plot_win_rates([], tmp_path / "win_rates.png")
    assert path.exists()


@pytest.mark.parametrize(
    "reward, says",
    [
        ("gold_logprob", "log p_base(g | ·)"),
        ("gold_after_address", "leaves out the gold answer's opening address"),
        ("details", "missing details"),
    ],
)
def test_the_score_section_names_the_reward(reward, says):
    from types import SimpleNamespace

    from star_gate.report import score_section

    run = SimpleNamespace(config=SimpleNamespace(score=SimpleNamespace(reward=reward)))
    text = " ".join(score_section([run]))
    assert says in text
    assert ("opening address" in text) == (reward == "gold_after_address")
