"""gpt2: load a GPT-2 (cold), then time greedy generation: TTFT, per-token p50/p95, tokens/s, device.

`--model` is a hub id, a local path, or a built-in (tiny-random-gpt2, random-gpt2-small). The document always
names what ran; a model that cannot be loaded is this layer's error, never silently replaced by another.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gpu_probe.builtin_models import BUILTIN_SOURCES
from gpu_probe.core import Context, LayerResult
from gpu_probe.diagnosis import missing_library
from gpu_probe.stats import percentile

DEFAULT_LOCAL_MODEL = "/models/gpt2"
DEFAULT_HUB_MODEL = "openai-community/gpt2"
WARMUP_TOKENS = 8
MIB = 1024 * 1024


def prefetch() -> None:
    """The imports this layer needs, done ahead in the background (see core.Prefetch)."""
    import torch  # noqa: F401
    from transformers import GPT2LMHeadModel, StoppingCriteria  # noqa: F401


def resolve_model(requested: str | None, exists: Any = os.path.exists) -> tuple[str, str]:
    """(model, model_source): the default is the baked /models/gpt2 if present, else the hub's GPT-2."""
    model = requested or (DEFAULT_LOCAL_MODEL if exists(DEFAULT_LOCAL_MODEL) else DEFAULT_HUB_MODEL)
    if model in BUILTIN_SOURCES:
        return model, BUILTIN_SOURCES[model]
    if exists(model) or model.startswith(("/", "./", "../", "~")):
        return model, "local-path"
    return model, "hub"


