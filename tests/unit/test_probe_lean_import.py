"""The probe's lean import of GPT-2: the pieces on their own, then the real import in fresh interpreters
(lean vs the ordinary import must generate the same tokens, and leave torch._dynamo and unused integrations
out)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from gpu_probe import lean_import
from gpu_probe.lean_import import (
    DYNAMO,
    DistributionMap,
    DynamoStandIn,
    _deferred_disable,
    given_distribution_map,
    plain_imports,
)

CONTAINER = Path(__file__).resolve().parents[2] / "container"


def test_deferred_disable_calls_the_function_while_dynamo_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, DYNAMO, raising=False)
    calls: list[int] = []

    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    wrapped = _deferred_disable(double, recursive=False)
    assert wrapped(3) == 6
    assert calls == [3]
    assert wrapped.__name__ == "double"


def test_deferred_disable_applies_the_real_decorator_once_dynamo_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applied: list[tuple[bool, str | None]] = []

    def disable(fn: object, recursive: bool, reason: str | None = None) -> object:
        applied.append((recursive, reason))
        return lambda *a: ("disabled", fn(*a))  # type: ignore[operator]

    real = types.ModuleType(DYNAMO)
    real.disable = disable  # type: ignore[attr-defined]
    wrapped = _deferred_disable(lambda x: x + 1, recursive=False, reason="why")
    monkeypatch.setitem(sys.modules, DYNAMO, real)
    assert wrapped(1) == ("disabled", 2)
    assert wrapped(2) == ("disabled", 3)
    assert applied == [(False, "why")]  # applied once, with the arguments it was given


def test_stand_in_answers_the_decorators_without_importing() -> None:
    stand_in = DynamoStandIn(DYNAMO)

    def f() -> int:
        return 1

    assert stand_in.allow_in_graph(f) is f
    assert stand_in.assume_constant_result(f) is f
    assert f._dynamo_marked_constant is True  # type: ignore[attr-defined]
    assert stand_in.disable(f)() == 1
    assert stand_in.disable(recursive=False)(f)() == 1
    with pytest.raises(AttributeError):
        stand_in.__path__  # noqa: B018 - the import system must see a plain module, not a package
    assert lean_import.STANDIN_LOG["allow_in_graph"] >= 1


def test_given_distribution_map_patches_and_restores() -> None:
    original = importlib.metadata.packages_distributions
    with given_distribution_map({"torch": ["torch"]}):
        assert importlib.metadata.packages_distributions() == {"torch": ["torch"]}
    assert importlib.metadata.packages_distributions is original
    with given_distribution_map(None):
        assert importlib.metadata.packages_distributions is original


def test_distribution_map_child_agrees_with_the_parent() -> None:
    mapping = DistributionMap().result()
    assert mapping is not None
    assert mapping == {k: list(v) for k, v in importlib.metadata.packages_distributions().items()}


def test_plain_imports_switch() -> None:
    assert plain_imports({"GPU_PROBE_PLAIN_IMPORTS": "1"})
    assert not plain_imports({"GPU_PROBE_PLAIN_IMPORTS": "0"})
    assert not plain_imports({})


GENERATE = """
import json, sys
from gpu_probe.lean_import import import_gpt2_class, REAL_DYNAMO_BECAUSE
left_out = import_gpt2_class()
loaded = {m: m in sys.modules for m in ("torch._dynamo", "sympy", "sklearn", "scipy", "accelerate")}
import torch
from transformers.models.gpt2.modeling_gpt2 import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=101)).eval()
ids = torch.tensor([[5, 6, 7, 8]])
with torch.inference_mode():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                         min_new_tokens=6, do_sample=False, pad_token_id=0)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    padded = model(input_ids=torch.tensor([[0, 1, 2], [3, 4, 5]]), attention_mask=mask)
import torch._dynamo
print(json.dumps({"left_out": left_out, "loaded": loaded, "tokens": out[0].tolist(),
                  "padded": round(float(padded.logits.abs().sum()), 3), "real_because": REAL_DYNAMO_BECAUSE,
                  "dynamo_is_real": hasattr(torch._dynamo, "optimize")}))
"""


def _run(plain: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(CONTAINER), "GPU_PROBE_PLAIN_IMPORTS": "1" if plain else ""}
    done = subprocess.run(
        [sys.executable, "-c", GENERATE], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_lean_import_generates_what_the_ordinary_import_generates() -> None:
    pytest.importorskip("transformers")
    lean, plain = _run(plain=False), _run(plain=True)
    assert lean["tokens"] == plain["tokens"]
    assert lean["padded"] == plain["padded"]
    assert lean["loaded"]["torch._dynamo"] is False, lean  # never imported by the GPT-2 import
    assert not lean["loaded"]["sklearn"]
    assert not lean["loaded"]["accelerate"]
    assert "torch._dynamo" in lean["left_out"]
    assert "sklearn" in lean["left_out"]
    assert lean["dynamo_is_real"] is True  # a later `import torch._dynamo` gets the real module
    assert plain["left_out"] == []
