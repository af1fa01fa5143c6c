"""Test helpers shared by several test modules: tiny models and fake encoders (tests never import each other)."""
