"""A tiny random Llama, built in a second with the real `tokenizers` and `transformers` libraries.

The way the Hub's `tiny-random-*` models are made: a byte-level BPE tokenizer trained on local
text (vocab 512) with a chat template, and a 2-layer Llama with a fixed seed, saved with
`save_pretrained` (safetensors, about 2 MB). Its answers are random tokens: it proves the wiring
of servers and fronts, not the quality. Head size 64, which vLLM's CPU attention supports.

Usage: python -m h2ostack.tinymodel DIR [--force]
"""

from __future__ import annotations

import sys
from pathlib import Path

TEXT = """\
h2ostack starts the servers people run for their own models: text generation inference in
containers, vLLM and transformers serve as processes, and the chat fronts that talk to them.
One stack file says which models run where, on which GPUs and ports; one command brings them up,
waits until each answers, and stops exactly what it started. Hello, how are you today? I am fine,
thank you. What is the capital of France? Paris is the capital of France. Tell me a short story
about a robot who learns to paint. Once upon a time a small robot found a brush and a jar of blue.
"""
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tiny_model(path: Path, force: bool = False, max_position_embeddings: int = 512) -> Path:
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists() and not force:
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([line for line in TEXT.splitlines() if line] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", model_input_names=["input_ids", "attention_mask"])
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=max_position_embeddings,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config.max_new_tokens = 32
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--force"]
    if len(args) != 1:
        print("usage: python -m h2ostack.tinymodel DIR [--force]", file=sys.stderr)
        return 2
    out = build_tiny_model(Path(args[0]), force="--force" in argv)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
