"""Thin on purpose: the suite's hooks are in k8s_gpu_acceptance/plugin.py, its fixtures in fixtures/.

Installing the project (`make acceptance`, `pip install -e .`) registers k8s_gpu_acceptance.plugin as a pytest
plugin (pyproject's pytest11 entry point); this line loads it when plugin autoloading is off
(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1), and is a no-op when the entry point already did.
"""

pytest_plugins = ["k8s_gpu_acceptance.plugin"]
