"""Records, JSONL files and datasets of tasks, personas and gold responses."""
