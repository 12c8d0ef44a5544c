"""The pipeline stages, in order: each module orchestrates one command."""
