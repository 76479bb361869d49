"""Tests for bench.py: what `r1.py bench` prints is sane whatever CPU runs it (MFU at most 100%, no MFU
against a bf16 peak that is not a fast path), the machine line, and that CPU training stays fp32.

The measurements are stubbed (matmul timings, training steps), so the machine the tests run on never
shows through. Three stand-ins, measured on this repo's machines: a Zen 3 without native bf16
(bf16 540x slower than fp32), an Intel Xeon with avx512_bf16 but no AMX (bf16 at half of fp32) and a
Zen 4 with fast bf16 (2.2x fp32). Hermetic, CPU-only, a few seconds.
"""
import re

import pytest
import torch


from tools import bench  # noqa: E402
import runs  # noqa: E402
from model import flops_per_token  # noqa: E402

FP32, BF16 = torch.float32, torch.bfloat16
ZEN3 = {FP32: 179.0, BF16: 0.33}  # GFLOP/s
XEON = {FP32: 160.0, BF16: 83.0}
ZEN4 = {FP32: 187.0, BF16: 416.0}
ROWS = ("tiny", "small", "tiny, dense of equal width", "small, dense of equal width")


def run_bench_train(monkeypatch, capsys, peaks: dict, mfu: float = 0.28) -> tuple[list[str], list]:
    """bench_train's printed lines on a machine with these matmul peaks, and the dtypes it trained in.
    Every stubbed training run reaches `mfu` of the fp32 peak (bf16 autocast: 1.2x that)."""
    trained = []

    def train_throughput(cfg, compile=False, dtype=FP32):
        trained.append(dtype)
        fpt = flops_per_token(cfg, 80)
        gflops = mfu * peaks[FP32] * (1.2 if dtype == BF16 else 1.0)
        return {"tokens_per_s": gflops * 1e9 / fpt, "flops_per_token": fpt, "gflops": gflops}

    monkeypatch.setattr(bench, "matmul_peaks", lambda dtypes: {d: peaks[d] for d in dtypes})
    monkeypatch.setattr(bench, "train_throughput", train_throughput)
    bench.bench_train()
    return capsys.readouterr().out.splitlines(), trained


def table(lines: list[str]) -> dict[str, list[float]]:
    """{row name: its MFU percentages} of the training table."""
    return {name: [float(p) for p in re.findall(r"(\d+\.\d)%", line)]
            for line in lines for name in ROWS if re.match(re.escape(name) + r"\s+\d", line)}


@pytest.mark.parametrize("peaks, explanation", [
    (ZEN3, "bf16: no fast path here (0.33 GFLOP/s, 542x slower than fp32): MFU shown against fp32 only"),
    (XEON, "bf16: no fast path here (83 GFLOP/s, 1.9x slower than fp32): MFU shown against fp32 only"),
], ids=["zen3", "xeon"])
def test_bench_without_bf16_fast_path_shows_fp32_mfu_only(monkeypatch, capsys, peaks, explanation):
    lines, trained = run_bench_train(monkeypatch, capsys, peaks)
    assert lines[0].startswith("machine: ") and "threads" in lines[0]
    assert [l for l in lines if "bf16" in l and "fast path" in l] == [explanation]  # one line says why
    header = next(l for l in lines if l.startswith("model"))
    assert "MFU fp32" in header and "MFU bf16" not in header
    rows = table(lines)
    assert sorted(rows) == sorted(ROWS)
    assert all(mfu == [pytest.approx(28.0)] for mfu in rows.values())  # one MFU a row: against fp32
    assert trained == [FP32] * 4  # never trains in bf16 where it is slower (on a Zen 3: for hours)
    assert not any("autocast" in l for l in lines)


def test_bench_with_fast_bf16_shows_both_mfus_and_autocast_speed(monkeypatch, capsys):
    lines, trained = run_bench_train(monkeypatch, capsys, ZEN4)
    assert "matmul peak: fp32 187 GFLOP/s, bf16 416 GFLOP/s" in lines
    assert not any("fast path" in l for l in lines)
    header = next(l for l in lines if l.startswith("model"))
    assert header.index("MFU fp32") < header.index("MFU bf16")
    rows = table(lines)
    assert sorted(rows) == sorted(ROWS)
    assert all(mfu == [pytest.approx(28.0), pytest.approx(28.0 * 187 / 416, abs=0.05)] for mfu in rows.values())
    assert trained == [FP32] * 4 + [BF16] * 2  # tiny and small once more, under bf16 autocast
    autocast = [l for l in lines if l.startswith("bf16 autocast training: ")]
    assert len(autocast) == 1 and autocast[0].count("(1.20x fp32)") == 2


@pytest.mark.parametrize("peaks", [ZEN3, XEON, ZEN4], ids=["zen3", "xeon", "zen4"])
def test_bench_mfu_never_over_100_percent(monkeypatch, capsys, peaks):
    lines, _ = run_bench_train(monkeypatch, capsys, peaks)
    mfus = [m for row in table(lines).values() for m in row]
    assert mfus and all(0 < m <= 100 for m in mfus)
    assert not any(l.startswith("MFU over 100%") for l in lines)


