"""A third-party producer: realtime RPC to an Ember worker with pika, following docs/protocol.md's wire
protocol to the letter. Usage: pika_rpc.py AMQP_URL MODEL INPUTS [json|binary] [binary-out], where
INPUTS is the JSON list of Open Inference Protocol input tensors (FP32 with "binary": sent as binary
tensor data, the JSON header's length in the inference-header-content-length header; with
"binary-out": every output asked for as binary data, and the framed reply read here). Prints the
reply's correlation id, error code header, whether it was framed, and its body (binary outputs
turned into "data") as one JSON line."""
import json
import struct
import sys

import pika

FORMATS = {"FP32": "f", "INT64": "q", "INT32": "i", "FP64": "d"}

url, model, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
binary_in, binary_out = sys.argv[4:5] == ["binary"], "binary-out" in sys.argv[5:]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
replies = []
channel.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, props, body: replies.append((props, body)), auto_ack=True)
headers = {"ember-model": model, "ember-model-version": "production", "ember-lane": "realtime"}
binary = b""
if binary_in:
    for tensor in inputs:
        data = struct.pack(f"<{len(tensor['data'])}f", *tensor.pop("data"))
        tensor["parameters"] = {"binary_data_size": len(data)}
        binary += data
request = {"id": "py-1", "inputs": inputs}
if binary_out:
    request["parameters"] = {"binary_data_output": True}
header = json.dumps(request).encode()
if binary:
    headers["inference-header-content-length"] = len(header)
properties = pika.BasicProperties(
    message_id="py-1", correlation_id="py-corr", reply_to="amq.rabbitmq.reply-to",
    content_type="application/json", delivery_mode=2, headers=headers,
)
channel.basic_publish("", f"ember.{model}.realtime", header + binary, properties)
for _ in range(60):
    if replies:
        break
    connection.process_data_events(time_limit=1)
props, body = replies[0]
length = (props.headers or {}).get("inference-header-content-length")
reply = json.loads(body[:length] if length is not None else body)
rest = body[length:] if length is not None else b""
for output in reply.get("outputs", []):
    size = output.get("parameters", {}).get("binary_data_size")
    if size is not None:
        code = FORMATS[output["datatype"]]
        output["data"] = list(struct.unpack(f"<{size // struct.calcsize(code)}{code}", rest[:size]))
        rest = rest[size:]
assert rest == b"", f"{len(rest)} bytes no output claims"
print(json.dumps({
    "correlation_id": props.correlation_id,
    "error_code": (props.headers or {}).get("ember-error-code"),
    "framed": length is not None,
    "reply": reply,
}))
connection.close()
