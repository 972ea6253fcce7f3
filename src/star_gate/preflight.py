"""Every check a run must pass before it touches its run directory or loads a model.

Each failure is one sentence (ConfigError, or ValueError for the dataset's splits) that the CLI
prints before exiting with status 2. The roles checked are those the run will use (used_roles);
each backend contributes its own checks through the registry (backends.PREFLIGHTS).
"""

from __future__ import annotations

from pathlib import Path

from star_gate.backends import preflight_role
from star_gate.config import RoleConfig, RunConfig
from star_gate.data.loaders import load_dataset
from star_gate.data.records import Dataset
from star_gate.parallel import check_parallel
from star_gate.training.launch import check_launcher
from star_gate.training.tracking import check_tracker


def used_roles(config: RunConfig) -> dict[str, RoleConfig]:
    """The roles this run loads or calls, by config label: the questioner (which also scores), the
    roleplayers that are models (not the `facts` retriever), and the judge if the evaluation uses
    one."""
    roles = {"roles.questioner": config.roles.questioner}
    for label, role in (
        ("roles.roleplayer", config.roles.roleplayer),
        ("evaluate.roleplayer", config.evaluate.roleplayer),
    ):
        if role is not None and role.uses_model:
            roles[label] = role
    if config.evaluate.uses_judge:
        roles["roles.judge"] = config.roles.judge
    return roles


def limit_splits(
    dataset: Dataset, max_tasks: int | None, max_personas: int | None, data=None
) -> Dataset:
    """Keep the first N tasks and personas of each split (demos and smoke tests); with a DataConfig
    `data`, each split's own limits (data.limits: training splits may keep more). In a split of
    listed pairs: its first N tasks, and the first N personas of each."""
    limits = {
        name: data.limits(name) if data is not None else (max_tasks, max_personas)
        for name in dataset.splits
    }
    dataset.splits = {name: _limited(spec, *limits[name]) for name, spec in dataset.splits.items()}
    return dataset


def _limited(spec: dict, max_tasks: int | None, max_personas: int | None) -> dict:
    if "pairs" not in spec:
        return {"tasks": spec["tasks"][:max_tasks], "personas": spec["personas"][:max_personas]}
    tasks = list(dict.fromkeys(t for t, _ in spec["pairs"]))[:max_tasks]
    kept: dict[str, list] = {t: [] for t in tasks}
    for task_id, persona_id in spec["pairs"]:
        if task_id in kept and (max_personas is None or len(kept[task_id]) < max_personas):
            kept[task_id].append([task_id, persona_id])
    return {"pairs": [pair for t in tasks for pair in kept[t]]}


def runnable_dataset(config: RunConfig) -> Dataset:
    """The dataset (validated as it loads), limited as data.* says, with every split the run uses.

    Raises:
        DataError: the dataset's files, naming file, line and field.
        ValueError: a split missing, or too few test personas for the random-persona control.
    """
    dataset = load_dataset(config.data.path)
    for split in (*config.data.train_splits, config.data.test_split):
        if split not in dataset.splits:
            raise ValueError(f"data.path has no split {split!r}; it has {sorted(dataset.splits)}")
    dataset = limit_splits(dataset, config.data.max_tasks, config.data.max_personas, config.data)
    _check_reward_data(config, dataset)
    if config.evaluate.random_persona and len(dataset.split_personas(config.data.test_split)) < 2:
        raise ValueError(
            "evaluate.random_persona needs at least 2 test personas; set it to false or use more personas"
        )
    return dataset


def _check_reward_data(config: RunConfig, dataset: Dataset) -> None:
    """What score.reward and a details roleplayer need of the dataset: gold answers, or missing
    details (details.jsonl)."""
    if config.score.reward != "details" and not dataset.gold:
        raise ValueError(
            f"score.reward {config.score.reward} needs gold answers, and data.path has no "
            "gold.jsonl; score it by missing details with score.reward: details"
        )
    needs_details = config.score.reward == "details" or any(
        role is not None and role.mode == "details"
        for role in (config.roles.roleplayer, config.evaluate.roleplayer)
    )
    if needs_details and not dataset.details:
        raise ValueError(
            "score.reward details and roleplayer mode details need missing details, and data.path "
            "has no details.jsonl (import one with `star-gate data import-in3`)"
        )


def check_runnable(config: RunConfig, probe_roles: bool = True) -> Dataset:
    """Every pre-run check; returns the runnable dataset.

    probe_roles: also run the backends' checks (an API key in the environment, a scoring server's
    log-probs probed over the network, the vllm package); `star-gate validate` checks offline.
    """
    dataset = runnable_dataset(config)
    if probe_roles:
        run_dir = Path(config.run_dir)
        # The run's own API cache when it exists (a rerun pays nothing); never created here, so
        # that a refused config leaves no run directory behind and --branch still finds none.
        cache = run_dir / "api_cache.sqlite" if run_dir.is_dir() else None
        for label, role in used_roles(config).items():
            preflight_role(role, label, config, cache)
    check_parallel(config)  # the ray package, and the GPUs a local Ray instance is asked for
    # the accelerate config of a launched training, and its packages
    check_launcher(config.train, online=config.loop == "online")
    check_tracker(config.train.report_to)  # the package of the logs' tracker
    return dataset
