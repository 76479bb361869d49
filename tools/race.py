"""Race our engine against the standard references on the same weights: `sampler.generate` against
transformers' `generate`, and `train_grpo` against TRL's GRPOTrainer. Printed as ratios ours / theirs.

Why: "our engine is fast" means nothing without a baseline. transformers' DeepseekV3ForCausalLM and TRL
are what a reader would otherwise use, and tools/interop.py already makes our weights theirs, so both
sides run the very same model in fp32 on the same CPU threads.

    python -m tools.race generate [--run RUN] [--batches 1 16 64] [--new-tokens 128] [--repeats 3]
    python -m tools.race grpo --run BASE_RUN [--steps 30]

generate: without --run, a random-weight `tiny` preset model (the vocabulary cut to our tokenizer's 117
tokens, so the run can be exported with its tokenizer); with --run, a trained run and held-out add
prompts (as tools/bench.py's bench_sampling). The run is exported (interop.export_hf) to a temporary
folder and loaded by DeepseekV3ForCausalLM in fp32. At each batch size, greedy and sampling (temperature
1, top-p 1, no top-k: HF gets top_k=0 explicitly, else its default top_k=50 would filter), exactly
`--new-tokens` tokens per row on both sides (no EOS: ours eos_id=-1, HF eos_token_id=None), the same
prompts (left-padded with an attention mask for HF). Each side is warmed up once per setting, then the
two alternate `--repeats` times (both see the same load) and the BEST time of each is kept. Greedy
token ids must be identical: the count of identical rows is printed (a real check that our sampler is
transformers' generate; a near-tie of two logits can flip a late token of a random-weight model).

grpo: the same GRPO run twice from the same base, ours (train_grpo) and TRL's GRPOTrainer on the
exported base: task add, 16 prompts x 8 samples a step, lr 5e-5 constant, AdamW betas (0.9, 0.99),
grad clip 1, loss_type "dapo", beta 0 (no reference model), epsilon 0.2, one optimizer step per
generation batch, temperature 1, top-p 1, the same max completion length, the same prompts in the same
order (train_grpo.rollout_problems, TRL's shuffle off), the same reward (rewards.reward wrapped as a TRL
reward function), and the same stop: "</answer>" (kept) or EOS (HF: both are eos ids). Ours runs with
dynamic sampling off, as TRL has none: both train on all 128 samples. What still differs: ours updates
the MoE routing biases after each step (aux-loss-free balancing; transformers has no such update), and
ours reads pi_old from the sampler where TRL, with one iteration, detaches its training forward.
Reported: median seconds/step over the steps after the first (ours split into sampling + scoring and
training, from metrics.jsonl; TRL's sampling is its `generate` calls, timed by a wrapper), the ratio,
and held-out pass@1 of base and both results, by one protocol: train_grpo's final evaluation
(evaluate.evaluate, eval_n add problems x eval_k samples, T 0.6, top-p 0.95), on our sampler; TRL's
model is brought back with interop.import_hf first.

Optional, not needed by CI or the tests: `pip install -r requirements-race.txt` (TRL and what it pulls
in); without TRL the grpo subcommand says so in one `error:` line and exits 2. Everything is read from
local runs; nothing is downloaded. Threads: set OMP_NUM_THREADS (and taskset) for both sides at once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data import default_tokenizer, eval_problems, eval_set, prompt
from data.tokenizer import BOS
from evaluate import evaluate
from model import build_model, preset
from runs import Metrics, R1Error, error_line, load_run, save_checkpoint, save_run_files
from sampler import generate
from tools.interop import export_hf, import_hf


def _transformers():
    try:
        import transformers
    except ImportError:
        raise R1Error("the race needs transformers: pip install -r requirements-interop.txt") from None
    return transformers


def _trl():
    try:
        import trl
    except ImportError:
        raise R1Error("the grpo race needs TRL: pip install trl (pinned in requirements-race.txt)") from None
    return trl


# --------------------------------------------------------------------------------------------
# The same weights on both sides
# --------------------------------------------------------------------------------------------


def random_run(path: Path, seed: int = 0) -> Path:
    """A run folder holding the random-weight tiny preset (vocabulary = our tokenizer's), at step 0."""
    tok = default_tokenizer()
    cfg = preset("tiny", vocab_size=tok.vocab_size)
    model = build_model(cfg, seed=seed)
    path.mkdir(parents=True)
    save_run_files(path, cfg, tok, "pretrain", {})
    save_checkpoint(path, 0, {"model": model.state_dict(), "config": cfg.to_dict(), "step": 0})
    return path


def load_hf(run: Path, out: Path):
    """The run exported to `out` and loaded by transformers' DeepseekV3ForCausalLM, fp32, eval mode."""
    transformers = _transformers()
    transformers.logging.set_verbosity_error()  # its load report lists the MTP layer it has no module for
    transformers.logging.disable_progress_bar()
    export_hf(run, out)
    hf, info = transformers.DeepseekV3ForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise R1Error(f"transformers did not load every weight of the export ({len(info['missing_keys'])} "
                      f"missing, {len(info['mismatched_keys'])} mismatched): the race would not be on the same model")
    return hf.eval()


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


@dataclass
class GenerateRace:
    batches: tuple[int, ...] = (1, 16, 64)
    new_tokens: int = 128
    repeats: int = 3  # timed runs per side and setting, best kept (after one warm-up)
    prompt_len: int = 30  # random prompts: 27-30 tokens
    seed: int = 0
    stop: tuple[int, ...] = ()  # --stop: ids that end a row on both sides (EOS, "</answer>"); () = none


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (ids [B, P] left-padded with pad_id, attention mask [B, P], 1 on real tokens)."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def ours_generate(model, prompts, new_tokens: int, greedy: bool, pad_id: int, seed: int,
                  stop: tuple[int, ...] = ()) -> torch.Tensor:
    """-> [B, new_tokens] ids from sampler.generate: no EOS, or each row ending at its first `stop` id."""
    gen = torch.Generator().manual_seed(seed)
    return generate(model, prompts, max_new_tokens=new_tokens, temperature=0.0 if greedy else 1.0, top_p=1.0,
                    top_k=0, eos_id=stop[0] if stop else -1, stop_sequences=[[s] for s in stop[1:]], pad_id=pad_id,
                    generator=gen).tokens