def load_error_diagnosis(model: str, source: str, exc: BaseException) -> tuple[str, dict[str, str]]:
    """(error, diagnosis) for a model that could not be loaded, naming the cause and the ways out."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if source == "local-path":
        cause = f"no loadable model at local path {model!r}: {type(exc).__name__}: {first}"
        fix = (
            "point --model at a folder holding config.json, the weights and the tokenizer (e.g. /models/gpt2)"
        )
    else:
        cause = (
            f"cannot load {model!r} from the Hugging Face hub"
            + (
                f" (HF_HUB_OFFLINE={offline})"
                if offline
                else " (no network to huggingface.co, or no such id)"
            )
            + f": {type(exc).__name__}: {first}"
        )
        fix = (
            "use the image with GPT-2 baked at /models/gpt2 (container/Dockerfile, BAKE_GPT2=1), mount the "
            "weights and pass --model <path>, or run --model tiny-random-gpt2 / random-gpt2-small (built in, "
            "no download)"
        )
    return cause, {"cause": cause, "fix": fix}


def measure(ctx: Context, result: LayerResult) -> None:
    """Pass when the model generated on some device; cpu_fallback says when that device was the CPU."""
    opts = ctx.options
    model_name, source = resolve_model(opts.model)
    result.metrics.update(
        {
            "model": model_name,
            "model_source": source,
            "prompt": opts.prompt,
            "new_tokens": opts.new_tokens,
            "repeats": opts.repeats,
            "seed": opts.seed,
        }
    )
    try:
        import torch
    except ImportError:
        result.set("error", missing_library("torch", "gpt2"))
        return
    try:
        import transformers
    except ImportError:
        result.set("error", missing_library("transformers", "gpt2"))
        return
    import_start = time.perf_counter()
    from transformers import GPT2LMHeadModel  # noqa: F401 - import the model code before the load timer

    result.metrics["transformers_import_s"] = round(time.perf_counter() - import_start, 3)
    if ctx.prefetch is not None:
        result.metrics["transformers_import_s"] = round(ctx.prefetch.wall_s or 0.0, 3)
        result.evidence["import"] = (
            "torch and transformers were imported in a background thread from the probe's start "
            f"(overlapping the driver/nvidia_smi/torch_cuda layers) in {ctx.prefetch.wall_s or 0.0:.2f} s; "
            f"the probe waited {ctx.prefetch_waited_s:.2f} s for it before the timed layers"
        )
    cuda = bool(torch.cuda.is_available())
    target = "cuda:0" if cuda else "cpu"
    result.metrics.update({"transformers_version": transformers.__version__, "cuda_available": cuda})
    if cuda:
        torch.cuda.init()  # memory stats raise "Invalid device argument" before CUDA is initialised
        _gpu_mem_mib(torch, "reset_peak_memory_stats")
    mem_before = _gpu_mem_mib(torch, "memory_allocated") if cuda else None
    start = time.perf_counter()
    try:
        tokenizer, model = _load(model_name, source, target, opts.seed)
    except Exception as exc:
        error, diagnosis = load_error_diagnosis(model_name, source, exc)
        result.set("error", error, diagnosis)
        return
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    device = str(next(model.parameters()).device)
    inputs = tokenizer(opts.prompt, return_tensors="pt").to(device)
    timer = _token_timer(torch, device)
    _generate(model, tokenizer, inputs, min(WARMUP_TOKENS, opts.new_tokens), timer)
    ttfts, latencies, totals, last_latencies, text = [], [], [], [], ""
    for _ in range(opts.repeats):
        output, t0 = _generate(model, tokenizer, inputs, opts.new_tokens, timer)
        stamps = timer.stamps
        ttfts.append((stamps[0] - t0) * 1e3)
        last_latencies = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]  # noqa: B905, RUF007 - py3.8
        latencies.extend(last_latencies)
        totals.append(stamps[-1] - t0)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    generated = opts.new_tokens * opts.repeats
    result.metrics.update(
        {
            "model_class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "device": device,
            "cpu_fallback": not device.startswith("cuda"),
            "load_s": round(load_s, 3),
            "ttft_ms": round(percentile(ttfts, 50), 3),
            "ttft_ms_all": [round(v, 3) for v in ttfts],
            "token_latency_ms_p50": round(percentile(latencies, 50), 3) if latencies else None,
            "token_latency_ms_p95": round(percentile(latencies, 95), 3) if latencies else None,
            "tokens_per_s": round(generated / sum(totals), 2) if sum(totals) > 0 else None,
            "token_latencies_ms": [round(v, 3) for v in last_latencies],
            "gpu_mem_before_mib": mem_before,
            "gpu_mem_after_mib": _gpu_mem_mib(torch, "memory_allocated") if cuda else None,
            "gpu_mem_peak_mib": _gpu_mem_mib(torch, "max_memory_allocated") if cuda else None,
            "generated_text": text,
        }
    )
    result.evidence["timing"] = (
        f"greedy decoding, {WARMUP_TOKENS}-token warm-up, then {opts.repeats} x {opts.new_tokens} new "
        "tokens; "
        "a stopping-criteria hook stamps each token after a device synchronize; ttft = prompt to first token "
        "(median of repeats); per-token latencies exclude the first token; tokens_per_s = all new tokens / "
        "all generate time"
    )
    if device.startswith("cuda"):
        result.set("pass")
    else:
        result.set(
            "pass",
            None,
            {
                "cause": "the model ran on the CPU: "
                + (
                    "CUDA is available but the model stayed on the CPU"
                    if cuda
                    else "torch.cuda.is_available() is False"
                ),
                "fix": "see the torch_cuda layer; on a GPU node the model must run on cuda:0",
            },
        )


def _gpu_mem_mib(torch: Any, stat: str) -> float | None:
    """torch.cuda.<stat>(0) in MiB (memory held by torch's allocator); None if the query fails."""
    try:
        value = getattr(torch.cuda, stat)(0)
    except Exception:
        return None
    return round(value / MIB, 1) if isinstance(value, int) else None


def _load(model_name: str, source: str, target: str, seed: int) -> tuple[Any, Any]:
    """Tokenizer and model on the target device: built-in ones are made here, others loaded."""
    if source in BUILTIN_SOURCES.values():
        from gpu_probe.builtin_models import build

        return build(model_name, target, seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = source == "local-path"
    path = os.path.expanduser(model_name)
    if local and not os.path.isdir(path):
        raise FileNotFoundError(f"{path} does not exist or is not a folder")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=local)
    return tokenizer, model.to(target).eval()


def _token_timer(torch: Any, device: str) -> Any:
    """A transformers StoppingCriteria that never stops generation, only records time stamps."""
    from transformers import StoppingCriteria

    class TokenTimer(StoppingCriteria):
        """Stamps the wall time at each generated token (after a device sync, so stamps are real)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return TokenTimer()


def _generate(model: Any, tokenizer: Any, inputs: Any, new_tokens: int, timer: Any) -> tuple[Any, float]:
    """One greedy generate of exactly new_tokens; returns (output ids, start time)."""
    import torch
    from transformers import StoppingCriteriaList

    timer.stamps = []
    if str(inputs["input_ids"].device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([timer]),
        )
    return output, start
