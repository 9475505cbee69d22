"""A small model with jina-embeddings-v3's published interface, written for these tests (tests/models/jina_v3.py
copies this file into the model directory as its remote code, `modeling_lora.py`).

What it reproduces of v3 (its config keys, tensor names and behaviour, as the model card and its public remote code
describe them; none of that code is copied here):
- config.json: `lora_adaptations` (task names; index = adapter id), `task_instructions`, `lora_rank`,
  `lora_alpha`, `rotary_emb_base`, `matryoshka_dimensions`, an `auto_map` to `XLMRobertaLoRA`.
- tensors in the "flash" layout: `roberta.embeddings.{word,token_type}_embeddings`, `roberta.emb_ln`,
  `roberta.encoder.layers.N.{mixer.Wqkv, mixer.out_proj, norm1, mlp.fc1, mlp.fc2, norm2}`, `roberta.pooler.dense`;
  every Linear and Embedding carries LoRA adapters as a torch parametrization, stored as
  `….parametrizations.weight.original` plus `….parametrizations.weight.0.lora_A` / `lora_B` stacked over tasks.
- post-LayerNorm blocks, rotary positions (non-interleaved halves) on queries and keys, exact GELU.
- `forward(..., adapter_mask)` with one adapter id per row, so a batch can mix tasks; `encode(texts, task=…)`
  prepends the task's instruction, mean-pools and L2-normalises; no task means adapters off; an unknown task raises.

It runs each task's rows with that task's merged weights (W + alpha/rank * B_t A_t; an embedding looks up
W + alpha/rank * A_t B_t), the simplest faithful reading of the interface, deliberately unlike searchbox's own
per-row LoRA (peft's mixed batches on transformers' native `JinaEmbeddingsV3Model`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


class XLMRobertaFlashConfig(PretrainedConfig):
    model_type = "xlm-roberta"

    def __init__(self, vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, hidden_act="gelu", type_vocab_size=1, layer_norm_eps=1e-5,
                 max_position_embeddings=8194, position_embedding_type="rotary", rotary_emb_base=20000.0,
                 lora_adaptations=None, task_instructions=None, lora_rank=4, lora_alpha=1, lora_dropout_p=0.0,
                 matryoshka_dimensions=None, pad_token_id=0, **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.position_embedding_type = position_embedding_type
        self.rotary_emb_base = rotary_emb_base
        self.lora_adaptations = lora_adaptations or []
        self.task_instructions = task_instructions or {}
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout_p = lora_dropout_p
        self.matryoshka_dimensions = matryoshka_dimensions


class TaskLoRA(nn.Module):
    """The parametrization: the weight itself, plus per-task low-rank updates used when a task is asked for."""

    def __init__(self, shape: tuple[int, int], embedding: bool, tasks: int, rank: int, alpha: float):
        super().__init__()
        rows, cols = shape
        if embedding:  # weight [vocab, dim]: W + s * A_t @ B_t
            self.lora_A = nn.Parameter(torch.randn(tasks, rows, rank) * 0.5)
            self.lora_B = nn.Parameter(torch.randn(tasks, rank, cols) * 0.5)
        else:  # weight [out, in]: W + s * B_t @ A_t
            self.lora_A = nn.Parameter(torch.randn(tasks, rank, cols) / math.sqrt(cols))
            self.lora_B = nn.Parameter(torch.randn(tasks, rows, rank) * 0.5)
        self.embedding = embedding
        self.scaling = alpha / rank

    def forward(self, weight):
        return weight

    def merged(self, weight, task: int):
        update = self.lora_A[task] @ self.lora_B[task] if self.embedding else self.lora_B[task] @ self.lora_A[task]
        return weight + self.scaling * update


def _weight(layer: nn.Module, task: int | None):
    weight = layer.weight
    return weight if task is None else layer.parametrizations.weight[0].merged(weight, task)


class Mixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.base = float(config.rotary_emb_base)
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _rotate(self, x):
        length = x.shape[2]
        inverse = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(length, dtype=torch.float32), inverse)
        cos, sin = angles.cos()[None, None], angles.sin()[None, None]
        first, second = x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)

    def forward(self, x, mask, task):
        batch, length, width = x.shape
        qkv = F.linear(x, _weight(self.Wqkv, task), self.Wqkv.bias)
        q, k, v = qkv.view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self._rotate(q), self._rotate(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
        return F.linear(context, _weight(self.out_proj, task), self.out_proj.bias)


class Mlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x, task):
        hidden = F.gelu(F.linear(x, _weight(self.fc1, task), self.fc1.bias))
        return F.linear(hidden, _weight(self.fc2, task), self.fc2.bias)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.mixer = Mixer(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, mask, task):
        x = self.norm1(x + self.mixer(x, mask, task))
        return self.norm2(x + self.mlp(x, task))


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))


class Pooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class Roberta(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def forward(self, input_ids, attention_mask, token_type_ids, task):
        words = F.embedding(input_ids, _weight(self.embeddings.word_embeddings, task))
        types = F.embedding(token_type_ids, _weight(self.embeddings.token_type_embeddings, task))
        x = self.emb_ln(words + types)
        for layer in self.encoder.layers:
            x = layer(x, attention_mask.bool(), task)
        return x


class XLMRobertaLoRA(PreTrainedModel):
    config_class = XLMRobertaFlashConfig
    base_model_prefix = "roberta"

    def __init__(self, config):
        super().__init__(config)
        self.roberta = Roberta(config)
        self._adaptation_map = {name: index for index, name in enumerate(config.lora_adaptations)}
        tasks = len(config.lora_adaptations)
        for module in list(self.modules()):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                lora = TaskLoRA(tuple(module.weight.shape), isinstance(module, nn.Embedding), tasks,
                                config.lora_rank, config.lora_alpha)
                parametrize.register_parametrization(module, "weight", lora)
        self.post_init()

    def _init_weights(self, module):
        pass  # the tests initialise every tensor themselves, randomly (nothing here is trained)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, adapter_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if adapter_mask is None:
            hidden = self.roberta(input_ids, attention_mask, token_type_ids, None)
        else:
            hidden = torch.empty(*input_ids.shape, self.config.hidden_size)
            for task in torch.unique(adapter_mask).tolist():
                rows = (adapter_mask == task).nonzero(as_tuple=True)[0]
                hidden[rows] = self.roberta(input_ids[rows], attention_mask[rows], token_type_ids[rows], int(task))
        return BaseModelOutputWithPooling(last_hidden_state=hidden)

    @torch.inference_mode()
    def encode(self, sentences, task=None, max_length=8192):
        if task and task not in self._adaptation_map:
            raise ValueError(f"Unsupported task '{task}'. Supported tasks are: "
                             f"{', '.join(self.config.lora_adaptations)}.")
        if isinstance(sentences, str):
            sentences = [sentences]
        adapter_mask = None
        if task:
            sentences = [self.config.task_instructions[task] + sentence for sentence in sentences]
            adapter_mask = torch.full((len(sentences),), self._adaptation_map[task], dtype=torch.int32)
        tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        encoded = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        tokens = self.forward(encoded["input_ids"], encoded["attention_mask"], adapter_mask=adapter_mask)[0]
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return np.asarray(F.normalize(pooled, p=2, dim=1))
