"""Role prompts and the mapping from game roles to chat messages for each viewpoint."""
