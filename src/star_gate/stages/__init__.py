"""The stages of one expert iteration. Each is a function from records to records: no file I/O,
no model loading, and all randomness from an explicit seed."""

from star_gate.stages.regularize import regularize
from star_gate.stages.score import (
    conversation_prefixes,
    question_gains,
    score_controls,
    score_conversations,
)
from star_gate.stages.select import preference_pairs, select_preference_pairs, select_top_k
from star_gate.stages.simulate import simulate

__all__ = [
    "conversation_prefixes",
    "preference_pairs",
    "question_gains",
    "regularize",
    "score_controls",
    "score_conversations",
    "select_preference_pairs",
    "select_top_k",
    "simulate",
]