@torch.no_grad()
def hf_generate(hf, prompts, new_tokens: int, greedy: bool, pad_id: int, seed: int,
                stop: tuple[int, ...] = ()) -> torch.Tensor:
    """-> [B, new_tokens] ids from transformers' generate, no top-k (its default is 50): no EOS, or each
    row ending at its first `stop` id (transformers pads a finished row until every row has finished)."""
    ids, mask = left_pad(prompts, pad_id)
    torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
    length = {"eos_token_id": list(stop)} if stop else {"eos_token_id": None, "min_new_tokens": new_tokens}
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=not greedy,
                      pad_token_id=pad_id, **length, **sampling)[:, ids.shape[1]:]
    return torch.nn.functional.pad(out, (0, new_tokens - out.shape[1]), value=pad_id)  # [B, new_tokens]


def generated(tokens: torch.Tensor, stop: tuple[int, ...]) -> torch.Tensor:
    """[B, L] ids -> [B, L] True on each row's tokens up to and including its first `stop` id (every token
    when it has none): what a row really generated."""
    hit = torch.isin(tokens, torch.tensor(stop, dtype=tokens.dtype)).long() if stop else torch.zeros_like(tokens)
    return (hit.cumsum(1) - hit) == 0  # nothing stopped before this token


def race_generate(model, hf, pool: list[list[int]] | None, pad_id: int, cfg: GenerateRace) -> list[dict]:
    """One row per (batch, mode): tokens/s of each side, the ratio ours / HF, identical greedy rows.
    `pool`: prompts to take rows from (cycled); None = random prompts of ~cfg.prompt_len tokens."""
    gen = torch.Generator().manual_seed(cfg.seed)
    W = model.cfg.vocab_size
    model.eval()
    hf.generation_config.eos_token_id = list(cfg.stop) or None  # the exported folder names EOS
    rows = []
    for B in cfg.batches:
        if pool is None:
            lens = cfg.prompt_len - torch.randint(0, 4, (B,), generator=gen)
            prompts = [torch.randint(0, W, (int(n),), generator=gen).tolist() for n in lens]
        else:
            prompts = [pool[i % len(pool)] for i in range(B)]
        for greedy in (True, False):
            sides = {"ours": lambda: ours_generate(model, prompts, cfg.new_tokens, greedy, pad_id, cfg.seed, cfg.stop),
                     "hf": lambda: hf_generate(hf, prompts, cfg.new_tokens, greedy, pad_id, cfg.seed, cfg.stop)}
            out = {name: fn() for name, fn in sides.items()}  # warm-up (and the tokens compared)
            best = dict.fromkeys(sides, float("inf"))
            for _ in range(cfg.repeats):  # alternate: both sides see the same load
                for name, fn in sides.items():
                    t = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t)
            assert all(o.shape == (B, cfg.new_tokens) for o in out.values())
            real = {name: generated(o, cfg.stop) for name, o in out.items()}  # each side's real tokens
            row = {"batch": B, "mode": "greedy" if greedy else "sample",
                   "ours_tok_s": int(real["ours"].sum()) / best["ours"], "hf_tok_s": int(real["hf"].sum()) / best["hf"]}
            row["ratio"] = row["ours_tok_s"] / row["hf_tok_s"]
            if greedy:  # the same tokens up to the same stop
                same = (real["ours"] == real["hf"]) & ((out["ours"] == out["hf"]) | ~real["ours"])
                row["identical_rows"] = int(same.all(1).sum())
            rows.append(row)
    return rows


