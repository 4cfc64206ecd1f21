"""Post-training machinery: the task and its verifier, ranking of samples, packing, DPO/IPO with
cached reference log-probabilities, the Bradley-Terry margin, averaging across rounds."""

import re

import pytest
import torch

from herd.data import corpus
from herd.data.io import read_jsonl
from herd.data.tokens import ASSISTANT, END, EOT, PAD, SYSTEM, USER, train_tokenizer
from herd.model.cross_entropy import IGNORE
from herd.model.llama import Llama, LlamaConfig
from herd.post.chat import ChatFormat
from herd.post.dpo import pair_batch, reference_logprobs
from herd.post.losses import bradley_terry_loss, dpo_loss, sequence_logprobs
from herd.post.task import calculations_hold, constructed_pairs, exact_match, final_answer, verify
from herd.training.averaging import averaged
from tasks.rejection_sample import losers, rank_key, sampling_metrics
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def fmt():
    texts = [d["text"] for d in corpus.math_problems(200, 0, "train", "drill", 10)]
    return ChatFormat(train_tokenizer(texts, 400, 1, [EOT, PAD, SYSTEM, USER, ASSISTANT, END]))


def tiny(vocab: int) -> Llama:
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=128))
    m.init_weights(0.1)
    return m


def test_drill_splits_are_disjoint_and_their_solutions_verify():
    splits = corpus.drills(corpus.CorpusConfig(drills=500, drill_prompts=100, drill_test=50, drill_max=10), 0)
    assert len(splits["train"]) == 50  # worksheets of drills_per_doc problems
    trained = {q.split("\n")[0] for doc in splits["train"] for q in doc["text"].split("Question: ")[1:]}
    assert len(trained) == 500
    held = [{d["question"] for d in splits[name]} for name in ("prompts", "test")]
    assert not (trained & held[0]) and not (trained & held[1]) and not (held[0] & held[1])
    for doc in splits["test"]:
        assert verify(doc["solution"], doc["answer"]) and eval(doc["solution"].split("=")[0]) == int(doc["answer"])


def test_the_verifier_rejects_a_right_answer_reached_by_a_wrong_calculation():
    assert verify("3 + 8 = 11. The answer is 11.", "11")
    assert exact_match("2 + 8 = 11. The answer is 11.", "11") and not verify("2 + 8 = 11. The answer is 11.", "11")
    assert not verify("10 -10 = 9. The answer is 9.", "9")


def test_calculations_are_checked_as_gsm8k_and_prose_write_them():
    gsm8k = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\nShe makes 9 * 2 = $<<9*2=18>>18 a day."
    assert calculations_hold(gsm8k) and not calculations_hold(gsm8k.replace("9*2=18", "9*2=19"))
    assert calculations_hold("He pays 80,000 * 2 = 160,000 dollars; -3 + 5 = 2; 2.5 × 4 = 10")
    assert calculations_hold("7 / 3 = 2.33 each") and not calculations_hold("7 / 3 = 2.34 each")
    assert calculations_hold("10 - 2 * 3 = 4 and 8 / 4 / 2 = 1") and not calculations_hold("2 * 3 + 1 = 8")
    assert not calculations_hold("5 / 0 = 3")
    assert calculations_hold("a 3-day trip; no working at all")


def test_gsm8k_reference_solutions_pass_the_calculation_check():
    """The check must not reject real worked solutions: GSM8K's fail it in 38 of 8,792, about half
    of them GSM8K's own slips (`2*8 = 24`), the rest percentages and spaced fractions."""
    files = [SHARED_DATA / "gsm8k" / f"{split}.jsonl.gz" for split in ("train", "test")]
    if not all(f.is_file() for f in files):
        pytest.skip("../shared/data/gsm8k is absent")
    solutions = [row["answer"] for f in files for row in read_jsonl(f)]
    failing = [s for s in solutions if not calculations_hold(s)]
    assert len(failing) < 0.01 * len(solutions)
    assert any("2*8 = 24" in s for s in failing)


def test_a_constructed_wrong_answer_is_wrong_in_its_equation_and_its_final_answer():
    problems = corpus.math_problems(100, 0, "train", "drill", 10)
    pairs = [p for p in constructed_pairs(problems, 100, 0) if p["source"] == "constructed-wrong_answer"]
    assert len(pairs) > 20
    for p in pairs:
        wrong = final_answer(p["rejected"])
        assert wrong != final_answer(p["chosen"]) and f"= {wrong}." in p["rejected"]


