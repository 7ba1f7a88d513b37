"""A third-party producer: realtime RPC to an Ember worker with pika, following docs/protocol.md's wire
protocol to the letter. Usage: pika_rpc.py AMQP_URL MODEL INPUTS [binary], where INPUTS is the JSON
list of Open Inference Protocol input tensors (FP32 with "binary": sent as binary tensor data, the
JSON header's length in the inference-header-content-length header). Prints the reply's correlation
id, error code header and body as one JSON line."""
import json
import struct
import sys

import pika

url, model, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
replies = []
channel.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, props, body: replies.append((props, body)), auto_ack=True)
headers = {"ember-model": model, "ember-model-version": "production", "ember-lane": "realtime"}
binary = b""
if sys.argv[4:] == ["binary"]:
    for tensor in inputs:
        data = struct.pack(f"<{len(tensor['data'])}f", *tensor.pop("data"))
        tensor["parameters"] = {"binary_data_size": len(data)}
        binary += data
header = json.dumps({"id": "py-1", "inputs": inputs}).encode()
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
print(json.dumps({
    "correlation_id": props.correlation_id,
    "error_code": (props.headers or {}).get("ember-error-code"),
    "reply": json.loads(body),
}))
connection.close()
