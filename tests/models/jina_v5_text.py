"""A tiny jina-embeddings-v5-text-small-shaped model: a decoder (transformers' `Qwen3Model`, as the small's
Qwen3-0.6B-Base backbone, seeded random weights) with one PEFT LoRA adapter per task under `adapters/<task>/`
(adapter_config.json + adapter_model.safetensors, made by peft's own `get_peft_model` on the `Qwen3Model` and saved
with `save_pretrained`, as the published repository holds them), config.json naming the tasks (`task_names`),
last-token pooling and normalisation, the query/document prompts in config_sentence_transformers.json, and the
byte-level BPE tokenizer of examples/tiny_generative_reranker.py, which here appends <|endoftext|> and pads on the
left (as Qwen3-Embedding's does).

What differs from the published repository: its config.json says `model_type: jina_embeddings_v5` and its
modules.json loads its own sentence-transformers module (custom_st.py); here both are transformers' and
sentence-transformers' own (`qwen3`, `Transformer`), so nothing from the directory is code.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from tiny_generative_reranker import bpe_tokenizer  # noqa: E402

TASKS = ("retrieval", "text-matching", "classification", "clustering")
# the published model card's prompts: one for queries, one for documents, whatever the task
PROMPTS = {"query": "Query: ", "document": "Document: "}
# every linear layer of a Qwen3 block, as the published adapters' size says (r=32 on all seven, at 0.6B)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CORPUS = list(PROMPTS.values()) * 20 + [
    "Berlin is the capital of Germany.", "how do rotary position embeddings work",
    "A longer passage about search engines, retrieval, ranking and the people who build them.",
    "The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.",
] * 20


# width, layers, attention heads (half as many key/value heads), LoRA rank
SIZES = {"tiny": (32, 2, 4, 4), "small": (256, 4, 4, 16)}


def make_jina_v5_text(target: Path, seed: int = 7, size: str = "tiny", base: str = "qwen3") -> Path:
    """`base`: "qwen3" (jina-embeddings-v5-text-small's Qwen3-0.6B-Base) or "eurobert" (-nano's EuroBERT, a
    bidirectional encoder with the same linear layer names)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    from transformers import EuroBertConfig, EuroBertModel, Qwen3Config, Qwen3Model

    target.mkdir(parents=True, exist_ok=True)
    from tokenizers.processors import TemplateProcessing

    tokenizer = bpe_tokenizer(_CORPUS, 512)
    # Qwen3 embedders end every text with <|endoftext|> (also the pad token: only the mask tells them apart) and pool
    # that last token
    end = tokenizer.pad_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {end}", pair=f"$A {end} $B {end}", special_tokens=[(end, tokenizer.pad_token_id)])
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes into tokenizer_config.json
    tokenizer.save_pretrained(str(target))
    width, layers, heads, rank = SIZES[size]
    config_class, model_class = (Qwen3Config, Qwen3Model) if base == "qwen3" else (EuroBertConfig, EuroBertModel)
    extra = {"head_dim": width // heads} if base == "qwen3" else {"mask_token_id": tokenizer.pad_token_id}
    config = config_class(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                          max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=None, task_names=list(TASKS), **extra)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(str(target))
    for index, task in enumerate(TASKS):
        adapted = get_peft_model(model_class.from_pretrained(str(target)),
                                 LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(TARGETS)))
        generator = torch.Generator().manual_seed(seed * 100 + index)
        with torch.no_grad():
            for name, parameter in adapted.named_parameters():
                if "lora_B" in name:  # peft starts B at zero (the adapter a no-op); a trained one is not
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        adapted.save_pretrained(str(target / "adapters" / task))
    transformer = Transformer(str(target), max_seq_length=512)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=PROMPTS, device="cpu").save(str(target))
    return target
