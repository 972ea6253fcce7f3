"""star-gate: teach language models to ask clarifying questions (STaR-GATE, Andukuri et al. 2024)."""

__version__ = "0.1.0"
