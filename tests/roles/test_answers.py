"""The rules for what asks and what answers, on labelled examples: questioner turns of the
bundled model, hand-written cases, and every bundled gold answer (each one answers)."""

from __future__ import annotations

import pytest

from star_gate.data.loaders import load_dataset
from star_gate.roles.answers import asking_sentences, asks, is_non_answer

ASKS = [
    "What kind of food do you like?",
    "Do you have any dietary restrictions?",
    "Any allergies?",
    "Great question! What's your favourite genre?",
    "Tell me about your budget.",
    "Let me know what you usually cook on weeknights.",
    "I'd love to know more about your taste in music.",
    "I'm curious about how much time you have.",
    "Before I suggest anything, is this for a special occasion?",
    "That sounds fun. How many people will come?",
    '"What do you enjoy doing on weekends?"',
    "What's the type of cuisine you love, and I'd love to recommend a dish.",
    "Do you cook at home most nights.",
]
ASKS_NOTHING = [
    "",
    "I recommend Dune.",
    "Have you tried miso soup?",
    "Have you ever considered learning the guitar?",
    "Why not try a cooking class?",
    "How about a trip to Lisbon?",
    "What about trying a vegetable curry tonight?",
    "Would you like me to list some options?",
    "Shall I suggest a few books?",
    "Who doesn't love pizza?",
    "I'm so sorry to hear about your illness.",
    "You're so brave.",
    "Cooking at home is a great way to save money.",
    "Did you know that walking helps you sleep?",
    "What a wonderful goal you have.",
    "How wonderful that you love cooking.",
]


@pytest.mark.parametrize(
    "turn, asking", [(t, True) for t in ASKS] + [(t, False) for t in ASKS_NOTHING]
)
def test_which_turns_ask(turn, asking):
    assert asks(turn) == asking


def test_asking_sentences_keep_only_the_asking_ones():
    turn = "Great idea! Have you tried hiking? Try a DSLR. What do you like to shoot?"
    assert asking_sentences(turn) == ["What do you like to shoot?"]


NON_ANSWERS = [
    "",
    "   ",
    "Sure!",
    "Happy to help.",
    "What kind of books do you enjoy reading?",
    "Great! Before I answer, how much time do you have each week?",
    "Could you tell me more about your budget? Then I can suggest a plan.",
    'Thanks! And what is your favourite cuisine?"',
    "Which of these do you prefer: hiking or painting?",
    "I'm so glad you're committed to your culinary journey.",
    "I'm so sorry to hear about your illness. You're so brave.",
    "That sounds wonderful, I hope you have a lovely evening.",
    "What kind of cuisine do you like?",
    "Great, thanks for sharing. What is your budget for the trip?",
    "Looking for a book? What genres do you like? I can help.",
    "Thank you for telling me all of this about yourself.",
    "What a great idea! I'm so glad you asked me.",
    "I'm so sorry to hear that. What's your favorite comfort food? I can recommend a few.",
    "I'm glad to know! What's the type of cuisine you love, and I'd love to recommend a dish.",
]
ANSWERS = [
    "Try watercolour painting: you already love it, and a weekly class fits your schedule.",
    "Since you work night shifts, cook a big pot of lentil soup on Sunday and reheat it.",
    "Read 'The Name of the Rose'. It is a crime novel set in a medieval abbey, e.g. for long rides.",
    "I recommend saving 10% of each pay cheque. Why? Because small habits add up over 3.5 years.",
    "Go to Lisbon in May!",
    "Try a leek soup tonight with chives from your garden.",
    "Why not let your garden decide? A leek soup costs very little.",
    "I recommend Dune by Frank Herbert, a classic of science fiction.",
    "You could take the train to Porto and spend two days by the river.",
    "First, set a budget of two hundred euros a month for the plan.",
    "Here is a bio you could use: Grace manages a coffee cooperative.",
    "A tin whistle is a great choice, because it is cheap and portable.",
    "Day one, head up the coast and check into a cabin near the beach.",
    "The best place to start is the public library, which lends e-books for free.",
]


@pytest.mark.parametrize(
    "text, failing", [(t, True) for t in NON_ANSWERS] + [(t, False) for t in ANSWERS]
)
def test_which_final_answers_answer(text, failing):
    assert is_non_answer(text) == failing


def test_every_bundled_gold_answer_answers_and_asks_nothing():
    gold = load_dataset("bundled").gold
    assert len(gold) >= 560
    assert [key for key, g in gold.items() if is_non_answer(g.text)] == []
    assert [key for key, g in gold.items() if asks(g.text)] == []
