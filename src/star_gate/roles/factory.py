"""Players built from a run config: the questioner Q_k, the roleplayer, the scorer and the judge.

Built from the config alone (and the path of the run's API cache), so that the pipeline and every
Ray worker (star_gate/parallel.py) build the same players and hold their own model replicas.
"""

from __future__ import annotations

import sys
from pathlib import Path

from star_gate.backends import REMOTE_BACKENDS, Backend, load_backend, role_sampling
from star_gate.config import RoleConfig, RoleplayerConfig, RunConfig
from star_gate.memory import return_freed_memory
from star_gate.roles.players import (
    DetailsRoleplayer,
    GroundedRoleplayer,
    Judge,
    PersonaRoleplayer,
    Questioner,
    Roleplayer,
)
from star_gate.roles.prompts import get_template, template_for


class Players:
    """Loads each model once, lazily, and binds it to the roles that name it.

    Args:
        cache_path: where API backends keep their answers (the run's api_cache.sqlite).
    """

    def __init__(
        self, config: RunConfig, cache_path: str | Path | None = None, progress: bool = False
    ):
        self.config = config
        self.cache_path = cache_path
        self.progress = progress
        self.backends: dict[tuple, Backend] = {}
        self.retriever = None  # the grounded roleplayer's sentence encoder, loaded on first use
        # Work counted by backends since released, not yet reported by new_work.
        self._released_work: dict[str, int] = {}

    def backend(self, role: RoleConfig, model: str | None = None) -> Backend:
        """One backend per (kind, model, device or server); roles naming the same model share it."""
        model = model or role.model
        key = role.serving_key(model)
        if key not in self.backends:
            self.backends[key] = load_backend(
                role, model, self.progress, cache_path=self.cache_path
            )
        return self.backends[key]

    def release(self, model: str) -> None:
        """Free the memory of a model (a fine-tuned policy) that no later step needs."""
        self._keep_only(lambda key: key[1] != model)
        return_freed_memory()

    def _keep_only(self, keep) -> None:
        """Drop the backends whose key fails `keep`, keeping the work they counted for new_work."""
        for key in [key for key in self.backends if not keep(key)]:
            _add(self._released_work, self.backends.pop(key).counters())

    def release_local_models(self) -> None:
        """Drop every model held in this process (API clients stay), so that training launched in
        other processes finds the GPUs' memory free; each loads again on its next use."""
        self._keep_only(lambda key: key[0] in REMOTE_BACKENDS)
        return_freed_memory()
        torch = sys.modules.get("torch")  # never imported just for this
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def scorer(self) -> Backend:
        """Q_BASE, frozen: the initial questioner model."""
        return self.backend(self.config.roles.questioner)

    def questioner(self, model: str | None = None) -> Questioner:
        """The questioner served by `model` (a checkpoint path); None: the base model, Q_0."""
        role = self.config.roles.questioner
        answer_prompt = (
            self.config.regularize.answer_prompt
        )  # the regularizer's and the evaluation's
        return Questioner(
            self.backend(role, model),
            get_template(self.config.questioner_prompt(trained=model is not None)),
            role_sampling(role),
            answer_template=get_template(answer_prompt) if answer_prompt else None,
            answer_samples=self.config.regularize.answer_samples,
            answer_temperature=self.config.regularize.answer_temperature,
            ask_samples=self.config.simulate.ask_samples,
        )

    def roleplayer(self, role: RoleplayerConfig | None = None) -> Roleplayer:
        role = role or self.config.roles.roleplayer
        params = role_sampling(role)
        if role.mode == "details":
            from star_gate.roles.detail_matcher import DetailMatcher

            return DetailsRoleplayer(DetailMatcher())
        backend = self.backend(role) if role.uses_model else None
        if role.mode == "persona":
            return PersonaRoleplayer(
                backend, template_for("roleplayer_persona", role.prompt), params
            )
        if self.retriever is None:
            from star_gate.roles.grounding import FactRetriever

            self.retriever = FactRetriever(role.embedder)
        template = template_for("roleplayer_grounded", role.prompt)
        return GroundedRoleplayer(
            backend,
            template,
            params,
            self.retriever,
            role.facts_per_answer,
            verbatim=role.mode == "facts",
            repeat_facts=role.repeat_facts,
            answer_questions_only=role.answer_questions_only,
        )

    def judge(self) -> Judge:
        role = self.config.roles.judge
        template = template_for("judge", role.prompt)
        evaluate = self.config.evaluate
        return Judge(
            self.backend(role),
            template,
            role_sampling(role),
            evaluate.judge_method,
            pointwise_template=get_template(evaluate.pointwise_prompt),
        )

    def new_work(self) -> dict[str, int]:
        """Work the backends counted since the last call (Backend.counters): prompts cut to fit
        max_context, and API calls, cache hits and tokens."""
        new, self._released_work = {"truncated_prompts": 0, **self._released_work}, {}
        for backend in self.backends.values():
            _add(new, backend.counters())
        return new


def _add(totals: dict[str, int], counts: dict[str, int]) -> None:
    for name, value in counts.items():
        totals[name] = totals.get(name, 0) + value
