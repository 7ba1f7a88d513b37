"""An Open Inference Protocol V2 HTTP client that is not Ember's: NVIDIA's tritonclient.

Usage: triton_http.py HOST:PORT MODEL PIXELS_JSON
Checks health and metadata, asks for the `label` output of one 8x8 digit, and prints
{"id", "label", "inputs"} as JSON.
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

digit = http.InferInput("input", [1, 64], "FP32")
digit.set_data_from_numpy(np.array([pixels], dtype=np.float32), binary_data=False)
label = http.InferRequestedOutput("label", binary_data=False)
result = client.infer(model, [digit], outputs=[label], request_id="triton-1")
response = result.get_response()
assert [o["name"] for o in response["outputs"]] == ["label"], response
print(json.dumps({
    "id": response["id"],
    "label": int(result.as_numpy("label")[0]),
    "inputs": metadata["inputs"],
}))
