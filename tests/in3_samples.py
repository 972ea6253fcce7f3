"""Small IN3 files for tests: rows in IN3's own format (tasks, vague flag, missing details)."""

from __future__ import annotations

import json
from pathlib import Path

TRIP = {
    "category": "Travel",
    "task": "I would like to plan a trip to Paris next month.",
    "vague": True,
    "thought": "lacks details",
    "missing_details": [
        {
            "description": "Duration of the trip",
            "importance": "3",
            "inquiry": "How long do you plan to stay?",
            "options": ["3-5 days", "1 week"],
        },
        {
            "description": "Budget for the trip",
            "importance": "2",
            "inquiry": "What is your budget?",
            "options": ["Economy", "Luxury"],
        },
    ],
}


def in3_rows(count: int = 12) -> list[dict]:
    """Vague trip tasks and clear ones, each task text distinct enough not to be a duplicate."""
    cities = [
        "Paris",
        "Rome",
        "Oslo",
        "Lima",
        "Cairo",
        "Tokyo",
        "Quito",
        "Dakar",
        "Hanoi",
        "Perth",
        "Porto",
        "Seoul",
    ]
    rows = []
    for index, city in enumerate(cities[:count]):
        if index % 3 == 2:
            rows.append(
                {
                    "category": "Math",
                    "task": f"Convert {index * 7 + 3} degrees Celsius in {city} to Fahrenheit.",
                    "vague": False,
                    "thought": "clear",
                    "missing_details": [],
                }
            )
        else:
            rows.append({**TRIP, "task": f"Plan my {city} holiday with {index} friends, please."})
    return rows


def write_in3(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