def print_generate(rows: list[dict], cfg: GenerateRace) -> None:
    print(f"{'batch':>5} {'mode':<7}{'ours tok/s':>11}{'HF tok/s':>10}{'ours/HF':>9}  greedy ids")
    for r in rows:
        same = f"{r['identical_rows']}/{r['batch']} rows identical" if "identical_rows" in r else ""
        print(f"{r['batch']:>5} {r['mode']:<7}{r['ours_tok_s']:>11.0f}{r['hf_tok_s']:>10.0f}{r['ratio']:>8.2f}x  {same}")
    length = (f"at most {cfg.new_tokens} new tokens a row, each ending at EOS or </answer> on both sides, tok/s "
              f"counting real tokens" if cfg.stop else f"{cfg.new_tokens} new tokens a row, no EOS")
    print(f"({length}; best of {cfg.repeats} after a warm-up; {torch.get_num_threads()} torch threads)")


def cmd_generate(args) -> None:
    cfg = GenerateRace(batches=tuple(args.batches), new_tokens=args.new_tokens, repeats=args.repeats)
    if min(cfg.batches) < 1 or cfg.new_tokens < 1 or cfg.repeats < 1:
        raise R1Error("--batches, --new-tokens and --repeats must be >= 1")
    _transformers()
    with tempfile.TemporaryDirectory(prefix="r1-race-") as tmp:
        run = Path(args.run) if args.run else random_run(Path(tmp) / "run")
        model, tok, _ = load_run(run)
        if args.stop:  # rows end where an answer ends, as in evaluation and rollouts
            answer_end = tok.encode("</answer>")
            if len(answer_end) != 1:
                raise R1Error(f"the run's tokenizer writes </answer> as {len(answer_end)} tokens: --stop needs one")
            cfg = replace(cfg, stop=(tok.eos_id, *answer_end))
        if model.cfg.max_seq_len < 64 + cfg.new_tokens:
            raise R1Error(f"--new-tokens {cfg.new_tokens} plus a prompt does not fit the model's context "
                          f"of {model.cfg.max_seq_len} tokens")
        hf = load_hf(run, Path(tmp) / "hf")
    pool = [tok.encode(prompt(p), bos=True) for p in eval_set("add", 64)] if args.run else None
    what = f"trained run {args.run}, held-out add prompts" if args.run else "random-weight tiny preset, random prompts"
    print(f"generate race: ours (sampler.generate) vs transformers {_transformers().__version__} "
          f"DeepseekV3ForCausalLM.generate, fp32, {what}")
    print_generate(race_generate(model, hf, pool, tok.pad_id, cfg), cfg)


# --------------------------------------------------------------------------------------------
# grpo
# --------------------------------------------------------------------------------------------


def grpo_config(steps: int, eval_n: int):
    """The race's GRPO settings (ours): train_grpo's defaults (16 x 8, lr 5e-5, dapo, beta 0, T 1,
    80 tokens), task add, dynamic sampling off (TRL has none), one evaluation at the end, no dumps."""
    from train_grpo import GRPOConfig

    return GRPOConfig(steps=steps, tasks=("add",), dynamic_sampling=False, eval_every=0, ckpt_every=0,
                      dump_every=0, eval_n=eval_n)


