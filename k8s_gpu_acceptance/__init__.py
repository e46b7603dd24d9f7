"""k8s-gpu-acceptance: the suite's library (options, layer table, pod lifecycle, waits, probe document,
diagnosis rules, reports, upload) and its pytest plugin (plugin.py). The pytest fixtures live in the
checkout's fixtures/ folder, installed as k8s_gpu_acceptance.fixtures. Map: docs/ARCHITECTURE.md.
"""
