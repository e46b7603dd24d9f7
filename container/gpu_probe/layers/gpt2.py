"""gpt2: load a GPT-2 (cold), then time greedy generation: TTFT, per-token p50/p95, tokens/s, device.

`--model` is a hub id, a local path, or a built-in (tiny-random-gpt2, random-gpt2-small). The document always
names what ran; a model that cannot be loaded is this layer's error, never silently replaced by another.
A hub model is preceded by a bounded reachability check of the hub (gpu_probe.hub): with no route, the model
comes from the local hub cache or the layer fails within seconds, instead of after the hub client's retries.

Two kinds of figures: the user-facing ones (ttft, per-token p50/p95, tokens/s) time transformers' own
`generate`, Python and kernel launches included, as a user of the model sees it; and the regression metric,
`decode_step_graph_ms`: one decode step (one token, KV cache of the prompt) captured once as a CUDA graph and
replayed, each replay timed with CUDA events, median. Eager decode of GPT-2 small on an H100 is bound by the
host launching ~150 small kernels per token, so its latency moved 25-90% between runs on one H100; the
replayed graph measures the GPU's own time for the same work and moved 0.2% (tests/data/h100/stability).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Any

from gpu_probe.builtin_models import BUILTIN_SOURCES
from gpu_probe.core import Context, LayerResult
from gpu_probe.diagnosis import missing_library
from gpu_probe.hub import BackgroundHubCheck, HubUnreachable, cached_snapshot, hub_cache_dir
from gpu_probe.lean_import import REAL_DYNAMO_BECAUSE, DynamoStandIn, import_gpt2_class
from gpu_probe.stats import percentile

DEFAULT_LOCAL_MODEL = "/models/gpt2"
DEFAULT_HUB_MODEL = "openai-community/gpt2"
WARMUP_TOKENS = 8
MIB = 1024 * 1024
REGRESSION_METRIC = "decode_step_graph_ms"
GRAPH_WARMUP_REPLAYS = 20
GRAPH_TIMED_REPLAYS = 50


def prefetch() -> list[str]:
    """The imports this layer needs, done ahead in the background (see core.Prefetch and lean_import)."""
    return import_gpt2_class()


def prefetch_torch() -> None:
    """torch alone, for runs that measure torch_cuda / gpu_perf but not gpt2."""
    import torch  # noqa: F401


def early_start(ctx: Context) -> None:
    """At the probe's start: begin the hub reachability check, so it overlaps the imports."""
    model, source = resolve_model(ctx.options.model)
    if "gpt2" in ctx.options.layers and source == "hub":
        ctx.hub_check = BackgroundHubCheck(model)


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
                else " (no network to the hub, checked before any download)"
                if isinstance(exc, HubUnreachable)
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
            "regression_metric": REGRESSION_METRIC,
        }
    )
    for library in ("torch", "transformers"):  # a missing library is the first thing to fix: say it first
        if importlib.util.find_spec(library) is None:
            result.set("error", missing_library(library, "gpt2"))
            return
    offline_only = False
    if source == "hub":
        check = (ctx.hub_check or BackgroundHubCheck(model_name)).wait()
        result.metrics["hub_check"] = check.as_dict()
        if check.reachable is not True and cached_snapshot(model_name) is None:
            if check.reachable is None:  # offline mode asked for, and nothing cached: say so without waiting
                exc = HubUnreachable(
                    f"{check.offline_env} (offline mode) and {model_name} is not in the local hub cache "
                    f"{hub_cache_dir()}"
                )
            else:
                exc = HubUnreachable(
                    f"{check.detail} (checked in {check.seconds:.1f} s, before any download); "
                    f"{model_name} is not in the local hub cache {hub_cache_dir()} either"
                )
            error, diagnosis = load_error_diagnosis(model_name, source, exc)
            result.set("error", error, diagnosis)
            return
        if check.reachable is False:
            offline_only = True  # unreachable hub, cached model: load it from the cache, offline
    if ctx.prefetch is not None and ctx.prefetch.wall_s is None:
        print(
            "gpu-probe: gpt2 waits for the background imports (torch, GPT-2) ...", file=sys.stderr, flush=True
        )
        ctx.prefetch_waited_s += ctx.prefetch.wait(ctx.options.timeout_scale * 300.0)
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
    left_out = prefetch()  # a no-op when the background thread did it (modules are cached)
    result.metrics["transformers_import_s"] = round(time.perf_counter() - import_start, 3)
    if ctx.prefetch is not None:
        left_out = ctx.prefetch.value if isinstance(ctx.prefetch.value, list) else left_out
        result.metrics["transformers_import_s"] = round(ctx.prefetch.wall_s or 0.0, 3)
        result.evidence["import"] = (
            "torch and transformers' GPT-2 module were imported in a background thread from the probe's "
            "start (overlapping the driver/nvidia_smi/torch_cuda layers) in "
            f"{ctx.prefetch.wall_s or 0.0:.2f} s; "
            f"the probe waited {ctx.prefetch_waited_s:.2f} s for it before the timed layers"
        )
    result.metrics["import_left_out"] = left_out
    cuda = bool(torch.cuda.is_available())
    target = "cuda:0" if cuda else "cpu"
    result.metrics.update({"transformers_version": transformers.__version__, "cuda_available": cuda})
    if cuda:
        torch.cuda.init()  # memory stats raise "Invalid device argument" before CUDA is initialised
        _gpu_mem_mib(torch, "reset_peak_memory_stats")
    mem_before = _gpu_mem_mib(torch, "memory_allocated") if cuda else None
    start = time.perf_counter()
    try:
        tokenizer, model = _load(model_name, source, target, opts.seed, offline_only)
    except Exception as exc:
        error, diagnosis = load_error_diagnosis(model_name, source, exc)
        result.set("error", error, diagnosis)
        return
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    device = str(next(model.parameters()).device)
    prompt_ids = torch.tensor([tokenizer.encode(opts.prompt)], device=device)
    timer = _token_timer(torch, device)
    _generate(model, tokenizer, prompt_ids, min(WARMUP_TOKENS, opts.new_tokens), timer)
    ttfts, latencies, totals, last_latencies, text = [], [], [], [], ""
    for _ in range(opts.repeats):
        output, t0 = _generate(model, tokenizer, prompt_ids, opts.new_tokens, timer)
        stamps = timer.stamps
        ttfts.append((stamps[0] - t0) * 1e3)
        last_latencies = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]  # noqa: B905, RUF007 - py3.8
        latencies.extend(last_latencies)
        totals.append(stamps[-1] - t0)
        text = tokenizer.decode(output[0, prompt_ids.shape[1] :].tolist())
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
        f"greedy decoding with transformers' generate, {WARMUP_TOKENS}-token warm-up, then {opts.repeats} x "
        f"{opts.new_tokens} new tokens; a stopping-criteria hook stamps each token after a device "
        "synchronize; ttft = prompt to first token (median of repeats); per-token latencies exclude the "
        "first token; tokens_per_s = all new tokens / all generate time"
    )
    _regression_metric(torch, model, prompt_ids, result)
    result.metrics["torch_dynamo_imported"] = "torch._dynamo" in sys.modules and not isinstance(
        sys.modules["torch._dynamo"], DynamoStandIn
    )
    if REAL_DYNAMO_BECAUSE:
        result.evidence["torch_dynamo"] = "imported for real because of: " + ", ".join(REAL_DYNAMO_BECAUSE)
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


