"""An Open Inference Protocol V2 HTTP client that is not Ember's: NVIDIA's tritonclient.

Usage: triton_http.py HOST:PORT MODEL PIXELS_JSON
Checks health and metadata, then asks for one 8x8 digit every way the binary tensor data
extension allows: JSON both ways, tritonclient's defaults (binary both ways, with outputs named
and without), JSON in and binary out, binary in and JSON out, gzip and deflate bodies. Checks each
response's outputs came as asked, and prints {"id", "labels", "inputs", "extensions"} as JSON,
one label per way.
"""

import json
import sys

import numpy as np
import tritonclient.http as http

url, model, pixels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = http.InferenceServerClient(url=url)
assert client.is_server_live(), "server live"
assert client.is_server_ready(), "server ready"
assert client.is_model_ready(model), "model ready"
metadata = client.get_model_metadata(model)
server = client.get_server_metadata()
pixels_array = np.array([pixels], dtype=np.float32)

# (input binary, requested outputs as [(name, binary)] or None for all by default, compression)
WAYS = [
    (False, [("label", False)], None),
    (True, [("label", True)], None),
    (True, None, None),
    (False, [("label", True)], None),
    (True, [("label", False)], None),
    (True, [("label", True), ("probabilities", False)], "gzip"),
    (False, [("label", False)], "deflate"),
]

labels = []
for binary_input, requested, compression in WAYS:
    digit = http.InferInput("input", [1, 64], "FP32")
    digit.set_data_from_numpy(pixels_array, binary_data=binary_input)
    outputs = None
    if requested is not None:
        outputs = [http.InferRequestedOutput(n, binary_data=b) for n, b in requested]
    result = client.infer(
        model,
        [digit],
        outputs=outputs,
        request_id="triton-1",
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    response = result.get_response()
    way = (binary_input, requested, compression)
    assert response["id"] == "triton-1", response
    # Without outputs named, tritonclient asks for all of them as binary data.
    expected = requested or [("probabilities", True), ("label", True)]
    expected.sort(key=lambda o: ["probabilities", "label"].index(o[0]))
    for output, (name, binary) in zip(response["outputs"], expected, strict=True):
        assert output["name"] == name, (way, response)
        is_binary = "binary_data_size" in output.get("parameters", {})
        assert is_binary == binary and ("data" in output) != binary, (way, response)
    labels.append(int(result.as_numpy("label")[0]))
print(
    json.dumps(
        {
            "id": "triton-1",
            "labels": labels,
            "inputs": metadata["inputs"],
            "extensions": server["extensions"],
        }
    )
)
