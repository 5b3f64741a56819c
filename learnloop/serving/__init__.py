"""Serving: OpenAI-compatible answers from the base model and every trained version (see backend.py)."""
