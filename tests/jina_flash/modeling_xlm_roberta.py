"""Test stand-in for the modules Jina's XLM-RoBERTa "flash" checkpoints name in their `auto_map`.

Written for searchbox's tests from the published architecture and interface, not Jina's code: post-LN
XLM-RoBERTa blocks whose attention projects queries, keys and values with one `Wqkv` matrix (`mixer`), learned
RoBERTa positions (`absolute`, jina-reranker-v2) or rotary ones over whole heads (`rotary`, jina-colbert-v2 and
jina-embeddings-v3), and the module names the checkpoints' tensors carry. Attention is plain PyTorch (the
published code's path without flash attention). `XLMRobertaForSequenceClassification.compute_score` is the
reranker's published scoring call: sigmoid of the logit of each (query, document) pair.
"""

import math

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .configuration_xlm_roberta import XLMRobertaFlashConfig


def _gelu(name):
    return nn.GELU(approximate="none" if name == "gelu" else "tanh")


class FlashEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        if config.position_embedding_type == "absolute":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)

    def forward(self, input_ids, token_type_ids=None):
        out = self.word_embeddings(input_ids)
        if hasattr(self, "position_embeddings"):
            # RoBERTa numbers real tokens from padding_idx + 1 on; padding keeps padding_idx
            real = input_ids.ne(self.padding_idx).long()
            out = out + self.position_embeddings(real.cumsum(1) * real + self.padding_idx)
        if hasattr(self, "token_type_embeddings"):
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            out = out + self.token_type_embeddings(types)
        return out


class FlashAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.rotary = config.position_embedding_type == "rotary"
        self.rotary_base = float(getattr(config, "rotary_emb_base", 10000.0))
        self.rotary_dim = int(getattr(config, "rotary_emb_dim", None) or self.head_dim)

    def _rotated(self, x):
        """x (batch, length, heads, head_dim) turned by position 0, 1, ...: the two halves of the first rotary_dim
        values of each head as pairs, the rest as they are.

        The frequencies are computed here, not kept in a buffer: transformers 5 builds models on the meta device and
        leaves a buffer that no checkpoint holds uninitialised."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=x.device) / self.rotary_dim
        positions = torch.arange(x.shape[1], dtype=torch.float32, device=x.device)
        angles = torch.outer(positions, self.rotary_base ** -exponents)
        cos, sin = angles.cos()[None, :, None, :].to(x.dtype), angles.sin()[None, :, None, :].to(x.dtype)
        first, second = x[..., :self.rotary_dim].chunk(2, dim=-1)
        turned = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
        return torch.cat([turned, x[..., self.rotary_dim:]], dim=-1)

    def forward(self, hidden, keep):
        batch, length, _ = hidden.shape
        q, k, v = self.Wqkv(hidden).view(batch, length, 3, self.heads, self.head_dim).unbind(dim=2)
        if self.rotary:
            q, k = self._rotated(q), self._rotated(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)
        return self.out_proj(context.reshape(batch, length, -1))


class FlashMlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = _gelu(config.hidden_act)

    def forward(self, hidden):
        return self.fc2(self.activation(self.fc1(hidden)))


class FlashBlock(nn.Module):
    """Post-LN: each sub-layer's output is added to its input, then normalised."""

    def __init__(self, config):
        super().__init__()
        self.mixer = FlashAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = FlashMlp(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden, keep):
        hidden = self.norm1(hidden + self.mixer(hidden, keep))
        return self.norm2(hidden + self.mlp(hidden))


class FlashEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(FlashBlock(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden, keep):
        for layer in self.layers:
            hidden = layer(hidden, keep)
        return hidden


class FlashPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class XLMRobertaPreTrainedModel(PreTrainedModel):
    config_class = XLMRobertaFlashConfig
    base_model_prefix = "roberta"


class XLMRobertaModel(XLMRobertaPreTrainedModel):
    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = FlashEmbeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = FlashEncoder(config)
        self.pooler = FlashPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        hidden = self.encoder(self.emb_ln(self.embeddings(input_ids, token_type_ids)), keep)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class FlashClassificationHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden):
        return self.out_proj(torch.tanh(self.dense(hidden[:, 0])))


class XLMRobertaForSequenceClassification(XLMRobertaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.roberta = XLMRobertaModel(config, add_pooling_layer=False)
        self.classifier = FlashClassificationHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.roberta.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        hidden = self.roberta(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return SequenceClassifierOutput(logits=self.classifier(hidden.last_hidden_state))

    @torch.inference_mode()
    def compute_score(self, sentence_pairs, batch_size=32, max_length=None):
        """Relevance in (0, 1) of each [query, document] pair; one pair answers one float."""
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=True)
        single = isinstance(sentence_pairs[0], str)
        pairs = [sentence_pairs] if single else list(sentence_pairs)
        scores = []
        for start in range(0, len(pairs), batch_size):
            batch = self._tokenizer(pairs[start:start + batch_size], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="pt").to(self.device)
            logits = self.forward(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            scores.extend(torch.sigmoid(logits.view(-1).float()).tolist())
        return scores[0] if single else scores
