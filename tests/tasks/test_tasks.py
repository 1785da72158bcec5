"""Each task's token counts agree with what the token-budget pass does, and its checks refuse early."""

from types import SimpleNamespace

import pytest
import torch

from edgec.errors import InputError
from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.passes.token_budget import TokenBudgetConfig, apply_token_budget
from edgec.tasks import TASKS
from edgec.toolchain.recipe import Recipe

LAYERS = [{"heads": 2, "head_dim": 8, "intermediate": 32}] * 2
TEXT_CONFIG = SimpleNamespace(max_position_embeddings=64, num_hidden_layers=2)
IMAGE_CONFIG = SimpleNamespace(image_size=8, patch_size=2, num_hidden_layers=2)


def _models():
    torch.manual_seed(0)
    text = TextEncoder(vocab=50, max_pos=64, type_vocab=2, hidden=16, layers=LAYERS, act="gelu", eps=1e-12)
    image = VisionEncoder(channels=1, patch=2, image_size=8, hidden=16, layers=LAYERS, act="gelu", eps=1e-12,
                          num_labels=3)
    return {"text": (text, TEXT_CONFIG, Recipe(seq_len=20)), "image": (image, IMAGE_CONFIG, Recipe())}


@pytest.mark.parametrize("kind", ["text", "image"])
def test_token_counts_match_the_pass(kind):
    module, config, recipe = _models()[kind]
    task = TASKS[kind]
    result = apply_token_budget(module, TokenBudgetConfig(budget=0.5), task.budget_size(config, recipe))
    assert result.total == task.tokens(config, recipe) == {"text": 18, "image": 16}[kind]
    assert result.kept == task.tokens(config, recipe) // 2


@pytest.mark.parametrize("kind, recipe, words", [
    ("text", Recipe(seq_len=65), "64 position"),
    ("text", Recipe(seq_len=20, token_budget=TokenBudgetConfig(budget=18)), "18 droppable"),
    ("image", Recipe(token_budget=TokenBudgetConfig(budget=0.5, layer=2)), "0..1"),
    ("image", Recipe(seq_len=20), "text models"),
])
def test_checks_refuse_what_the_model_cannot_do(kind, recipe, words):
    _, config, _ = _models()[kind]
    with pytest.raises(InputError, match=words):
        TASKS[kind].check(config, recipe)


@pytest.mark.parametrize("ctx", [32, 512])
def test_lm_prompts_leave_room_for_the_golden_tokens(ctx):
    """Windows span the context; golden and speed prompts plus the golden tokens fit in it."""
    from edgec.tasks.generation import GOLDEN_TOKENS, TextGeneration
    from edgec.toolchain.load import load
    from edgec.toolchain.recipe import Recipe

    model = load("tinylm")
    feeds = TextGeneration().feeds(model, None, Recipe(context=ctx, eval_samples=2, calib_samples=2))
    assert all(f["input_ids"].shape == (1, ctx) for f in feeds.eval + feeds.calib)
    prompts = [f["input_ids"].shape[1] for f in [*feeds.golden, *feeds.bench.values()]]
    assert max(prompts) + GOLDEN_TOKENS <= ctx and min(prompts) > 0
