"""Names a file format's writer (an exporter) and its readers (runtimes, the toolchain) must agree on.

Kept free of heavy imports, so a runtime that reads a format loads nothing of the exporter that wrote it.
"""

CHUNKED_KIND = "decoder-chunked"  # the contract "kind" of exporters/onnx_decoder_npu's static graph
SPEC_FILE = "stages.json"  # what exporters/onnx_stages writes beside the stage graphs
