"""report.md from the report's data: sections a person reads."""

import onnx
from onnx import TensorProto, helper

from edgec.runtimes import qnn_htp
from edgec.toolchain.report import MAX_ROWS, npu_section


def test_htp_section_lists_many_rejected_nodes(tmp_path):
    """A graph the HTP rejects in many places still renders (the case the coverage report exists for)."""
    n = MAX_ROWS + 5
    nodes = [helper.make_node("Erf", [f"x{i}"], [f"x{i + 1}"], name=f"erf{i}") for i in range(n)]
    graph = helper.make_graph(nodes, "erfs", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "erfs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    cov = qnn_htp.coverage(path)
    assert len(cov.unsupported) == n and not cov.runs_fully
    report = {"npu": {"backend": "qnn-htp", **cov.to_dict(), "coverage": cov.fraction, "integer_only": False,
                      "integer_violations": [], "int16_tensors": []}, "precision": {"int16_why": None}}
    text = "\n".join(npu_section(report))
    assert "runs whole on the HTP: no" in text
    assert sum(f"| erf{i} | Erf |" in text for i in range(n)) == MAX_ROWS
    assert "... and 5 more in report.json." in text
