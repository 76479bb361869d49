"""Tests for tools/race.py that hold on any machine (no speed is asserted): the generate race runs on a
random tiny model and our greedy ids equal transformers' generate (a real check that sampler.generate
is HF's generate on the same weights, left padding included); the grpo race without TRL installed is
one `error:` line naming `pip install trl` and exit code 2; bad options are refused the same way.

Needs transformers (skipped without it); never TRL. One thread, a few seconds.
"""
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import rewards  # noqa: E402
from data import default_tokenizer  # noqa: E402
from runs import load_run  # noqa: E402
from tools import race  # noqa: E402


def test_generate_race_greedy_ids_equal_transformers(tmp_path):
    model, tok, _ = load_run(race.random_run(tmp_path / "run"))
    hf = race.load_hf(tmp_path / "run", tmp_path / "hf")
    cfg = race.GenerateRace(batches=(2,), new_tokens=8, repeats=1, prompt_len=12)
    rows = race.race_generate(model, hf, None, tok.pad_id, cfg)
    assert [(r["batch"], r["mode"]) for r in rows] == [(2, "greedy"), (2, "sample")]
    assert rows[0]["identical_rows"] == 2
    assert all(r["ours_tok_s"] > 0 and r["hf_tok_s"] > 0 for r in rows)
    # the prompts really are left-padded to different lengths (12, 11, 10 or 9 tokens)
    ids, mask = race.left_pad([[5, 6, 7], [8]], pad_id=tok.pad_id)
    assert ids.tolist() == [[5, 6, 7], [tok.pad_id, tok.pad_id, 8]] and mask.sum(1).tolist() == [3, 1]


def test_generate_race_with_stops_counts_real_tokens_and_matches_transformers(tmp_path):
    """--stop: rows end at their first stop id on both sides (ours drops them from the batch, transformers
    pads them): the same greedy tokens up to the same stop, and tok/s counts only those tokens. The stop id
    is one the random model's greedy rows do write, so rows end at different steps."""
    import torch

    model, tok, _ = load_run(race.random_run(tmp_path / "run"))
    hf = race.load_hf(tmp_path / "run", tmp_path / "hf")
    cfg = race.GenerateRace(batches=(4,), new_tokens=10, repeats=1, prompt_len=12)
    plain = race.race_generate(model, hf, None, tok.pad_id, cfg)
    assert plain[0]["identical_rows"] == 4
    gen = torch.Generator().manual_seed(cfg.seed)  # the prompts race_generate draws first
    lens = cfg.prompt_len - torch.randint(0, 4, (4,), generator=gen)
    prompts = [torch.randint(0, model.cfg.vocab_size, (int(n),), generator=gen).tolist() for n in lens]
    out = race.ours_generate(model, prompts, 10, True, tok.pad_id, cfg.seed)
    stop = int(out[0, 4])  # row 0 writes it by its fifth token
    rows = race.race_generate(model, hf, None, tok.pad_id, race.replace(cfg, stop=(stop,)))
    assert rows[0]["identical_rows"] == 4
    assert race.generated(torch.tensor([[1, 5, 2], [3, 3, 3]]), (5,)).tolist() == [[True, True, False], [True] * 3]


def test_grpo_race_without_trl_is_one_error_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` now raises ImportError
    assert race.main(["grpo", "--run", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "pip install trl" in err and len(err.strip().splitlines()) == 1


def test_trl_reward_is_our_reward():
    cfg = race.grpo_config(steps=2, eval_n=10)
    fn = race.trl_reward(cfg)
    tok = default_tokenizer()
    texts = ["<think>1+2=3</think><answer>3</answer>", "<think></think><answer>4</answer>", "<answer>3"]
    got = fn(completions=texts, completion_ids=[tok.encode(t) for t in texts], answer=["3", "3", "3"],
             numbers=[[], [], []], prompts=["p"] * 3)
    assert got == [rewards.reward(t, "3")[0] for t in texts]
    assert got[0] > got[1] > got[2]  # right; wrong but well-formed; an answer block never closed


@pytest.mark.parametrize("argv", [["generate", "--batches", "0"], ["generate", "--new-tokens", "x"],
                                  ["grpo"], ["race"]])
def test_bad_options(argv, capsys):
    try:
        code = race.main(argv)
    except SystemExit as e:  # argparse exits itself
        code = e.code
    assert code == 2
    assert capsys.readouterr().err.startswith("error:")
