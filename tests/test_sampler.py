"""sample(): greedy and masking, seeded reproducibility, exact output distributions, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from radixlm.engine.sampler import sample
from radixlm.engine.validation import check_sampling
from radixlm.protocol import SamplingParams

GREEDY = SamplingParams()
TOY = [0.5, 2.0, -1.0, 1.0, -3.0, 1.5, 0.0, -0.5]
# chi-square quantiles at 1 - 1e-3 by degrees of freedom (scipy.stats.chi2.ppf(0.999, dof))
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(logits: torch.Tensor, configs: list[SamplingParams], gens: list, n: int) -> list[list[int]]:
    """n successive sample() calls on the same batch; returns each row's tokens."""
    calls = [sample(logits, configs, gens).tokens for _ in range(n)]
    return [list(col) for col in zip(*calls)]


def target(logits: list[float], c: SamplingParams) -> list[float]:
    """Reference distribution in float64: temperature, top-k, top-p, min-p, each renormalised."""
    top = max(logits)
    weights = [math.exp((x - top) / c.temperature) for x in logits]
    order = sorted(range(len(logits)), key=lambda i: -weights[i])
    if c.top_k > 0:
        order = order[: c.top_k]
    total = sum(weights[i] for i in order)
    kept, cum = [], 0.0
    for i in order:
        kept.append(i)
        cum += weights[i] / total
        if cum >= c.top_p:
            break
    kept = [i for i in kept if weights[i] >= c.min_p * weights[kept[0]]]
    total = sum(weights[i] for i in kept)
    return [weights[i] / total if i in kept else 0.0 for i in range(len(logits))]


def test_greedy_is_argmax_and_caller_tensor_untouched() -> None:
    logits = torch.randn(5, 40, generator=gen(0))
    before = logits.clone()
    out = sample(logits, [GREEDY] * 5, [None] * 5)
    assert out.tokens == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)
    expected = torch.log_softmax(logits, -1).max(-1).values
    assert out.logprobs == pytest.approx(expected.tolist(), abs=1e-5)
    assert out.top_logprobs == [[] for _ in range(5)]


def test_logprobs_are_skipped_only_when_no_row_asks_for_them() -> None:
    logits = torch.randn(3, 40, generator=gen(0))
    out = sample(logits, [GREEDY] * 3, [None] * 3, logprobs=False)
    assert out.tokens == logits.argmax(-1).tolist() and out.logprobs == []
    ranked = sample(logits, [GREEDY] * 3, [None] * 3, top_logprobs=[0, 2, 0], logprobs=False)
    assert len(ranked.logprobs) == 3 and len(ranked.top_logprobs[1]) == 2


def test_mask_is_respected_greedy_and_sampled() -> None:
    rows, vocab = 6, 30
    logits = torch.randn(rows, vocab, generator=gen(1)) * 3
    allowed = torch.rand(rows, vocab, generator=gen(2)) < 0.2
    allowed[:, 7] = True  # at least one allowed token per row
    configs = [
        GREEDY,
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=2.0, top_k=3),
        SamplingParams(temperature=5.0, top_p=0.99),
        SamplingParams(temperature=1.0, min_p=0.01),
        SamplingParams(temperature=3.0, repetition_penalty=1.5, frequency_penalty=-2.0),
    ]
    gens = [None, gen(3), None, gen(4), gen(5), None]
    copies = 300  # every row repeated, so each sampled config draws many times in one call
    out = sample(
        logits.repeat(copies, 1),
        configs * copies,
        gens * copies,
        prompt_ids=[[0, 1, 2]] * rows * copies,
        output_ids=[[3, 4, 4]] * rows * copies,
        allowed=allowed.repeat(copies, 1),
    )
    tokens = torch.tensor(out.tokens).view(copies, rows)
    assert allowed.gather(1, tokens.T).all()
    assert (tokens[:, 0] == logits.masked_fill(~allowed, float("-inf"))[0].argmax()).all()


@pytest.mark.parametrize(
    "config",
    [SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_k=4, top_p=0.9, min_p=0.05)],
    ids=["plain", "filtered"],
)
def test_seeded_row_reproducible_in_any_batch(config: SamplingParams) -> None:
    vocab = 50
    logits = torch.randn(1, vocab, generator=gen(6))
    alone = draw(logits, [config], [gen(1234)], 30)[0]

    neighbours = [
        GREEDY,
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=0.5, top_p=0.5, min_p=0.1),
        SamplingParams(temperature=1.0),
    ]
    batch = torch.cat([torch.randn(2, vocab, generator=gen(7)), logits, torch.randn(2, vocab, generator=gen(8))])
    configs = neighbours[:2] + [config] + neighbours[2:]
    gens = [None, gen(1), gen(1234), None, gen(2)]
    assert draw(batch, configs, gens, 30)[2] == alone

    assert draw(logits, [config], [gen(1234)], 30)[0] == alone
    assert draw(logits, [config], [gen(4321)], 30)[0] != alone


@pytest.mark.parametrize(
    "config",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=0.7, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1),
    ],
    ids=["temperature", "top_k", "top_p", "min_p", "combined"],
)
def test_distribution_matches_target(config: SamplingParams) -> None:
    draws = 20_000
    expected = [p * draws for p in target(TOY, config)]
    logits = torch.tensor([TOY]).expand(draws, -1)
    tokens = sample(logits, [config] * draws, [gen(99)] * draws).tokens
    counts = torch.bincount(torch.tensor(tokens), minlength=len(TOY)).tolist()
    support = [i for i, e in enumerate(expected) if e > 0]
    assert all(counts[i] == 0 for i in range(len(TOY)) if i not in support)
    stat = sum((counts[i] - expected[i]) ** 2 / expected[i] for i in support)
    assert stat < CHI2_999[len(support) - 1], (counts, expected)