def _regression_metric(torch: Any, model: Any, prompt_ids: Any, result: LayerResult) -> None:
    """decode_step_graph_ms on CUDA (None elsewhere, with the reason in the evidence)."""
    result.metrics[REGRESSION_METRIC] = None
    if not str(prompt_ids.device).startswith("cuda"):
        result.evidence[REGRESSION_METRIC] = (
            "not measured: needs CUDA (a CUDA graph replay timed by CUDA events)"
        )
        return
    try:
        times = graph_decode_step_ms(torch, model, prompt_ids)
    except Exception as exc:  # a capture the installed torch/transformers refuse: the user figures stand
        result.evidence[REGRESSION_METRIC] = f"not measured: {type(exc).__name__}: {str(exc)[:300]}"
        return
    median = percentile(times, 50)
    result.metrics[REGRESSION_METRIC] = round(median, 4)
    result.metrics["decode_step_graph_ms_p10_p90"] = [
        round(percentile(times, 10), 4),
        round(percentile(times, 90), 4),
    ]
    result.metrics["decode_step_graph_replays"] = len(times)
    result.evidence[REGRESSION_METRIC] = (
        "the regression metric: one greedy decode step (1 new token, KV cache of the "
        f"{prompt_ids.shape[1]}-token prompt), captured once as a CUDA graph; {GRAPH_WARMUP_REPLAYS} warm-up "
        f"replays, then {len(times)} replays each timed with CUDA events; median. The GPU's own time for the "
        "same kernels the user-facing figures launch from Python, without the launch overhead that makes "
        "those vary between runs"
    )


