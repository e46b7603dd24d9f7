"""Fixtures and hooks of the k8s-gpu-acceptance suite, grouped by concern (see docs/ARCHITECTURE.md)."""