def held_out(model, tok, cfg) -> float:
    """pass@1 on the held-out problems, by train_grpo's final-evaluation protocol."""
    ev = evaluate(model, tok, eval_problems(cfg.tasks, cfg.eval_n, cfg.difficulty), k=cfg.eval_k, greedy=False,
                  max_new_tokens=cfg.max_completion_length, seed=cfg.seed)
    return ev["overall"]["pass@1"]


def run_ours(base: Path, cfg, out: Path) -> dict:
    """Our GRPO from `base` into `out`: {"step_s", "sample_s", "train_s": median over steps 2.., "pass1"}."""
    from train_grpo import train_grpo

    model, tok, _ = load_run(base)
    out.mkdir()
    last = train_grpo(out, model, tok, cfg, torch.device("cpu"), quiet=True)
    rows = [r for r in Metrics(out / "metrics.jsonl").read() if "step_s" in r][1:]  # the first pays warm-up
    med = lambda k: statistics.median(k(r) for r in rows)  # noqa: E731
    return {"step_s": med(lambda r: r["step_s"]), "sample_s": med(lambda r: r["sample_s"]),
            "train_s": med(lambda r: r["step_s"] - r["sample_s"]),
            "pass1": last["eval"][cfg.tasks[0]]["pass@1"]}


def trl_reward(cfg):
    """rewards.reward as a TRL reward function: TRL passes the decoded completions, their ids and the
    dataset's other columns (answer, numbers) as keyword arguments."""
    import rewards

    def add_reward(completions, completion_ids, answer, numbers, **_):
        return [rewards.reward(c, a, n or None, format_weight=cfg.format_weight,
                               consistency_weight=cfg.consistency_weight, completion_len=len(ids),
                               max_len=cfg.max_completion_length, overlong_cache=cfg.overlong_cache)[0]
                for c, ids, a, n in zip(completions, completion_ids, answer, numbers)]
    return add_reward


def trl_args(trl, cfg, out: Path):
    """TRL's GRPOConfig with our settings: one generation batch of B x G samples per optimizer step,
    a constant learning rate, our AdamW betas, CPU fp32, no logging, saving or reporting."""
    with warnings.catch_warnings():  # a transformers 5 deprecation notice about a field we do not set
        warnings.simplefilter("ignore", FutureWarning)
        return trl.GRPOConfig(
            output_dir=str(out), use_cpu=True, bf16=False, fp16=False, report_to="none", disable_tqdm=True,
            logging_strategy="no", save_strategy="no", log_completions=False, seed=cfg.seed, max_steps=cfg.steps,
            per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations, gradient_accumulation_steps=1,
            steps_per_generation=1, num_generations=cfg.num_generations, num_iterations=cfg.num_iterations,
            max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
            learning_rate=cfg.learning_rate, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9,
            adam_beta2=0.99, weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, beta=cfg.beta,
            epsilon=cfg.epsilon, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, shuffle_dataset=False,
            mask_truncated_completions=cfg.mask_truncated_completions, dataloader_num_workers=0)


