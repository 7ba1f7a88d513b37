"""Writes the body NVIDIA's tritonclient.http sends for a request with binary tensors (its
default): the JSON header's length on the first line of stderr, the body on stdout. Every
datatype Ember reads is there, with values the Rust side recomputes (tests/binary_framing.rs).
"""
import sys

import numpy as np
import tritonclient.http as httpclient


def tensor(name, array, datatype, binary=True):
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


inputs = [
    tensor("fp32", np.arange(64, dtype=np.float32).reshape(1, 64) / 8, "FP32"),
    tensor("fp16", np.array([[0.5, -2.0, 65504.0]], dtype=np.float16), "FP16"),
    tensor("int32", np.array([[-7, 0, 2**31 - 1]], dtype=np.int32), "INT32"),
    tensor("uint8", np.array([[0, 255]], dtype=np.uint8), "UINT8"),
    tensor("bool", np.array([[True, False]], dtype=np.bool_), "BOOL"),
    tensor("bytes", np.array([["héllo".encode(), b""]], dtype=np.object_), "BYTES"),
    tensor("json", np.array([[1.5, 2.5]], dtype=np.float32), "FP32", binary=False),
]
body, json_size = httpclient.InferenceServerClient.generate_request_body(
    inputs, request_id="triton-1"
)
print(json_size, file=sys.stderr)
sys.stdout.buffer.write(body)
