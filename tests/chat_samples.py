"""Chats and completions that several backend tests score and generate from."""

# Deliberately unsorted lengths, so the backend's length sort must be undone on output.
CHATS = [
    [
        {
            "role": "system",
            "content": "You are a helpful assistant. Tailor your answer to the user.",
        },
        {"role": "user", "content": "Recommend me a book."},
        {"role": "assistant", "content": "Happy to help! What topics do you enjoy most?"},
        {"role": "user", "content": "I like history and true stories about ordinary people."},
    ],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Where did you grow up?"},
        {"role": "assistant", "content": "I grew up on a farm."},
        {"role": "user", "content": "ok"},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What should I cook tonight?"},
    ],
    [
        {
            "role": "user",
            "content": "Suggest a hobby I could pick up, something I can do outdoors with friends.",
        }
    ],
]
COMPLETIONS = [
    "Try a narrative history series.",
    "Hello!",
    "Fiddle music and long bike rides, mostly on weekends near the sea.",
    "Soup.",
    "Cycling with a club.",
]
