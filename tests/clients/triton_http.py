"""An Open Inference Protocol V2 HTTP client that is not Ember's: NVIDIA's tritonclient.

Usage: triton_http.py HOST:PORT MODEL PIXELS_JSON
Checks health and metadata, asks for the `label` output of one 8x8 digit as JSON and with
tritonclient's default arguments (binary tensor data), and prints {"id", "labels", "inputs"} as JSON.
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

labels = []
# JSON both ways, then tritonclient's defaults: a binary input, the output asked for as binary
# (Ember answers JSON for now, which the client reads as well).
for defaults in (False, True):
    digit = http.InferInput("input", [1, 64], "FP32")
    pixels_array = np.array([pixels], dtype=np.float32)
    if defaults:
        digit.set_data_from_numpy(pixels_array)
        label = http.InferRequestedOutput("label")
    else:
        digit.set_data_from_numpy(pixels_array, binary_data=False)
        label = http.InferRequestedOutput("label", binary_data=False)
    result = client.infer(model, [digit], outputs=[label], request_id="triton-1")
    response = result.get_response()
    assert response["id"] == "triton-1", response
    assert [o["name"] for o in response["outputs"]] == ["label"], response
    labels.append(int(result.as_numpy("label")[0]))
print(json.dumps({"id": "triton-1", "labels": labels, "inputs": metadata["inputs"]}))
