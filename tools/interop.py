"""Hugging Face interop: export a run as a `deepseek_v3` checkpoint folder, and import one back.

Why: a model trained here can then be loaded by `transformers` (AutoModelForCausalLM, generate,
the Hub tooling), and a DeepSeek-V3-format checkpoint made elsewhere (e.g. a random tiny model from
transformers, or a dequantised public one that fits) can be run, sampled and trained by r1.py.

    export_hf("runs/base", "hf/base")      # config.json, model.safetensors, tokenizer files
    import_hf("hf/base", "runs/imported")  # ckpt/, config.json, tokenizer.json: a run runs.load_run reads

Conventions handled (checked numerically by tests/test_interop.py against transformers 5.x):
- Names. Ours follow the reference `inference/model.py`; the Hub checkpoints use HF names:
  embed -> model.embed_tokens, layers.i -> model.layers.i, attn -> self_attn, wq -> q_proj,
  wq_a/q_norm/wq_b -> q_a_proj/q_a_layernorm/q_b_proj, wkv_a -> kv_a_proj_with_mqa, kv_norm ->
  kv_a_layernorm, wkv_b -> kv_b_proj, wo -> o_proj, attn_norm -> input_layernorm, ffn_norm ->
  post_attention_layernorm, ffn -> mlp, w1/w3/w2 -> gate_proj/up_proj/down_proj, gate.bias ->
  gate.e_score_correction_bias, norm -> model.norm, head -> lm_head.
- Experts are written one by one (mlp.experts.{j}.gate_proj.weight, ...), the layout of the public
  checkpoints and of transformers' own save_pretrained; transformers >= 5 fuses them on load into
  mlp.experts.gate_up_proj [E, 2F, D] = cat(gate, up) and mlp.experts.down_proj [E, D, F]. Import
  reads either layout.
- MTP. Module k is stored as the extra layer model.layers.{n_layers + k}, as in the public weights:
  enorm, hnorm, eh_proj, the block's self_attn/mlp/layernorms, shared_head.norm (our MTP `norm`),
  plus copies of the shared embedding (embed_tokens) and head (shared_head.head). transformers has
  no MTP module: it loads the file and lists these keys as UNEXPECTED in its load report (its ignore pattern
  names only the 671B model's layer 61). Import takes as many MTP layers as the weights hold; the
  duplicated embedding/head are not read back. Our concatenation is [enorm(embedding); hnorm(hidden)],
  the order the released weights are used with, so eh_proj is copied without permutation.
- RoPE. We rotate consecutive pairs (2i, 2i+1) of the rope dims (the reference layout). transformers
  with rope_interleave=true rotates the same pairs by the same angles, but writes the result
  de-interleaved ([evens; odds]); that is one fixed permutation of both q_rope and k_rope, so every
  q.k is unchanged and the weights need no permutation. A checkpoint with rope_interleave=false
  (rotate-half pairs (i, i + R/2)) gets its rope rows of q_proj/q_b_proj and kv_a_proj_with_mqa
  permuted on import (`_rope_perm`).
- Softmax scale and YaRN. Ours: 1/sqrt(N + R), times mscale_eff^2 with mscale_eff = 0.1 mscale
  ln(factor) + 1, only when max_seq_len > original_seq_len. Exported as rope_scaling {type yarn,
  mscale = mscale_all_dim = our mscale}: transformers then scales the softmax by
  mscale_eff(mscale_all_dim)^2 and cos/sin by mscale_eff(mscale) / mscale_eff(mscale_all_dim) = 1,
  which is the same computation. Without YaRN, rope_scaling is null.
- Routing. transformers' DeepseekV3 implements sigmoid scores + bias-corrected selection
  ("noaux_tc") + renormalised top-k only; a softmax-routed (V2-style) model cannot be exported, and
  other scoring_func/topk_method/norm_topk_prob values are refused on import.
- Fields transformers has no name for (bias_update_speed, seq_aux_alpha, mtp_lambda, and the YaRN
  knobs while YaRN is off) travel in config.json under "r1_model_config", so export -> import gives
  back the same ModelConfig. Weights are float32 both ways; fp8 checkpoints must be dequantised first.

Runs on safetensors alone (requirements-interop.txt); transformers is needed only to use the export and
by the tests. Every function raises runs.R1Error with one line for bad input.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import torch

from data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer
from model import ModelConfig, build_model
from runs import R1Error, check_deletable, prepare_run_dir, save_checkpoint
from runs import load_run, save_run_files

_PARTS = {  # our module name -> HF module name (one dotted component each)
    "embed": "embed_tokens", "attn": "self_attn", "ffn": "mlp",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "wq": "q_proj", "wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj",
    "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj",
    "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj",
}
_NOT_IN_HF = ("bias_update_speed", "seq_aux_alpha", "mtp_lambda")  # training-only fields
_YARN_KNOBS = ("rope_factor", "beta_fast", "beta_slow", "mscale")  # inert while YaRN is off
# the only config.json values we can run (each is also what an absent key means)
_REQUIRED = {"hidden_act": "silu", "attention_bias": False, "moe_layer_freq": 1, "scoring_func": "sigmoid",
             "topk_method": "noaux_tc", "norm_topk_prob": True, "tie_word_embeddings": False}


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise R1Error("HF interop needs safetensors: pip install -r requirements-interop.txt") from None
    return safetensors.torch


def hf_name(key: str, n_layers: int) -> str:
    """The HF checkpoint name of one of our state-dict keys (MTP module k -> layer n_layers + k)."""
    parts = key.split(".")
    if parts[0] == "head":
        return "lm_head." + ".".join(parts[1:])
    if parts[0] == "mtp":
        rest = parts[2:]
        if rest[0] == "block":  # the MTP block's attention/FFN/norms are the layer's own
            rest = rest[1:]
        elif rest[0] == "norm":  # the MTP head's final norm
            rest = ["shared_head", *rest]
        parts = ["layers", str(n_layers + int(parts[1])), *rest]
    if parts[-2:] == ["gate", "bias"]:
        parts[-1] = "e_score_correction_bias"
    return "model." + ".".join(_PARTS.get(p, p) for p in parts)


def _rope_perm(cfg: ModelConfig) -> torch.Tensor:
    """Row order that turns rotate-half rope dims (pairs (i, i + R/2)) into our pairs (2i, 2i+1)."""
    half = cfg.qk_rope_head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, tok: Tokenizer) -> dict:
    """config.json for transformers' DeepseekV3ForCausalLM (Hub field names)."""
    if cfg.score_func != "sigmoid":
        raise R1Error(f"cannot export score_func={cfg.score_func!r}: transformers' DeepseekV3 routes with "
                      f"sigmoid scores only (a softmax-routed model is V2-style)")
    if cfg.is_moe and cfg.n_shared_experts == 0:
        raise R1Error("cannot export an MoE model without a shared expert: transformers' DeepseekV3 always has one")
    yarn = cfg.max_seq_len > cfg.original_seq_len
    if yarn and cfg.mscale <= 0:
        raise R1Error(f"cannot export YaRN with mscale={cfg.mscale}: transformers reads mscale 0 as unset")
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.inter_dim,
        "moe_intermediate_size": cfg.moe_inter_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "n_shared_experts": cfg.n_shared_experts, "n_routed_experts": cfg.n_routed_experts,
        "num_experts_per_tok": cfg.n_activated_experts,
        # a dense model (no routed experts) is all dense layers: transformers would build empty MoEs
        "first_k_dense_replace": cfg.n_dense_layers if cfg.n_routed_experts else cfg.n_layers,
        "moe_layer_freq": 1, "n_group": cfg.n_expert_groups, "topk_group": cfg.n_limited_groups,
        "routed_scaling_factor": cfg.route_scale, "norm_topk_prob": True, "scoring_func": "sigmoid",
        "topk_method": "noaux_tc", "q_lora_rank": cfg.q_lora_rank or None, "kv_lora_rank": cfg.kv_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim, "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim, "hidden_act": "silu", "attention_bias": False,
        "rms_norm_eps": cfg.norm_eps, "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
        "rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": cfg.rope_factor,
                         "original_max_position_embeddings": cfg.original_seq_len,
                         "beta_fast": cfg.beta_fast, "beta_slow": cfg.beta_slow,
                         "mscale": cfg.mscale, "mscale_all_dim": cfg.mscale} if yarn else None,
        "rope_interleave": True, "num_nextn_predict_layers": cfg.mtp_depth, "tie_word_embeddings": False,
        "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
        "torch_dtype": "float32", "use_cache": True,
        "r1_model_config": cfg.to_dict(),
    }


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under HF names, MTP included (with its duplicated embedding and head), fp32."""
    cfg = model.cfg
    out = {hf_name(k, cfg.n_layers): v.detach().float().contiguous() for k, v in model.state_dict().items()}
    for k in range(cfg.mtp_depth):  # the public layout repeats the shared tensors inside the MTP layer
        layer = f"model.layers.{cfg.n_layers + k}."
        out[layer + "embed_tokens.weight"] = out["model.embed_tokens.weight"].clone()
        out[layer + "shared_head.head.weight"] = out["lm_head.weight"].clone()
    return out


def tensors_sha256(weights: dict[str, torch.Tensor]) -> str:
    """One SHA-256 over every tensor's name and bytes: what export_hf stores in the safetensors
    header and import_hf recomputes, so that a flipped bit in the weights is an error, not a model.
    (Another tool's re-save writes its own header without it: then only finiteness is checked.)"""
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_hf(run_dir, out_dir, *, overwrite: bool = False) -> Path:
    """Write a transformers-loadable DeepSeek-V3 folder from the newest checkpoint of a run."""
    st = _safetensors()
    model, tok, _ = load_run(run_dir)
    cfg = model.cfg
    config = hf_config(cfg, tok)
    # a new or empty folder, or one an earlier export made (marked), emptied with --overwrite
    out = prepare_run_dir(out_dir, resume=False, overwrite=overwrite, sources=(run_dir,), flag="--hf")
    weights = hf_state_dict(model)  # the digest travels in the file's own header, checked by import_hf
    st.save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt", "r1_sha256": tensors_sha256(weights)})
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    files = {
        "config.json": config,
        "special_tokens_map.json": specials,
        # no cleanup: it would turn "a ." into "a." and break decode == our decode
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
                                  "add_bos_token": False, "add_eos_token": False,
                                  "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_seq_len},
        "generation_config.json": {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                   "pad_token_id": tok.pad_id},
    }
    for name, obj in files.items():
        (out / name).write_text(json.dumps(obj, indent=2) + "\n")
    tok.save(out / "tokenizer.json")
    return out


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def model_config_from_hf(hf: dict, mtp_depth: int) -> ModelConfig:
    """Our ModelConfig from a DeepSeek-V3 config.json; R1Error for anything we cannot run exactly."""
    if hf.get("model_type") != "deepseek_v3":
        raise R1Error(f"config.json has model_type {hf.get('model_type')!r}: only 'deepseek_v3' can be imported")
    if hf.get("quantization_config"):
        raise R1Error("the checkpoint is quantised (config.json has quantization_config, e.g. fp8): "
                      "dequantise it to bf16/fp32 first (DeepSeek-V3 inference/fp8_cast_bf16.py)")
    for key, want in _REQUIRED.items():
        if hf.get(key, want) != want:
            raise R1Error(f"config.json has {key}={hf.get(key)!r}: only {want!r} is implemented here")

    def need(key):
        if hf.get(key) is None:
            raise R1Error(f"config.json lacks {key!r}: is this a DeepSeek-V3 config?")
        return hf[key]

    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = hf.get("rope_theta", rope.get("rope_theta"))
    fields = dict(
        vocab_size=need("vocab_size"), dim=need("hidden_size"), inter_dim=need("intermediate_size"),
        moe_inter_dim=need("moe_intermediate_size"), n_layers=need("num_hidden_layers"),
        n_heads=need("num_attention_heads"), n_routed_experts=need("n_routed_experts"),
        n_shared_experts=need("n_shared_experts"), n_activated_experts=need("num_experts_per_tok"),
        n_expert_groups=need("n_group"), n_limited_groups=need("topk_group"), score_func="sigmoid",
        route_scale=float(need("routed_scaling_factor")), q_lora_rank=hf.get("q_lora_rank") or 0,
        kv_lora_rank=need("kv_lora_rank"), qk_nope_head_dim=need("qk_nope_head_dim"),
        qk_rope_head_dim=need("qk_rope_head_dim"), v_head_dim=need("v_head_dim"),
        max_seq_len=need("max_position_embeddings"), original_seq_len=need("max_position_embeddings"),
        rope_theta=float(theta if theta is not None else 10000.0), mtp_depth=mtp_depth,
        norm_eps=float(need("rms_norm_eps")))
    fields["n_dense_layers"] = min(need("first_k_dense_replace"), fields["n_layers"])
    if rope_type == "yarn":
        mscale, all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        if (not mscale or mscale != all_dim or rope.get("attention_factor", 1.0) != 1.0
                or not rope.get("truncate", True)):
            raise R1Error(f"rope_scaling {rope}: only YaRN with mscale == mscale_all_dim (DeepSeek's) is implemented")
        fields.update(original_seq_len=rope["original_max_position_embeddings"], rope_factor=float(rope["factor"]),
                      beta_fast=rope.get("beta_fast", 32), beta_slow=rope.get("beta_slow", 1), mscale=float(mscale))
        if fields["max_seq_len"] <= fields["original_seq_len"]:
            raise R1Error("rope_scaling is YaRN but max_position_embeddings <= original_max_position_embeddings: "
                          "our YaRN is active only when the context is extended")
    elif rope_type != "default":
        raise R1Error(f"rope_scaling type {rope_type!r} is not implemented (only YaRN or none)")
    ours = hf.get("r1_model_config") or {}  # written by export_hf: fields HF has no name for
    keep = _NOT_IN_HF if rope_type == "yarn" else _NOT_IN_HF + _YARN_KNOBS
    fields.update({k: ours[k] for k in keep if k in ours})
    if rope_type != "yarn" and ours.get("original_seq_len", 0) >= fields["max_seq_len"]:
        fields["original_seq_len"] = ours["original_seq_len"]  # still no YaRN
    try:
        return ModelConfig(**fields)
    except (ValueError, TypeError) as e:
        raise R1Error(f"config.json gives an invalid model config: {e}") from None


def _read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), checked: against the digest our export
    wrote in the header (when the file has one), and finite (a flipped exponent bit shows as inf or NaN)."""
    st = _safetensors()
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError):
            raise R1Error(f"{index} is not a valid safetensors index (no weight_map)") from None
    elif (hf_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise R1Error(f"{hf_dir} has no model.safetensors (or model.safetensors.index.json): "
                      f"only safetensors checkpoints can be imported")
    weights = {}
    for name in files:
        try:
            with st.safe_open(str(hf_dir / name), "pt") as f:
                part = {key: f.get_tensor(key) for key in f.keys()}
                digest = (f.metadata() or {}).get("r1_sha256")
        except Exception as e:  # missing shard, truncated file: safetensors raises several types
            raise R1Error(f"cannot read {hf_dir / name} ({type(e).__name__}): the checkpoint is incomplete") from None
        if digest is not None and tensors_sha256(part) != digest:
            raise R1Error(f"{hf_dir / name} does not match the digest written when it was exported: the weights "
                          f"were changed or damaged since")
        weights.update(part)
    for key, t in weights.items():
        if t.is_floating_point() and t.element_size() == 1:
            raise R1Error(f"{key} is {t.dtype} (fp8): dequantise the checkpoint to bf16/fp32 first")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise R1Error(f"{key} holds inf or NaN values: the checkpoint is damaged")
    return weights


def _load_tokenizer(hf_dir: Path, vocab_size: int) -> Tokenizer:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise R1Error(f"{hf_dir} has no tokenizer.json: our Tokenizer reads only the HF tokenizers format "
                      f"(a sentencepiece tokenizer.model cannot be imported)")
    try:
        tok = Tokenizer.load(path)
    except Exception as e:  # the tokenizers library has its own exception types
        raise R1Error(f"our Tokenizer cannot load {path} ({type(e).__name__})") from None
    if None in (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id):
        raise R1Error(f"{path} lacks one of the special tokens {PAD} {UNK} {BOS} {EOS} our Tokenizer needs")
    if tok.vocab_size != vocab_size:
        raise R1Error(f"{path} has {tok.vocab_size} tokens but config.json says vocab_size {vocab_size}: "
                      f"our runs need the two to be equal")
    return tok


def import_hf(hf_dir, out_run, *, overwrite: bool = False) -> Path:
    """Turn a local DeepSeek-V3-format folder into a run directory (step 0, stage "import")."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise R1Error(f"HF model folder {hf_dir} does not exist")
    if not (hf_dir / "config.json").is_file():
        raise R1Error(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    try:
        hf = json.loads((hf_dir / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise R1Error(f"{hf_dir / 'config.json'} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if Path(out_run).resolve() == hf_dir.resolve():
        raise R1Error(f"the run directory must differ from the folder imported ({hf_dir})")
    if Path(out_run).is_dir() and any(Path(out_run).iterdir()):  # fail before reading gigabytes, write after
        if not overwrite:
            raise R1Error(f"--out {out_run} already exists: pass --overwrite to start again, or choose another --out")
        check_deletable(Path(out_run), sources=(hf_dir,))
    tok = _load_tokenizer(hf_dir, model_config_from_hf(hf, 0).vocab_size)  # before reading gigabytes
    weights = _read_weights(hf_dir)
    n_layers = hf["num_hidden_layers"]
    mtp_depth = 0  # as many MTP layers as the weights hold (transformers' save_pretrained drops them)
    while (mtp_depth < hf.get("num_nextn_predict_layers", 0)
           and f"model.layers.{n_layers + mtp_depth}.eh_proj.weight" in weights):
        mtp_depth += 1
    cfg = model_config_from_hf(hf, mtp_depth)

    for i in range(n_layers + mtp_depth):  # fused experts (transformers >= 5 in memory) -> one by one
        p = f"model.layers.{i}.mlp.experts."
        if p + "gate_up_proj" in weights:
            gate, up = weights.pop(p + "gate_up_proj").chunk(2, dim=1)
            down = weights.pop(p + "down_proj")
            for j in range(gate.shape[0]):
                weights.update({f"{p}{j}.gate_proj.weight": gate[j], f"{p}{j}.up_proj.weight": up[j],
                                f"{p}{j}.down_proj.weight": down[j]})
    model = build_model(cfg, device="meta")
    state, missing = {}, []
    for key, ref in model.state_dict().items():
        t = weights.pop(hf_name(key, n_layers), None)
        if t is None:
            missing.append(hf_name(key, n_layers))
        elif t.shape != ref.shape:
            raise R1Error(f"{hf_name(key, n_layers)} has shape {tuple(t.shape)}, "
                          f"config.json implies {tuple(ref.shape)}")
        else:
            state[key] = t.float().contiguous()
    if missing:
        raise R1Error(f"the checkpoint lacks {len(missing)} tensors the config implies, e.g. {missing[0]}")
    # left over and fine to drop: the MTP layers' copies of the shared embedding/head, MTP layers the
    # config does not announce (as transformers does), rope tables some exporters save
    layer = re.compile(r"model\.layers\.(\d+)\.")
    extra = [k for k in weights if not k.endswith("rotary_emb.inv_freq")
             and not (layer.match(k) and int(layer.match(k)[1]) >= n_layers)]
    if extra:
        raise R1Error(f"the checkpoint has {len(extra)} tensors we would drop, e.g. {extra[0]}: unsupported layout")
    if not hf.get("rope_interleave", True):  # rotate-half layout -> our consecutive pairs
        H, N, R, perm = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, _rope_perm(cfg)
        for key in state:
            if key.endswith(("attn.wq.weight", "attn.wq_b.weight")):
                w = state[key].view(H, N + R, -1)
                state[key] = torch.cat([w[:, :N], w[:, N:][:, perm]], 1).flatten(0, 1)
            elif key.endswith("attn.wkv_a.weight"):
                C = cfg.kv_lora_rank
                state[key] = torch.cat([state[key][:C], state[key][C:][perm]])
    run = prepare_run_dir(out_run, resume=False, overwrite=overwrite, sources=(hf_dir,), flag="--out")
    save_run_files(run, cfg, tok, "import", {"source": str(hf_dir)})
    save_checkpoint(run, 0, {"model": state, "config": asdict(cfg), "step": 0, "stage": "import"})
    return run
