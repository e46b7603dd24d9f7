"""k8s-gpu-acceptance: the suite's library (pod lifecycle, checks, reports, fleet sweep, leftovers)."""