def test_ranking_puts_verified_samples_first_and_the_reward_breaks_ties():
    samples = [{"correct": False, "reward": 3.0}, {"correct": True, "reward": 0.5}, {"correct": True, "reward": 1.0}]
    assert max(samples, key=lambda s: rank_key(s, "both")) is samples[2]
    assert max(samples, key=lambda s: rank_key(s, "reward")) is samples[0]
    assert max(samples, key=lambda s: rank_key(s, "verifier"))["correct"]


def test_dpo_rejects_every_distinct_loser_most_frequent_first():
    texts = [("4 + 4 = 8.", True, 0.1), ("4 + 4 = 9.", False, 0.9), ("4 + 4 = 7.", False, -1.0),
             ("4 + 4 = 9.", False, 0.9), ("4 + 4 = 8.", True, 0.3), ("4 - 4 = 0.", False, 0.2)]
    samples = [{"text": t, "correct": c, "reward": r} for t, c, r in texts]
    ranked = sorted(samples, key=lambda s: rank_key(s, "both"), reverse=True)
    assert ranked[0]["text"] == "4 + 4 = 8."
    # The near miss the policy makes twice first; the other right sample is no loser.
    assert losers(ranked, "both")[0] == "4 + 4 = 9." and set(losers(ranked, "both")) == {
        "4 + 4 = 9.", "4 + 4 = 7.", "4 - 4 = 0."}
    ranked = sorted(samples, key=lambda s: rank_key(s, "reward"), reverse=True)
    assert losers(ranked, "reward") == ["4 + 4 = 8.", "4 - 4 = 0.", "4 + 4 = 7."]  # by reward alone
    wrong = [s for s in samples if not s["correct"]]
    assert losers(sorted(wrong, key=lambda s: rank_key(s, "both"), reverse=True), "both") == []  # nothing beats


def test_batches_are_padded_to_their_longest_row_within_the_limit(fmt):
    short = [(fmt.prompt("What is 1 + 1?"), fmt.response("2."))] * 2
    longer = short + [(fmt.prompt("What is 10 + 10 + 10?"), fmt.response("10 + 10 + 10 = 30."))]
    n = len(longer[-1][0]) + len(longer[-1][1])
    assert fmt.batch(short, 64)["input_ids"].shape[1] == len(short[0][0]) + len(short[0][1]) - 1
    assert fmt.batch(longer, 64)["input_ids"].shape[1] == n - 1 and fmt.batch(longer, 8)["input_ids"].shape[1] == 8
    assert fmt.conversations(longer, 64)["input_ids"].shape[1] == n
    assert fmt.conversations(longer, 8)["last"].tolist() == [7, 7, 7]


def test_sampling_metrics_count_best_of_k_against_a_random_sample():
    rows = [{"samples": [{"member": "anneal", "correct": c, "reward": r} for c, r in row]}
            for row in ([(True, 2.0), (False, 1.0)], [(False, 0.0), (False, 1.0)], [(True, -1.0), (False, 0.5)])]
    for row in rows:
        row["accepted"] = any(s["correct"] for s in row["samples"])
        row["rejected"] = ["wrong"]
    m = sampling_metrics(rows, "both")
    assert m["random_correct_rate"] == round(2 / 6, 4)
    assert m["best_of_k_verifier_correct_rate"] == round(2 / 3, 4) == m["best_correct_rate"]
    assert m["best_of_k_reward_correct_rate"] == round(1 / 3, 4)  # the reward model is fooled on the third
    assert m["reward_onpolicy_accuracy"] == 0.5 and m["reward_onpolicy_pairs"] == 2


def test_chat_renders_system_and_turns_as_prompt_and_response_do(fmt):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 2?"},
             {"role": "assistant", "content": "3"}, {"role": "user", "content": "And 2 + 2?"}]
    ids = fmt.render(turns)
    assert ids == [fmt.tok.token_to_id(SYSTEM), *fmt.tok.encode("Be brief.").ids, *fmt.prompt("1 + 2?"),
                   *fmt.response("3"), *fmt.prompt("And 2 + 2?")]


def test_packing_labels_each_response_once_and_nothing_across_a_boundary(fmt):
    examples = [(fmt.prompt(f"What is {i} + 1?"), fmt.response(f"{i} + 1 = {i + 1}.")) for i in range(12)]
    batch = fmt.packed(examples, 48)
    assert batch["input_ids"].shape[0] < len(examples)  # several conversations share a row
    labelled = batch["labels"][batch["labels"] != IGNORE].tolist()
    assert labelled == [t for _, response in examples for t in response]
    assert not (batch["labels"] == fmt.user).any()  # no conversation's end predicts the next one's start