def test_target_reference_supports() -> None:
    """The filters keep the token sets worked out by hand for TOY."""

    def support(c: SamplingParams) -> list[int]:
        return [i for i, p in enumerate(target(TOY, c)) if p > 0]

    assert support(SamplingParams(temperature=1.0, top_k=3)) == [1, 3, 5]
    assert support(SamplingParams(temperature=0.7, top_p=0.8)) == [1, 3, 5]
    assert support(SamplingParams(temperature=1.0, min_p=0.2)) == [0, 1, 3, 5]
    assert support(SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1)) == [1, 3, 5]


def test_ties_with_the_last_kept_token_are_kept() -> None:
    logits = torch.tensor([[1.0, 0.0, 1.0, -1.0, 1.0]]).expand(3000, -1)
    tokens = sample(logits, [SamplingParams(temperature=1.0, top_k=2)] * 3000, [gen(5)] * 3000).tokens
    assert set(tokens) == {0, 2, 4}


def one(logits: list[float], config: SamplingParams, prompt: list[int], output: list[int]) -> int:
    out = sample(torch.tensor([logits]), [config], [gen(0)], prompt_ids=[prompt], output_ids=[output])
    return out.tokens[0]


def test_repetition_penalty() -> None:
    rep = SamplingParams(repetition_penalty=2.0)
    assert one([3.0, 2.5, -1.0], GREEDY, [0], []) == 0
    assert one([3.0, 2.5, -1.0], rep, [0], []) == 1  # prompt token: 3 / 2 < 2.5
    assert one([3.0, 2.5, -1.0], rep, [], [0]) == 1  # output token too
    assert one([-1.0, -0.6, -3.0], rep, [2], [1]) == 0  # negative logit: -0.6 * 2 < -1
    assert one([3.0, 2.5, -1.0], SamplingParams(repetition_penalty=0.5), [1], []) == 1  # < 1 rewards


def test_frequency_and_presence_penalties() -> None:
    logits = [2.0, 1.5, 0.0]
    freq = SamplingParams(frequency_penalty=0.2)
    assert one(logits, freq, [], [0]) == 0  # 2 - 0.2 > 1.5
    assert one(logits, freq, [], [0, 0, 0]) == 1  # 2 - 0.6 < 1.5
    assert one(logits, freq, [0, 0, 0, 0], []) == 0  # prompt tokens are not counted
    pres = SamplingParams(presence_penalty=0.6)
    assert one(logits, pres, [], [0]) == 1
    assert one(logits, SamplingParams(presence_penalty=0.4), [], [0, 0, 0]) == 0  # not scaled by count
    assert one(logits, SamplingParams(frequency_penalty=-1.0), [], [2, 2, 2]) == 2  # negative rewards
    # penalties apply before sampling: top_k=1 samples the penalized argmax
    assert one(logits, SamplingParams(temperature=1.0, top_k=1, frequency_penalty=0.2), [], [0, 0, 0]) == 1


def test_penalties_need_token_ids() -> None:
    with pytest.raises(ValueError, match="output_ids"):
        sample(torch.zeros(1, 4), [SamplingParams(presence_penalty=1.0)], [None])
    with pytest.raises(ValueError, match="prompt_ids"):
        sample(torch.zeros(1, 4), [SamplingParams(repetition_penalty=1.2)], [None], output_ids=[[]])


def test_logprobs_are_raw_after_mask() -> None:
    rows, vocab = 5, 20
    logits = torch.randn(rows, vocab, generator=gen(10)) * 2
    allowed = torch.ones(rows, vocab, dtype=torch.bool)
    allowed[1, logits[1].argmax()] = False
    allowed[3, ::2] = False
    configs = [
        GREEDY,
        GREEDY,
        SamplingParams(temperature=0.3, top_k=2),
        SamplingParams(temperature=2.0, repetition_penalty=1.8, presence_penalty=1.0),
        SamplingParams(repetition_penalty=2.0),
    ]
    ks = [0, 3, 1, 5, 20]
    out = sample(
        logits,
        configs,
        [None, None, gen(1), gen(2), None],
        prompt_ids=[[1, 2]] * rows,
        output_ids=[[3, 3, 4]] * rows,
        allowed=allowed,
        top_logprobs=ks,
    )
    lp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    for i in range(rows):
        token = out.tokens[i]
        assert out.logprobs[i] == pytest.approx(lp[i, token].item(), abs=1e-5)
        top = out.top_logprobs[i]
        assert len(top) == ks[i]
        values = [v for v, _ in top]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(lp[i].topk(ks[i]).values.tolist(), abs=1e-5)
        assert all(v == pytest.approx(lp[i, t].item(), abs=1e-5) for v, t in top)
        assert all(v == out.logprobs[i] for v, t in top if t == token)
    assert out.tokens[1] != logits[1].argmax()  # masked best token


def test_logprob_ignores_penalties_and_temperature() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0], [3.0, 2.5, 0.0]])
    configs = [SamplingParams(repetition_penalty=2.0), SamplingParams(temperature=0.1, top_k=1)]
    out = sample(logits, configs, [None, None], prompt_ids=[[0], []], output_ids=[[], []])
    assert out.tokens == [1, 0]
    raw = torch.log_softmax(logits[0], -1)
    assert out.logprobs == pytest.approx([raw[1].item(), raw[0].item()], abs=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 2.5),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -2.1),
    ],
)
def test_validate_names_field(field: str, value: float) -> None:
    check_sampling(SamplingParams())
    check_sampling(SamplingParams(temperature=1.5, top_p=0.5, top_k=10, min_p=1.0, frequency_penalty=-2.0))
    with pytest.raises(ValueError, match=field):
        check_sampling(SamplingParams(**{field: value}))