def test_bench_says_when_load_made_mfu_exceed_100_percent(monkeypatch, capsys):
    """The peak measured while another process held a core, the training measured after it left."""
    lines, _ = run_bench_train(monkeypatch, capsys, ZEN3, mfu=1.3)
    assert all(mfu == [pytest.approx(130.0)] for mfu in table(lines).values())
    assert [l for l in lines if l.startswith("MFU over 100%")] == [
        "MFU over 100%: the fp32 peak was measured under more load than the training; rerun on a quiet machine"]


def test_matmul_peaks_time_a_slow_path_on_a_small_product(monkeypatch):
    """A 2048^3 bf16 product at 0.33 GFLOP/s takes 52 s; the slow path is measured at 256^3 (0.1 s) and
    the fast one at the full 2048^3, both giving their true speed."""
    sizes = {FP32: set(), BF16: set()}

    def product_seconds(a, b):
        sizes[a.dtype].add(a.shape[0])
        return 2 * a.shape[0] ** 3 / (ZEN3[a.dtype] * 1e9)

    monkeypatch.setattr(bench, "_product_seconds", product_seconds)
    peaks = bench.matmul_peaks((FP32, BF16))
    assert peaks == {FP32: pytest.approx(179.0), BF16: pytest.approx(0.33)}
    assert sizes == {FP32: {256, 2048}, BF16: {256}}  # the 256^3 probe, then the measured size


ZEN3_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2 sha_ni
"""
SPR_CPUINFO = """model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 bf16 sve i8mm
CPU part\t: 0xd40
"""


@pytest.mark.parametrize("text, model, flags", [
    (ZEN3_CPUINFO, "AMD EPYC 7B13", ["avx2"]),
    (SPR_CPUINFO, "Intel(R) Xeon(R) Platinum 8481C", ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"]),
    (ARM_CPUINFO, None, ["asimd", "sve", "bf16"]),
])
def test_parse_cpuinfo(text, model, flags):
    assert bench.parse_cpuinfo(text) == (model, flags)


def test_machine_line(tmp_path):
    (tmp_path / "cpuinfo").write_text(ZEN3_CPUINFO)
    line = bench.machine(tmp_path / "cpuinfo")
    assert line.startswith("AMD EPYC 7B13, avx2 (torch kernels: ")
    assert f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average " in line
    assert "ISA flags unknown (no /proc/cpuinfo)" in bench.machine(tmp_path / "missing")  # macOS, Windows


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_training_and_sampling_off_cuda_stay_fp32(device):
    """runs.autocast is what training and sampling run under: off CUDA it never switches to bf16 (slower
    than fp32 for these models on every CPU measured, see runs.autocast)."""
    with runs.autocast(torch.device(device)):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == FP32


def test_decode_flops_equal_the_counted_matmuls():
    """model.decode_flops (the decode roofline's numerator) against torch's own count of the matmul FLOPs
    one absorbed decode step runs (FlopCounterMode), for a MoE and a dense model with low-rank queries."""
    from torch.utils.flop_counter import FlopCounterMode

    from model import build_model, decode_flops, preset

    for cfg in (preset("tiny", vocab_size=40), preset("small", vocab_size=40, n_routed_experts=0, mtp_depth=0)):
        model = build_model(cfg, seed=0).eval()
        B, cached = 5, 7
        cache = model.new_cache(B, cached + 1)
        with torch.no_grad():
            model(torch.randint(cfg.vocab_size, (B, cached)), cache=cache)
            with FlopCounterMode(display=False) as counter:
                model(torch.randint(cfg.vocab_size, (B, 1)), cache=cache)
        assert counter.get_total_flops() == decode_flops(cfg, B, cached)


def test_decode_step_and_grpo_step_report(capsys):
    r = bench.decode_step(bench.build_model(bench.preset("tiny", vocab_size=40), seed=0), batch=3, cached=5, reps=1)
    assert r["seconds"] > 0 and r["flops"] == bench.decode_flops(bench.preset("tiny", vocab_size=40), 3, 5)
    bench.bench_grpo(steps=1, prompts_per_step=2, num_generations=2, max_completion_length=4)
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"grpo step \(random tiny model, 2 prompts x 2 samples, \d+ tokens a completion\): "
                        r"[\d.]+ s = sampling [\d.]+ s \+ training [\d.]+ s", line), line


def test_speculative_report_on_a_model():
    from data import default_tokenizer

    tok = default_tokenizer()
    model = bench.build_model(bench.preset("tiny", vocab_size=tok.vocab_size), seed=0)
    prompts = [tok.encode("User: 12+30", bos=True), tok.encode("User: 7+5", bos=True)]
    r = bench.bench_speculative(model, tok, prompts)
    assert r["identical"] and 0 <= r["acceptance"] <= 1 and r["tokens"] > 0
    assert r["verify"] > 0 and r["draft"] > 0 and r["ceiling"] == pytest.approx((1 + r["acceptance"]) / (r["verify"] + r["draft"]))
