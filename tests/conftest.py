"""What every test file shares: one intra-op thread, the small model shape most tests build, r1.main run
in-process the way `python r1.py` runs it, and the check of r1's error contract.

One thread: the tensors here are tiny, so more threads gain nothing, and on a 2-core machine shared
with another job two OpenMP threads spin on each other (a 0.02 s forward took 2.5 s under load).
pytest.ini puts the repository root on sys.path (`pythonpath = .`), so tests import r1's modules by name.
"""
import contextlib
import io
import traceback
from types import SimpleNamespace

import torch

import r1

torch.set_num_threads(1)

# the `tiny` preset shrunk to a model that builds and trains in milliseconds
SMALL = dict(dim=32, inter_dim=64, moe_inter_dim=32, n_layers=2, n_heads=2, kv_lora_rank=16, qk_nope_head_dim=8,
             qk_rope_head_dim=8, v_head_dim=8)


def inproc(*args):
    """r1.main(argv) with its output captured, as a CompletedProcess-like namespace: what `python r1.py
    ARGS` would print and return, without starting a Python process (torch alone takes ~2 s to import)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = r1.main([str(a) for a in args])
        except SystemExit as e:  # --help
            rc = e.code
        except BaseException:  # noqa: BLE001 -- what `python r1.py` would print as a traceback
            rc = 1
            err.write(traceback.format_exc())
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def assert_error(res, *needles):
    """Exit code 2, one stderr line "error: ...", no traceback anywhere; the message names `needles`."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
