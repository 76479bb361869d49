"""Tests for interop.py against transformers' own DeepseekV3: exported runs load in transformers and give
the same logits (within 1e-4) and the same greedy tokens, for the tiny preset, a YaRN variant and a
group-limited, low-rank-query variant (non-zero routing biases and random norm weights, so swapped or
dropped tensors show); a random model made by transformers imports with the same logits (both RoPE
layouts); export -> import is bit-exact; the tokenizer files load in transformers and encode/decode as
ours; bad folders give R1Error.

Needs `pip install -r requirements-interop.txt` (skipped without transformers/safetensors). CPU, one
thread, models of a few hundred thousand parameters.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch



transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
import safetensors.torch  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, DeepseekV3Config,  # noqa: E402
                          DeepseekV3ForCausalLM, PreTrainedTokenizerFast)

from tools import interop  # noqa: E402
from data import TASKS, build_corpus, default_tokenizer  # noqa: E402
from model import build_model, preset  # noqa: E402
from runs import R1Error, load_checkpoint, save_checkpoint  # noqa: E402
from sampler import generate  # noqa: E402
from runs import load_run, save_run_files  # noqa: E402

TOK = default_tokenizer()
V = TOK.vocab_size
CONFIGS = {
    # the tiny preset (MoE, MTP, full-rank queries, one expert group), one layer fewer; non-default values for
    # fields transformers has no name for (training-only, and YaRN knobs while YaRN is off) test the round trip
    "tiny": preset("tiny", vocab_size=V, n_layers=3, bias_update_speed=2e-3, seq_aux_alpha=3e-4, mtp_lambda=0.1,
                   rope_factor=8.0, beta_fast=16, mscale=0.5, norm_eps=1e-5),
    # YaRN switched on (context 128 -> 512) with a V2-style mscale: exercises rope_scaling and the softmax scale
    "yarn": preset("tiny", vocab_size=V, n_layers=2, max_seq_len=512, original_seq_len=128, rope_factor=4.0,
                   mscale=0.707, mtp_depth=2),
    # `small` shrunk: low-rank queries and group-limited routing (4 groups of 2, 2 groups kept), route scale 2.5,
    # and a norm eps far from 1e-6 (the latent norms q_norm/kv_norm keep 1e-6, as the reference and transformers)
    "grouped": preset("small", vocab_size=V, dim=64, inter_dim=128, moe_inter_dim=32, n_layers=3, n_heads=4,
                      n_routed_experts=8, n_expert_groups=4, n_limited_groups=2, q_lora_rank=32, kv_lora_rank=32,
                      qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, norm_eps=1e-3),
    # dense (no MoE, no MTP): the distillation student
    "student": preset("student", vocab_size=V, n_layers=2, n_dense_layers=2),
}


@torch.no_grad()
def scramble(named_params, named_buffers, seed):
    """Random norm weights (around 1) and routing biases, so a swapped norm or a dropped bias changes logits."""
    g = torch.Generator().manual_seed(seed)
    for _, p in named_params:
        if p.dim() == 1:
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    for name, b in named_buffers:
        if name.endswith(("gate.bias", "e_score_correction_bias")):
            b.copy_(0.05 * torch.randn(b.shape, generator=g))


def make_run(path: Path, cfg, seed=0):
    model = build_model(cfg, seed=seed)
    scramble(model.named_parameters(), model.named_buffers(), seed)
    assert all(m.gate.bias.abs().sum() > 0 for m in model.moe_layers())
    path.mkdir(parents=True)
    save_run_files(path, cfg, TOK, "pretrain", {})
    save_checkpoint(path, 7, {"model": model.state_dict(), "config": cfg.to_dict(), "step": 7})
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (our model, run dir, exported HF folder), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            base = tmp_path_factory.mktemp(name)
            model = make_run(base / "run", CONFIGS[name], seed=len(cache) + 1)
            cache[name] = model, base / "run", interop.export_hf(base / "run", base / "hf")
        return cache[name]
    return get


@pytest.fixture(scope="module")
def hf_models(exported):
    cache = {}

    def get(name):
        if name not in cache:
            model, _, out = exported(name)
            hf, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
            cache[name] = model, hf.eval(), info
        return cache[name]
    return get


def random_prompts(seed, rows=3, length=40):
    return torch.randint(0, V, (rows, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Export: transformers runs our weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_loads_in_transformers_with_same_logits(hf_models, name):
    model, hf, info = hf_models(name)
    cfg = model.cfg
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # the only keys transformers does not use are the MTP layers' (it has no MTP module)
    mtp_keys = {k for k in info["unexpected_keys"]
                if any(k.startswith(f"model.layers.{cfg.n_layers + d}.") for d in range(cfg.mtp_depth))}
    assert mtp_keys == set(info["unexpected_keys"]) and bool(mtp_keys) == (cfg.mtp_depth > 0)
    assert hf.config.rope_interleave and hf.config.num_hidden_layers == cfg.n_layers
    tokens = random_prompts(seed=11)
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    assert ours.shape == theirs.shape == (3, 40, V)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours.std() > 0.05  # not a trivially flat model


def test_export_config_fields(exported):
    model, _, out = exported("grouped")
    cfg, hf = model.cfg, json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "deepseek_v3" and hf["architectures"] == ["DeepseekV3ForCausalLM"]
    assert (hf["hidden_size"], hf["q_lora_rank"], hf["n_group"], hf["topk_group"]) == (64, 32, 4, 2)
    assert hf["num_key_value_heads"] == hf["num_attention_heads"] == cfg.n_heads
    assert hf["routed_scaling_factor"] == 2.5 and hf["norm_topk_prob"] and hf["topk_method"] == "noaux_tc"
    assert hf["num_nextn_predict_layers"] == 1 and hf["rope_scaling"] is None
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (TOK.bos_id, TOK.eos_id, TOK.pad_id)
    assert json.loads((exported("tiny")[2] / "config.json").read_text())["q_lora_rank"] is None
    yarn = json.loads((exported("yarn")[2] / "config.json").read_text())["rope_scaling"]
    assert yarn["type"] == "yarn" and yarn["factor"] == 4.0 and yarn["original_max_position_embeddings"] == 128
    assert yarn["mscale"] == yarn["mscale_all_dim"] == 0.707
    # the MTP layer sits where the public checkpoints put it, with the shared tensors duplicated
    with safetensors.torch.safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert torch.equal(f.get_tensor("model.layers.3.shared_head.head.weight"), model.head.weight)
        assert torch.equal(f.get_tensor("model.layers.3.embed_tokens.weight"), model.embed.weight)
        assert torch.equal(f.get_tensor("model.layers.3.eh_proj.weight"), model.mtp[0].eh_proj.weight)
    for k in ("enorm", "hnorm", "shared_head.norm", "self_attn.q_a_layernorm", "mlp.experts.7.up_proj",
              "mlp.gate.e_score_correction_bias", "mlp.shared_experts.down_proj"):
        assert any(key.startswith(f"model.layers.3.{k}") for key in keys), k
    assert "model.layers.0.mlp.gate_proj.weight" in keys and "model.layers.1.mlp.experts.0.gate_proj.weight" in keys


@pytest.mark.parametrize("name", ["tiny", "grouped"])
def test_greedy_generation_matches_transformers(hf_models, name):
    model, hf, _ = hf_models(name)
    p, c = build_corpus(1, tasks=("add",), seed=3)[0]
    ids = TOK.encode(p, bos=True)
    ours = generate(model, [ids], max_new_tokens=32, temperature=0.0, eos_id=-1, pad_id=TOK.pad_id).tokens[0]
    hf.generation_config.eos_token_id = None  # never stop early: 32 tokens on both sides
    out = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                      pad_token_id=TOK.pad_id, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    theirs = out[0, len(ids):]
    assert len(ours) == len(theirs) == 32
    assert ours.tolist() == theirs.tolist()
    assert len(set(ours.tolist())) > 1  # not one token repeated: a real comparison


# --------------------------------------------------------------------------------------------
# Import: our model runs transformers' weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rope_interleave", [True, False])
def test_import_model_made_by_transformers(tmp_path, rope_interleave):
    config = DeepseekV3Config(
        vocab_size=V, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
        num_experts_per_tok=2, first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, rope_interleave=rope_interleave, rms_norm_eps=1e-3,
        bos_token_id=TOK.bos_id, eos_token_id=TOK.eos_id, pad_token_id=TOK.pad_id)
    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(config).eval()
    scramble(hf.named_parameters(), hf.named_buffers(), seed=5)
    hf.save_pretrained(tmp_path / "hf")
    TOK.save(tmp_path / "hf" / "tokenizer.json")
    interop.import_hf(tmp_path / "hf", tmp_path / "run")
    model, tok, state = load_run(tmp_path / "run")
    assert (state["step"], state["stage"]) == (0, "import")
    cfg = model.cfg
    assert (cfg.dim, cfg.n_layers, cfg.n_dense_layers, cfg.n_expert_groups, cfg.q_lora_rank) == (64, 3, 1, 2, 32)
    assert cfg.mtp_depth == 0  # save_pretrained writes no MTP layer
    assert tok.vocab_size == V
    tokens = random_prompts(seed=12)
    with torch.no_grad():
        diff = (model.eval()(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_import_round_trip_is_exact(exported, tmp_path, name):
    model, run, out = exported(name)
    interop.import_hf(out, tmp_path / "back")
    back = load_checkpoint(tmp_path / "back")
    assert back["config"] == model.cfg.to_dict()
    ours = load_checkpoint(run)["model"]
    assert set(back["model"]) == set(ours)
    for k, v in ours.items():
        assert back["model"][k].dtype == v.dtype and torch.equal(back["model"][k], v), k
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    assert read(tmp_path / "back" / "tokenizer.json") == read(run / "tokenizer.json")
    load_run(tmp_path / "back")  # the run is usable as is


def test_import_sharded_checkpoint(exported, tmp_path):
    """A sharded folder (model.safetensors.index.json + two shards, experts fused as transformers holds them)."""
    model, _, out = exported("grouped")
    shutil.copytree(out, tmp_path / "hf")
    weights = safetensors.torch.load_file(str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "model.safetensors").unlink()
    for i in (1, 2, 3):  # fuse layer i's experts: gate_up_proj [E, 2F, D], down_proj [E, D, F]
        p = f"model.layers.{i}.mlp.experts."
        e = [weights.pop(f"{p}{j}.{n}.weight") for j in range(8) for n in ("gate_proj", "up_proj", "down_proj")]
        weights[p + "gate_up_proj"] = torch.stack([torch.cat([e[3 * j], e[3 * j + 1]]) for j in range(8)])
        weights[p + "down_proj"] = torch.stack([e[3 * j + 2] for j in range(8)])
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for fname, ks in shards.items():
        safetensors.torch.save_file({k: weights[k] for k in ks}, str(tmp_path / "hf" / fname))
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    interop.import_hf(tmp_path / "hf", tmp_path / "run")
    back = load_checkpoint(tmp_path / "run")["model"]
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_import_without_mtp_drops_the_mtp_layer(exported, tmp_path):
    """A config announcing no MTP layer (as some bf16 conversions do) imports the main model only."""
    model, _, out = exported("grouped")
    shutil.copytree(out, tmp_path / "hf")
    edit_config(tmp_path / "hf", num_nextn_predict_layers=0)
    interop.import_hf(tmp_path / "hf", tmp_path / "run")
    back, _, _ = load_run(tmp_path / "run")
    assert back.cfg.mtp_depth == 0 and len(back.mtp) == 0
    tokens = random_prompts(seed=13)
    with torch.no_grad():
        assert torch.equal(back.eval()(tokens), model(tokens))


# --------------------------------------------------------------------------------------------
# Tokenizer files
# --------------------------------------------------------------------------------------------


def test_tokenizer_loads_in_transformers_and_encodes_like_ours(exported):
    _, _, out = exported("tiny")
    texts = [p + c for task in TASKS for p, c in build_corpus(40, tasks=(task,), seed=4, long_frac=0.5,
                                                               short_frac=0.2, reflect_rate=0.3)]
    assert any("<think>" in t for t in texts) and any("<answer>" in t for t in texts)
    texts.insert(0, "<think>1 . 2 , 3 ? 4 ! 5 = 6</think>")  # what clean_up_tokenization_spaces would alter
    for hf_tok in (PreTrainedTokenizerFast.from_pretrained(out), AutoTokenizer.from_pretrained(out)):
        assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id) == \
            (TOK.bos_id, TOK.eos_id, TOK.pad_id, TOK.unk_id)
        assert len(hf_tok) == V
        assert hf_tok(texts)["input_ids"] == TOK.encode_batch(texts)  # no BOS/EOS added by transformers either
        for text in texts[::7]:
            ids = TOK.encode(text, bos=True, eos=True)
            assert hf_tok.decode(ids, skip_special_tokens=True) == TOK.decode(ids) == text  # tags kept
            assert hf_tok.decode(ids) == "<bos>" + text + "<eos>"


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def edit_config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("breakage, message", [
    (lambda d: edit_config(d, quantization_config={"quant_method": "fp8", "fmt": "e4m3",
                                                   "weight_block_size": [128, 128]}), "quantised"),
    (lambda d: edit_config(d, scoring_func="softmax"), "scoring_func"),
    (lambda d: edit_config(d, topk_method="group_limited_greedy"), "topk_method"),
    (lambda d: edit_config(d, moe_layer_freq=2), "moe_layer_freq"),
    (lambda d: edit_config(d, model_type="llama"), "model_type"),
    (lambda d: edit_config(d, rope_scaling={"type": "linear", "factor": 2.0}), "linear"),
    (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
    (lambda d: (d / "tokenizer.json").write_text("{not json"), "cannot load"),
    (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    (lambda d: safetensors.torch.save_file(
        {**safetensors.torch.load_file(str(d / "model.safetensors")),
         "model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}, str(d / "model.safetensors")), "would drop"),
    (lambda d: safetensors.torch.save_file(
        {**safetensors.torch.load_file(str(d / "model.safetensors")),
         "model.layers.0.self_attn.o_proj.weight": torch.zeros(64, 64, dtype=torch.float8_e4m3fn)},
        str(d / "model.safetensors")), "fp8"),
])
def test_import_rejects_unsupported_checkpoints(exported, tmp_path, breakage, message):
    shutil.copytree(exported("grouped")[2], tmp_path / "hf")
    breakage(tmp_path / "hf")
    with pytest.raises(R1Error, match=message):
        interop.import_hf(tmp_path / "hf", tmp_path / "run")
    assert not (tmp_path / "run" / "ckpt").exists()


def test_bad_paths_and_unexportable_models(exported, tmp_path):
    with pytest.raises(R1Error, match="does not exist"):
        interop.import_hf(tmp_path / "missing", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(R1Error, match="no config.json"):
        interop.import_hf(tmp_path / "empty", tmp_path / "run")
    _, run, out = exported("tiny")
    with pytest.raises(R1Error, match="already exists"):
        interop.import_hf(out, run)  # would overwrite a trained run
    with pytest.raises(R1Error, match="already exists"):
        interop.export_hf(run, out)
    with pytest.raises(R1Error, match="does not exist"):
        interop.export_hf(tmp_path / "missing", tmp_path / "hf")
    make_run(tmp_path / "softmax", preset("tiny", vocab_size=V, n_layers=2, score_func="softmax"))
    with pytest.raises(R1Error, match="sigmoid"):
        interop.export_hf(tmp_path / "softmax", tmp_path / "hf")


@pytest.mark.parametrize("seed", range(4))
def test_random_configs_match_transformers_both_ways(tmp_path, seed):
    """Seeded random configs over what can differ (norm eps, full- or low-rank queries, expert groups, YaRN
    on or off, MTP depth 0-2): our logits equal transformers' after export, and after importing back."""
    rng = __import__("random").Random(seed)
    groups = rng.choice([1, 2, 4])
    yarn = rng.random() < 0.5
    cfg = preset("tiny", vocab_size=V, dim=48, n_layers=rng.choice([2, 3]), n_heads=rng.choice([2, 4]),
                 n_routed_experts=8, n_expert_groups=groups, n_limited_groups=max(1, groups // 2),
                 n_activated_experts=2, q_lora_rank=rng.choice([0, 24]), kv_lora_rank=rng.choice([16, 32]),
                 qk_nope_head_dim=8, qk_rope_head_dim=rng.choice([4, 8]), v_head_dim=8,
                 norm_eps=rng.choice([1e-6, 1e-5, 1e-3]), mtp_depth=rng.choice([0, 1, 2]),
                 route_scale=rng.choice([1.0, 2.5]),
                 **(dict(max_seq_len=256, original_seq_len=64, rope_factor=4.0, mscale=0.707) if yarn else {}))
    model = make_run(tmp_path / "run", cfg, seed=seed + 10)
    out = interop.export_hf(tmp_path / "run", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = random_prompts(seed=20 + seed)
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() < 1e-4
    interop.import_hf(out, tmp_path / "back")
    back, _, _ = load_run(tmp_path / "back")
    with torch.no_grad():
        assert (back.eval()(tokens) - hf(tokens).logits).abs().max().item() < 1e-4
