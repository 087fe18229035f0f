"""Shared logic of the retraining cycle; the three top-level scripts are its entry points."""