def test_cached_reference_logprobs_equal_those_of_each_step(fmt):
    model = tiny(fmt.tok.get_vocab_size())
    pairs = [(fmt.prompt(f"What is {i} + 2?"), fmt.response(f"{i + 2}."), fmt.response(f"{i + 3}."))
             for i in range(40)]
    cached = reference_logprobs(model, fmt, pairs, 32, "fp32", per_token=False)
    idx = [3, 17, 35]
    with torch.no_grad():
        fresh = sequence_logprobs(model, pair_batch(fmt, [pairs[i] for i in idx], 32))
    assert torch.allclose(cached[idx], torch.stack(fresh.chunk(2), 1), atol=1e-5)


def test_ipo_is_smallest_at_its_target_margin_and_dpo_keeps_pushing():
    zero = torch.zeros(4)
    beta = 0.5
    losses = {}
    for kind in ("sigmoid", "ipo"):
        losses[kind] = [dpo_loss(torch.full((4,), h), zero, zero, zero, beta, kind)[0].item() for h in (0.0, 1.0, 3.0)]
    assert losses["sigmoid"][0] > losses["sigmoid"][1] > losses["sigmoid"][2]  # always wants a larger margin
    assert losses["ipo"][1] == pytest.approx(0.0) and losses["ipo"][2] > losses["ipo"][1]  # target 1 / (2 beta)


def test_a_margin_asks_the_chosen_reward_to_lead_by_it():
    chosen, rejected = torch.tensor([1.0]), torch.tensor([0.5])
    assert bradley_terry_loss(chosen, rejected, margin=1.0) > bradley_terry_loss(chosen, rejected)


def test_averaging_across_rounds_weights_each_policy():
    a, b = tiny(50), tiny(50)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    states = [{k: v.clone() for k, v in a.state_dict().items()}, {k: v.clone() for k, v in b.state_dict().items()}]
    out = averaged(tiny(50), states, [0.25, 0.75])
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(out.state_dict()[name], 0.25 * states[0][name] + 0.75 * states[1][name])
    # tied embeddings are averaged once, not twice
    assert torch.allclose(out.model.embed_tokens.weight, states[0]["model.embed_tokens.weight"] + 0.75)



@pytest.mark.parametrize("override, named", [
    ("task.kind=poetry", "task.kind: must be one of drill, math"),
    ("rejection_sample.score=best", "rejection_sample.score: must be one of verifier, reward, both"),
    ("rejection_sample.top_p=0", "rejection_sample.top_p"),
    ("dpo.loss=kto", "dpo.loss: must be one of sigmoid, ipo"),
    ("dpo.average=median", "dpo.average"),
    ("sft.lora.rank=-1", "sft.lora.rank"),
    ("reward.model={depth: 3}", "reward.model.depth: is not a size of the model"),
    ("reward.datasets=[{path: missing.jsonl}]", "reward.datasets[0].path: input file"),
    ("evaluate.preference_files=[{path: hh.jsonl.gz, limit: 0}]", "evaluate.preference_files[0].limit"),
])
def test_a_bad_post_training_knob_is_named(override, named):
    from herd.errors import HerdError
    from herd.recipe import check_params

    with pytest.raises(HerdError, match=re.escape(named)):
        check_params(overrides=[override])


def test_chat_tokens_start_as_the_text_they_stand_for(fmt):
    from herd.post.chat import CHAT_TOKEN_TEXT, seed_chat_tokens

    model = tiny(fmt.tok.get_vocab_size())
    seed_chat_tokens(model, fmt)
    emb = model.model.embed_tokens.weight
    for token, text in CHAT_TOKEN_TEXT.items():
        ids = fmt.tok.encode(text).ids
        assert torch.allclose(emb[fmt.tok.token_to_id(token)], emb[ids].mean(0))
    assert model.lm_head.weight is emb  # tied: the output row moved with it


def test_the_reward_model_and_the_policy_sample_disjoint_halves_of_the_prompts(tmp_path):
    from herd.data.io import write_jsonl
    from herd.post.task import prompts

    write_jsonl(corpus.math_problems(400, 0, "prompts", "drill", 10), tmp_path / "drill_prompts.jsonl")
    reward, policy = (prompts("drill", tmp_path, [], purpose) for purpose in ("reward", "policy"))
    assert {p["id"] for p in reward}.isdisjoint(p["id"] for p in policy) and len(reward) + len(policy) == 400
    assert 150 < len(reward) < 250
