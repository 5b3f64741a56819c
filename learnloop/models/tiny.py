"""A tiny random causal LM with a real tokenizer and chat template, built offline in seconds.

Tests and smoke runs use it where a real model would be too slow; it exercises the same code
paths (HF folder loading, chat template, LoRA on all linear layers) as SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

# ChatML, as SmolLM2 uses, with a generation marker so assistant-only loss masks can be derived.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus two? two plus two is four.",
    "answer with yes or no. yes. no. maybe.",
    "hello! how can i help you today? thank you, goodbye.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ( ) { } [ ] : , . ? ! \" '",
    "user assistant system tool function call arguments result json",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def build_tiny_model(path: Path | str, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny Llama-architecture model + tokenizer to ``path`` (an HF folder) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        # The 0.02 default leaves a 64-wide random model nearly flat: a LoRA on it barely moves the
        # loss in a few steps. 0.1 lets tests see SFT/DPO actually fit a handful of examples.
        initializer_range=0.1,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(path)
    return path