def run_trl(base: Path, cfg, tmp: Path) -> dict:
    """TRL's GRPOTrainer from the exported `base`: {"step_s", "sample_s", "train_s", "pass1"}."""
    import datasets
    import transformers
    from train_grpo import rollout_problems

    trl = _trl()
    _, tok, _ = load_run(base)
    hf = load_hf(base, tmp / "hf")
    # stop where ours stops: "</answer>" (kept, scored) or EOS; TRL masks after the first of its eos ids
    stop = tok.encode("</answer>")
    if len(stop) != 1:
        raise R1Error(f"the run's tokenizer writes </answer> as {len(stop)} tokens: TRL can stop only at one token")
    hf.generation_config.eos_token_id = [tok.eos_id, *stop]
    problems = [p for step in range(cfg.steps) for p in rollout_problems(cfg, step)]  # ours, in order
    data = datasets.Dataset.from_list([{"prompt": BOS + prompt(p), "answer": p.answer,
                                        "numbers": list(p.numbers or [])} for p in problems])
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp / "hf")
    step_s, sample_s = [], []
    original = hf.generate

    def timed_generate(*a, **kw):  # TRL's sampling time: its calls of generate
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            sample_s.append(time.perf_counter() - t)
    hf.generate = timed_generate

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_s.append(time.perf_counter() - self.t)

    with warnings.catch_warnings():  # transformers 5 deprecation notices TRL's calls trigger, once a step
        warnings.simplefilter("ignore", FutureWarning)
        trainer = trl.GRPOTrainer(model=hf, reward_funcs=trl_reward(cfg), args=trl_args(trl, cfg, tmp / "trl"),
                                  train_dataset=data, processing_class=hf_tok, callbacks=[StepTimer()])
        trainer.remove_callback(transformers.PrinterCallback)  # its end-of-training dict of metrics
        trainer.train()
    if len(step_s) != cfg.steps or len(sample_s) != cfg.steps:
        raise R1Error(f"TRL made {len(step_s)} steps with {len(sample_s)} generate calls, not {cfg.steps} "
                      f"of one each: the race settings no longer mean one generation per step in this TRL")
    # back to our format (transformers' save drops nothing we evaluate) and our evaluation protocol
    hf.generate = original
    trainer.model.save_pretrained(tmp / "trl-hf")
    tok.save(tmp / "trl-hf" / "tokenizer.json")
    model, tok, _ = load_run(import_hf(tmp / "trl-hf", tmp / "trl-run"))
    med = lambda xs: statistics.median(xs[1:])  # noqa: E731
    return {"step_s": med(step_s), "sample_s": med(sample_s),
            "train_s": med([a - b for a, b in zip(step_s, sample_s)]), "pass1": held_out(model, tok, cfg)}


def cmd_grpo(args) -> None:
    trl = _trl()  # before anything slow
    _transformers()
    if args.steps < 2:
        raise R1Error("--steps must be >= 2 (the first step is warm-up and not counted)")
    cfg = grpo_config(args.steps, args.eval_n)
    base = Path(args.run)
    model, tok, _ = load_run(base)
    cfg.check_fits(model.cfg)
    base_pass1 = held_out(model, tok, cfg)
    with tempfile.TemporaryDirectory(prefix="r1-race-") as tmp:
        ours = run_ours(base, cfg, Path(tmp) / "ours")
        theirs = run_trl(base, cfg, Path(tmp))
    print(f"grpo race: ours (train_grpo) vs TRL {trl.__version__} GRPOTrainer, base {base}, task add, "
          f"{cfg.steps} steps of {cfg.prompts_per_step} x {cfg.num_generations} samples, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'':<6}{'s/step':>8}{'sampling':>10}{'training':>10}{'pass@1':>8}")
    for name, r in (("ours", ours), ("TRL", theirs)):
        print(f"{name:<6}{r['step_s']:>8.2f}{r['sample_s']:>10.2f}{r['train_s']:>10.2f}{r['pass1']:>8.3f}")
    print(f"TRL/ours s/step: {theirs['step_s'] / ours['step_s']:.2f}x (sampling "
          f"{theirs['sample_s'] / ours['sample_s']:.2f}x, training {theirs['train_s'] / ours['train_s']:.2f}x); "
          f"base pass@1 {base_pass1:.3f}")
    print(f"(medians over steps 2..{cfg.steps}; ours' sampling includes scoring, TRL's is its generate calls; "
          f"pass@1: {cfg.eval_n} held-out add problems x {cfg.eval_k} samples, T 0.6, top-p 0.95, our sampler)")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from r1 import Parser

    parser = Parser(prog="-m tools.race", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="sampler.generate vs transformers' generate")
    g.add_argument("--run", default=None, help="a trained run (default: a random-weight tiny model)")
    g.add_argument("--batches", type=int, nargs="+", default=list(GenerateRace.batches))
    g.add_argument("--new-tokens", type=int, default=GenerateRace.new_tokens)
    g.add_argument("--repeats", type=int, default=GenerateRace.repeats)
    g.add_argument("--stop", action="store_true", help="rows end at EOS or </answer> on both sides, as real "
                                                      "answers do (tok/s counts the tokens before the stop)")
    g.set_defaults(fn=cmd_generate)
    r = sub.add_parser("grpo", help="train_grpo vs TRL's GRPOTrainer (needs requirements-race.txt)")
    r.add_argument("--run", required=True, help="the base run both start from")
    r.add_argument("--steps", type=int, default=30)
    r.add_argument("--eval-n", type=int, default=100, help="held-out problems for pass@1")
    r.set_defaults(fn=cmd_grpo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (R1Error, OSError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