def graph_decode_step_ms(torch: Any, model: Any, prompt_ids: Any) -> list[float]:
    """Milliseconds of each timed replay of one decode step captured as a CUDA graph.

    The step is the model's forward of one token with the KV cache (transformers' DynamicCache) that the
    prompt's forward filled. Capturing records the kernels once; each replay recomputes the same step on the
    same buffers, so every replay is the same work.
    """
    with torch.inference_mode():
        out = model(input_ids=prompt_ids, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # CUDA's rule: warm up on a side stream before capturing
            for _ in range(3):
                model(input_ids=token, past_key_values=cache, use_cache=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(input_ids=token, past_key_values=cache, use_cache=True)
        for _ in range(GRAPH_WARMUP_REPLAYS):
            graph.replay()
        events = []
        for _ in range(GRAPH_TIMED_REPLAYS):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            graph.replay()
            end.record()
            events.append((begin, end))
        torch.cuda.synchronize()
        times = [float(begin.elapsed_time(end)) for begin, end in events]
        del graph
    return times


def _gpu_mem_mib(torch: Any, stat: str) -> float | None:
    """torch.cuda.<stat>(0) in MiB (memory held by torch's allocator); None if the query fails."""
    try:
        value = getattr(torch.cuda, stat)(0)
    except Exception:
        return None
    return round(value / MIB, 1) if isinstance(value, int) else None


class HubTokenizer:
    """The probe's tokenizer interface (encode, decode, pad_id) over a transformers tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def load_model(requested: str | None, target: str, seed: int = 1234) -> tuple[str, Any, Any]:
    """(model name, tokenizer, model on `target`): what the gpt2 layer measures, for other programs that
    serve the same model (examples/inference)."""
    name, source = resolve_model(requested)
    tokenizer, model = _load(name, source, target, seed)
    return name, tokenizer, model


def _load(
    model_name: str, source: str, target: str, seed: int, offline_only: bool = False
) -> tuple[Any, Any]:
    """Tokenizer and model on the target device: built-in ones are made here, others loaded."""
    if source in BUILTIN_SOURCES.values():
        from gpu_probe.builtin_models import build

        return build(model_name, target, seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = source == "local-path"
    path = os.path.expanduser(model_name)
    if local and not os.path.isdir(path):
        raise FileNotFoundError(f"{path} does not exist or is not a folder")
    only_local = local or offline_only
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=only_local)
    model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=only_local)
    return HubTokenizer(tokenizer), model.to(target).eval()


def _token_timer(torch: Any, device: str) -> Any:
    """A transformers StoppingCriteria that never stops generation, only records time stamps."""
    from transformers.generation.stopping_criteria import StoppingCriteria

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


def _generate(model: Any, tokenizer: Any, prompt_ids: Any, new_tokens: int, timer: Any) -> tuple[Any, float]:
    """One greedy generate of exactly new_tokens; returns (output ids, start time)."""
    import torch
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    timer.stamps = []
    if str(prompt_ids.device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_id,
            stopping_criteria=StoppingCriteriaList([timer]),
        )
    return output, start
