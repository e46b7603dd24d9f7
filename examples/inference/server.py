"""A small GPT-2 generation service: POST /generate, GET /healthz. One model, one request at a time.

The model is the probe's (`gpu_probe.layers.gpt2.load_model`: built-in random GPT-2s, a local path or a hub
id), on cuda:0 when torch sees a GPU, else on the CPU (said by /healthz and every answer: `device`).
Requests are served one at a time, as one GPU serves one batch: under concurrency they queue, which is what
the load test (loadtest.py) measures. Standard library HTTP only; the image needs python3, torch and
transformers (and gpu_probe on PYTHONPATH).

    python examples/inference/server.py --model tiny-random-gpt2 --port 8080
    curl -s localhost:8080/generate -d '{"prompt": "Explain what an LLM is", "max_new_tokens": 16}'
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_NEW_TOKENS = 256
MAX_BODY = 64 * 1024


class Generator:
    """The model behind a lock: generate() is greedy and deterministic, timed end to end."""

    def __init__(self, model: str | None, seed: int = 1234) -> None:
        import torch
        from gpu_probe.layers.gpt2 import load_model

        self.torch = torch
        self.device = "cuda:0" if torch.cuda.is_available() else "cpu"
        # "auto": the probe's default (/models/gpt2 if baked into the image, else the hub's GPT-2)
        self.name, self.tokenizer, self.model = load_model(
            None if model == "auto" else model, self.device, seed
        )
        self.lock = threading.Lock()

    def generate(self, prompt: str, max_new_tokens: int) -> dict[str, Any]:
        ids = self.torch.tensor([self.tokenizer.encode(prompt)], device=self.device)
        with self.lock, self.torch.inference_mode():
            started = time.perf_counter()
            out = self.model.generate(
                ids,
                attention_mask=self.torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_id,
            )
            if self.device.startswith("cuda"):
                self.torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
        new = out[0, ids.shape[1] :].tolist()
        return {
            "text": self.tokenizer.decode(new),
            "new_tokens": len(new),
            "generate_ms": round(elapsed * 1000, 3),
            "model": self.name,
            "device": self.device,
        }


def make_handler(generator: Generator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True, "model": generator.name, "device": generator.device})
            else:
                self._send(404, {"error": f"no such path {self.path}: GET /healthz, POST /generate"})

        def do_POST(self) -> None:
            if self.path != "/generate":
                self._send(404, {"error": f"no such path {self.path}: POST /generate"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._send(400, {"error": f"a JSON body of 1..{MAX_BODY} bytes is required"})
                return
            try:
                request = json.loads(self.rfile.read(length))
                prompt = str(request["prompt"])
                tokens = int(request.get("max_new_tokens", 32))
            except (ValueError, KeyError, TypeError) as exc:
                self._send(
                    400, {"error": f"bad request: {exc!r}; expected {{'prompt': str, 'max_new_tokens': int}}"}
                )
                return
            if not 1 <= tokens <= MAX_NEW_TOKENS:
                self._send(400, {"error": f"max_new_tokens must be 1..{MAX_NEW_TOKENS}"})
                return
            self._send(200, generator.generate(prompt, tokens))

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would drown the service's own output

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="tiny-random-gpt2")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    generator = Generator(args.model)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(generator))
    print(
        f"serving {generator.name} on {generator.device} at http://{args.host}:{server.server_port}",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
