"""Options: precedence (command line > env > ini > default) and clear errors for bad values."""

from __future__ import annotations

import textwrap

import pytest

from k8s_gpu_acceptance.settings import check_unknown_env, parse_key_value, parse_toleration

pytest_plugins = ["pytester"]


def test_toleration_forms():
    assert parse_toleration("nvidia.com/gpu:NoSchedule").to_k8s() == {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "effect": "NoSchedule",
    }
    assert parse_toleration("dedicated=gpu:NoExecute").to_k8s() == {
        "key": "dedicated",
        "operator": "Equal",
        "value": "gpu",
        "effect": "NoExecute",
    }


@pytest.mark.parametrize(
    "bad", ["nvidia.com/gpu", "nvidia.com/gpu:Sometimes", ":NoSchedule", "bad key:NoSchedule"]
)
def test_bad_toleration_names_the_format(bad):
    with pytest.raises(pytest.UsageError, match="toleration"):
        parse_toleration(bad)


def test_node_selector_needs_key_value():
    assert parse_key_value("nvidia.com/gpu.present=true", "--node-selector", label=True) == (
        "nvidia.com/gpu.present",
        "true",
    )
    with pytest.raises(pytest.UsageError, match="expected key=value"):
        parse_key_value("nvidia.com/gpu.present", "--node-selector", label=True)
    with pytest.raises(pytest.UsageError, match="not a valid label value"):
        parse_key_value("a=" + "x" * 64, "--node-selector", label=True)


def test_mistyped_env_var_is_refused_with_a_suggestion():
    with pytest.raises(pytest.UsageError, match="did you mean GPU_ACCEPTANCE_GPUS"):
        check_unknown_env({"GPU_ACCEPTANCE_GPUZ": "2"})
    check_unknown_env({"GPU_ACCEPTANCE_GPUS": "2", "HOME": "/root"})


@pytest.fixture
def suite(pytester):
    """A throwaway project that loads the suite's plugin and prints the resolved settings."""
    pytester.makeconftest('pytest_plugins = ["k8s_gpu_acceptance.plugin"]')
    pytester.makepyfile(
        test_show=textwrap.dedent("""
        def test_show(gpu_settings):
            print("SETTINGS", gpu_settings.gpus, gpu_settings.image, gpu_settings.target,
                  ",".join(f"{k}={v}" for k, v in gpu_settings.node_selector.items()) or "-",
                  gpu_settings.sources["gpus"])
    """)
    )
    return pytester


def test_precedence_cli_over_env_over_ini(suite, monkeypatch):
    suite.makeini("[pytest]\ngpu_gpus = 3\ngpu_target = local\n")
    result = suite.runpytest("-s", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*SETTINGS 3 * local - pytest.ini gpu_gpus*"])
    monkeypatch.setenv("GPU_ACCEPTANCE_GPUS", "2")
    result = suite.runpytest("-s")
    result.stdout.fnmatch_lines(["*SETTINGS 2 * local - env GPU_ACCEPTANCE_GPUS*"])
    result = suite.runpytest("-s", "--gpus", "4", "--node-selector", "a=b")
    result.stdout.fnmatch_lines(["*SETTINGS 4 * local a=b command line*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "zero"], "*--gpus (from command line): expected a whole number, got 'zero'*"),
        (["--gpus", "0"], "*--gpus (from command line): 0 must be at least 1*"),
        (["--target", "moon"], "*invalid choice: 'moon'*"),
        (["--toleration", "x:Never"], "*effect must be one of NoSchedule*"),
        (["--s3-endpoint-url", "minio:9000"], "*must start with http:// or https://*"),
        (["--s3-bucket", "Bad_Bucket"], "*not a valid bucket name*"),
        (["--image", "bad image"], "*is not an image reference*"),
        (["--kubeconfig", "/nonexistent/kubeconfig", "--target", "k8s"], "*does not exist*"),
        (["--no-such-option"], "*unrecognized arguments: --no-such-option*"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_fix(suite, args, message):
    result = suite.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_context_lists_the_available_ones(suite, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent("""
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
        users: [{name: u, user: {token: abc}}]
        contexts: [{name: real, context: {cluster: c, user: u}}]
        current-context: real
    """)
    )
    result = suite.runpytest(
        "--target", "k8s", f"--kubeconfig={kubeconfig}", "--context", "typo", "-m", "gpu"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--context 'typo' is not in * available: real*"])


def test_garbled_kubeconfig_is_a_usage_error(suite, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("this: [is not: a kubeconfig")
    result = suite.runpytest("--target", "k8s", f"--kubeconfig={kubeconfig}", "-m", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*kubeconfig {kubeconfig}*"])


def test_path_value_taken_for_a_test_path_is_explained(suite, tmp_path):
    """pytest finds its ini before plugins load: `--report-dir /existing/dir` would move the rootdir."""
    existing = tmp_path / "reports"
    existing.mkdir()
    result = suite.runpytest("--target", "local", "--report-dir", str(existing), "-m", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*write it with '=': --report-dir={existing}*"])
