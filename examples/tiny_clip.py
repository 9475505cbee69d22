"""Make a small CLIP model directory to try the multimodal kind with, offline (random weights: the vectors mean
nothing, the code path is a real CLIP's).

    .venv/bin/python examples/tiny_clip.py /tmp/tiny-clip              # 32-wide towers, 32 px images: instant
    .venv/bin/python examples/tiny_clip.py /tmp/small-clip --size small  # 256-wide, 4 layers, 224 px / 32 px patches
    .venv/bin/python examples/tiny_clip.py /tmp/base-clip --size base    # ViT-B/32's vision tower: 768-wide, 12 layers

No CLIP weights can be downloaded here, so the directory is built with transformers' own classes: a `CLIPModel`
from a `CLIPConfig`, saved with a `CLIPProcessor` (the CLIP image processor and a CLIP BPE tokenizer trained
on the spot with `tokenizers`, in CLIP's layout: byte-level, `</w>` word ends, `<|startoftext|>` and
`<|endoftext|>`). Tests, the benchmark and the README's curls use it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SIZES = {
    # towers' width, layers, heads, image size, patch size, projection width
    "tiny": dict(width=32, layers=2, heads=2, image_size=32, patch_size=8, projection=24),
    "small": dict(width=256, layers=4, heads=4, image_size=224, patch_size=32, projection=128),
    # ViT-B/32's vision tower (its text tower is 512 wide; images never pass through it), for bench/gpu.py
    "base": dict(width=768, layers=12, heads=12, image_size=224, patch_size=32, projection=512),
}

_CORPUS = (
    "a photo of a dog", "a photo of a cat", "a photo of a cat sleeping on a sofa", "the quick brown fox jumps over "
    "the lazy dog", "How is the weather today?", "Berlin is the capital and largest city of Germany.",
    "Semantic search finds images and documents by meaning rather than by keywords.",
    "an orange square below a blue square", "a red car parked in front of an old house", "mountains at sunset",
)
# CLIP's pre-tokenizer (transformers' CLIPTokenizer), so that the trained vocabulary fits the tokenizer built from it.
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_tokenizer(vocab_size: int = 1000):
    """A CLIP BPE tokenizer trained on a small corpus; every byte (alone or ending a word) is in its vocabulary."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import CLIPTokenizer

    trained = Tokenizer(BPE(unk_token="<|endoftext|>", continuing_subword_prefix="", end_of_word_suffix="</w>"))
    trained.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
    trained.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
                         show_progress=False)
    trained.train_from_iterator(list(_CORPUS) * 4, trainer)
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        for piece in (char, char + "</w>"):
            vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[tuple(merge) for merge in model["merges"]])


def build(directory: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a CLIP model directory (safetensors, processor) of `size` into `directory`; returns it."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    spec = SIZES[size]
    directory = Path(directory)
    tokenizer = clip_tokenizer()
    tower = dict(hidden_size=spec["width"], intermediate_size=4 * spec["width"], num_hidden_layers=spec["layers"],
                 num_attention_heads=spec["heads"])
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(tower, image_size=spec["image_size"], patch_size=spec["patch_size"]),
        projection_dim=spec["projection"],
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    crop = spec["image_size"]
    # the Pillow implementation, which is what transformers picks without torchvision (as in the image)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    print(build(args.directory, args.size))


if __name__ == "__main__":
    main()
