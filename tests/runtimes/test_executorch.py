"""The ExecuTorch session turns every refusal into a BackendError."""

import numpy as np
import pytest
import torch

from edgec.errors import BackendError
from edgec.exporters.executorch import export_pte
from edgec.runtimes.executorch import load


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory):
    path = tmp_path_factory.mktemp("pte") / "linear.pte"
    torch.manual_seed(0)
    export_pte(torch.nn.Linear(4, 3), (torch.randn(2, 4),), path, quantize=False)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(BackendError, match="no .pte file"):
        load(tmp_path / "missing.pte")


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pte"
    path.write_bytes(b"not a program" * 64)
    with pytest.raises(BackendError, match="not a valid ExecuTorch program"):
        load(path)


def test_truncated_program(tiny_pte, tmp_path):
    path = tmp_path / "truncated.pte"
    path.write_bytes(tiny_pte.read_bytes()[:200])
    with pytest.raises(BackendError, match="not a valid ExecuTorch program"):
        load(path)


def test_runs_and_copies_outputs(tiny_pte):
    session = load(tiny_pte)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (first,) = session.run({"x": x})
    kept = first.copy()
    (second,) = session.run({"x": x[::-1]})  # non-contiguous input is accepted
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("bad", [np.zeros((2, 4), np.float64), np.zeros((1, 4), np.float32), None],
                         ids=["dtype", "shape", "count"])
def test_wrong_inputs_name_the_expected_signature(tiny_pte, bad):
    inputs = {} if bad is None else {"x": bad}
    with pytest.raises(BackendError, match=r"expects .*sizes=\[2, 4\]"):
        load(tiny_pte).run(inputs)
