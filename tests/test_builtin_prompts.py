"""The built-in prompt set: size, categories, users over the cap, near-duplicates the pipeline catches."""

from __future__ import annotations

from collections import Counter

import pytest

from alignloop.config import DataConfig
from alignloop.data.builtin import HEAVY_USER_PROMPTS, N_NEAR_DUPLICATES, base_prompts, builtin_prompts
from alignloop.data.pipeline import DROP_REASONS, KEPT, normalize_prefix, prepare, user_split
from alignloop.data.records import CATEGORIES, Prompt


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    return builtin_prompts()


def test_several_hundred_prompts_across_all_categories(prompts):
    assert 600 <= len(prompts) <= 1000
    assert len(prompts) == len(base_prompts()) + N_NEAR_DUPLICATES
    per_category = Counter(p.category for p in prompts)
    assert set(per_category) == set(CATEGORIES)
    assert min(per_category.values()) >= 60
    assert len({p.id for p in prompts}) == len(prompts)
    for p in prompts:
        p.validate()  # non-empty text, known category
        assert p.source == "builtin" and p.user_id.startswith("user-")
        assert len(p.text) < 250  # short instructions a small model can answer briefly


def test_template_prompts_are_distinct_under_the_default_dedupe():
    base = [Prompt(id=str(i), text=t, user_id=f"u{i}", category=c) for i, (c, t) in enumerate(base_prompts())]
    out = prepare(base, DataConfig())
    assert out.report.dropped == {"invalid": 0, "duplicate": 0, "over_user_cap": 0}


def test_users_over_the_cap_and_their_prompts_capped(prompts):
    counts = Counter(p.user_id for p in prompts)
    assert len(counts) == 60
    heavy = [u for u, n in counts.items() if n > 200]
    assert sorted(counts[u] for u in heavy) == sorted(HEAVY_USER_PROMPTS)
    out = prepare(prompts, DataConfig())
    kept = Counter(p.user_id for p in out.kept())
    assert all(kept[u] == 200 for u in heavy)
    assert max(kept.values()) == 200
    assert out.report.users_over_cap == 2
    # the heavy users sit in the training split for the default data seed
    assert all(user_split(u, DataConfig()) == "train" for u in heavy)


def test_pipeline_drops_exactly_the_injected_near_duplicates(prompts):
    out = prepare(prompts, DataConfig())
    dup = DROP_REASONS.index("duplicate")
    dropped = [i for i, d in enumerate(out.drop) if d == dup]
    assert len(dropped) == N_NEAR_DUPLICATES
    for i in dropped:
        original = int(out.duplicate_of[i])
        assert original < i - 1  # the original comes earlier and not right before
        assert out.drop[original] in (KEPT, DROP_REASONS.index("over_user_cap"))  # dedupe runs before the cap
        assert prompts[i].text != prompts[original].text
        assert normalize_prefix(prompts[i].text, 64) == normalize_prefix(prompts[original].text, 64)
    # the three kinds of resubmission all occur: upper case, changed spacing, an added tail
    texts = [prompts[i].text for i in dropped]
    assert any(t.isupper() for t in texts)
    assert any("  " in t for t in texts)
    assert any(t.endswith("Please keep it brief.") for t in texts)


def test_deterministic_and_seeded(prompts):
    again = builtin_prompts()
    assert again == prompts
    other = builtin_prompts(seed=1)
    assert [p.text for p in other] != [p.text for p in prompts]
    assert Counter(p.category for p in builtin_prompts(n_users=10)) == Counter(p.category for p in prompts)


def test_too_few_users_is_an_error():
    with pytest.raises(ValueError, match="n_users"):
        builtin_prompts(n_users=2)
