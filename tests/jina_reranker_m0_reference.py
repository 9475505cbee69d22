"""jina-reranker-m0's `compute_score`, written out from its published description (jinaai/jina-reranker-m0's
`modeling.py`, `JinaVLForRanking`), on transformers' own `Qwen2VLForConditionalGeneration` and the checkpoint's `score`
head: the reference tests/test_vl_reranker.py holds the served scores to. Nothing here comes from model_handlers.

What it does, step by step as the model's code does:
- a text document of `max_doc_length` tokens or more (default max(max_length - max_query_length, max_query_length)) is
  cut: tokenized with truncation at that length, decoded;
- the prompt is `"**Document**:\\n" + document + "\\n" + "**Query**:\\n" + query`, an image side written
  `<|vision_start|><|image_pad|><|vision_end|>`;
- the processor (pixel bounds 3136..602112) reads the prompts and the images, [document image, query image] per pair
  when both are images, padding on the left, truncating at max_length - 1;
- token 100 (`score_token_id`) is appended to every row, attended;
- the model's last hidden states (`output_hidden_states[-1]`) at the last position go through `score` (Linear, ReLU,
  Linear); the score is sigmoid(logit - 2.65).

transformers' `Qwen2VLProcessor` cannot be built here (it also wants a video processor, which needs torchvision), so
the processor's two steps are done as it does them: Qwen2-VL's image processor (the PIL one) makes the pixels and
grids, and each `<|image_pad|>` of the text is repeated grid_t * grid_h * grid_w / merge_size**2 times, images taken
in order across the batch, before the tokenizer reads the text; `mm_token_type_ids` marks the image pads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

SCORE_TOKEN_ID = 100
SCORE_OFFSET = 2.65
PIXELS = {"min_pixels": 3136, "max_pixels": 602112}
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
PAD = "<|image_pad|>"


class JinaRerankerM0Reference:
    """`compute_score` on `device` in `dtype` (float32 for the tests; bench/vision_language.py runs it in bfloat16 on
    a GPU, as the published model runs)."""

    def __init__(self, model_dir: Path, device: str = "cpu", dtype=torch.float32):
        model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir), **PIXELS)
        width = self.model.config.text_config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
        with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
            head = {name[len("score."):]: weights.get_tensor(name) for name in weights.keys()
                    if name.startswith("score.")}
        self.score.load_state_dict(head)
        self.score.to(device, dtype).eval()

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def image_tokens(self, image) -> int:
        grid = self.image_processor(images=[image], return_tensors="np")["image_grid_thw"][0]
        return int(np.prod(grid)) // self.image_processor.merge_size ** 2

    def prompts(self, pairs, query_type: str, doc_type: str, max_doc_length: int) -> list[str]:
        texts = []
        for query, document in pairs:
            if doc_type == "text":
                ids = self.tokenizer(document, truncation=True, max_length=max_doc_length)["input_ids"]
                if len(ids) >= max_doc_length:
                    document = self.tokenizer.decode(ids)
            doc_str = "**Document**:\n" + (document if doc_type == "text" else IMAGE)
            query_str = "**Query**:\n" + (query if query_type == "text" else IMAGE)
            texts.append(doc_str + "\n" + query_str)
        return texts

    def inputs(self, batch: Sequence[tuple], query_type: str, doc_type: str, max_length: int,
               max_doc_length: int) -> dict:
        """The model's inputs for pairs, as the processor makes them and compute_score completes them."""
        texts = self.prompts(batch, query_type, doc_type, max_doc_length)
        images = []
        for query, document in batch:
            images += ([document] if doc_type == "image" else []) + ([query] if query_type == "image" else [])
        inputs = {}
        if images:
            processed = self.image_processor(images=images, return_tensors="pt")
            inputs["pixel_values"] = processed["pixel_values"].to(self.model.dtype)
            inputs["image_grid_thw"] = processed["image_grid_thw"]
            counts = iter((processed["image_grid_thw"].prod(-1) // self.image_processor.merge_size ** 2).tolist())
            expanded = []
            for text in texts:
                pieces = text.split(PAD)
                expanded.append(pieces[0] + "".join(PAD * next(counts) + piece for piece in pieces[1:]))
            texts = expanded
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length - 1,
                                 padding_side="left", return_tensors="pt")
        rows = encoded["input_ids"].shape[0]
        ids = torch.cat([encoded["input_ids"], torch.full((rows, 1), SCORE_TOKEN_ID)], dim=1)
        mask = torch.cat([encoded["attention_mask"], torch.ones((rows, 1), dtype=encoded["attention_mask"].dtype)],
                         dim=1)
        image_id = self.tokenizer.convert_tokens_to_ids(PAD)
        inputs.update(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == image_id).to(torch.int32))
        return inputs

    @torch.no_grad()
    def compute_score(self, pairs: Sequence[tuple], batch_size: int = 8, max_length: int = 10240,
                      max_query_length: int = 512, max_doc_length: int | None = None, query_type: str = "text",
                      doc_type: str = "text") -> list[float]:
        """Scores of (query, document) pairs; an image side is a Pillow image."""
        if max_doc_length is None:
            max_doc_length = max(max_length - max_query_length, max_query_length)
        scores: list[float] = []
        for start in range(0, len(pairs), batch_size):
            inputs = self.inputs(pairs[start:start + batch_size], query_type, doc_type, max_length, max_doc_length)
            inputs = {name: value.to(self.device) for name, value in inputs.items()}
            outputs = self.model(**inputs, output_hidden_states=True, use_cache=False)
            logits = self.score(outputs.hidden_states[-1][:, -1]).squeeze(-1)
            scores += (1.0 / (1.0 + np.exp(-(logits.double().cpu().numpy() - SCORE_OFFSET)))).tolist()
        return scores

    def row_tokens(self, query, document, query_type: str = "text", doc_type: str = "text",
                   max_length: int = 10240, max_query_length: int = 512) -> int:
        """The tokens one pair's row holds as the model reads it (prompt, images' visual tokens, score token)."""
        inputs = self.inputs([(query, document)], query_type, doc_type, max_length,
                             max(max_length - max_query_length, max_query_length))
        return int(inputs["attention_mask"].sum())
