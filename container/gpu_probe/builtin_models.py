"""Built-in GPT-2 models for hosts with neither a model hub nor baked weights.

`tiny-random-gpt2` (2 layers, 64 wide) and `random-gpt2-small` (GPT-2 small's real 124M architecture) are
GPT2LMHeadModel with seeded random weights and a byte-level BPE tokenizer trained on the spot on the text
below, so the real loading and generation code runs (and, for the small one, with realistic GPU latency)
without touching the hub. Their output is gibberish by construction; the document names them as what ran.
"""

from __future__ import annotations

import json
from typing import Any

TINY = "tiny-random-gpt2"
SMALL = "random-gpt2-small"
BUILTIN_SOURCES = {TINY: "built-in-tiny-random", SMALL: "built-in-random-small"}
GPT2_VOCAB_SIZE = 50257
EOS = "<|endoftext|>"
TOKENIZER_TRAIN_VOCAB = 800

CORPUS = """Explain what an LLM is.
A large language model (LLM) is a neural network trained on a large amount of text to predict the next token.
Given a prompt, the model generates text one token at a time, each token conditioned on the tokens before it.
GPT-2 is a transformer decoder: token and position embeddings, twelve blocks of attention and MLP, and a head.
The GPU runs the matrix multiplications of every layer; the driver and the CUDA runtime make that possible.
Kubernetes schedules a pod on a node with an NVIDIA GPU when the pod requests nvidia.com/gpu.
The NVIDIA container runtime injects the device nodes, the driver libraries and nvidia-smi into the container.
A probe measures every layer: the driver, nvidia-smi, torch.cuda, the GPU's throughput and a real model.
Time to first token, latency per token and tokens per second tell how fast the model answers a prompt.
When no GPU is visible, the model silently runs on the CPU, which is slower; the probe makes that visible.
"""


def build_tokenizer(vocab_size: int | None) -> Any:
    """A GPT-2 style byte-level BPE trained on CORPUS, padded with filler tokens up to vocab_size.

    Its alphabet is the corpus's characters only (not all 256 bytes), so whatever ids the random model emits
    decode to valid text; filler tokens ("<tok12345>") make the vocabulary match the model's embedding size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_TRAIN_VOCAB,
        special_tokens=[EOS],
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    if vocab_size is not None:
        data = json.loads(tokenizer.to_str())
        vocab = data["model"]["vocab"]
        for token_id in range(len(vocab), vocab_size):
            vocab[f"<tok{token_id}>"] = token_id
        tokenizer = Tokenizer.from_str(json.dumps(data))
    return tokenizer


class RawTokenizer:
    """The probe's tokenizer interface (encode, decode, pad_id) over a `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Any, eos: str = EOS) -> None:
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.token_to_id(eos))

    def encode(self, text: str) -> list[int]:
        """Token ids of text (no special tokens added: GPT-2 adds none)."""
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        """Text of ids, special tokens skipped."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def build(name: str, device: str, seed: int) -> tuple[RawTokenizer, Any]:
    """(tokenizer, model) of a built-in model, weights seeded and created directly on `device`."""
    import torch
    from transformers.models.gpt2.configuration_gpt2 import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2LMHeadModel

    raw = build_tokenizer(GPT2_VOCAB_SIZE if name == SMALL else None)
    tokenizer = RawTokenizer(raw)
    eos_id = tokenizer.pad_id
    if name == SMALL:
        config = GPT2Config(bos_token_id=eos_id, eos_token_id=eos_id)  # defaults = GPT-2 small, 124M
    else:
        config = GPT2Config(
            vocab_size=raw.get_vocab_size(),
            n_positions=256,
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
        )
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    return tokenizer, model.eval()
