"""A third-party producer with pika: sends each Open Inference Protocol request of a JSON Lines file
(stdin) to an Ember worker's realtime queue at once, following docs/protocol.md's wire protocol, and
collects every answer through direct reply-to. Usage: pika_labels.py AMQP_URL MODEL OUTPUT < requests.jsonl.
Prints one JSON object: each request's id to the first value of output OUTPUT in its answer (or to
the error code the worker answered with)."""
import json
import sys
import time

import pika

url, model, wanted = sys.argv[1:4]
requests = [line for line in sys.stdin.read().splitlines() if line.strip()]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
answers = {}


def on_reply(_channel, _method, properties, body):
    code = (properties.headers or {}).get("ember-error-code")
    if code is not None:
        answers[properties.correlation_id] = {"error": code, "body": body.decode()}
        return
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    answers[properties.correlation_id] = outputs[wanted]["data"][0]


channel.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
headers = {"ember-model": model, "ember-model-version": "production", "ember-lane": "realtime"}
for body in requests:
    request_id = json.loads(body)["id"]
    properties = pika.BasicProperties(
        message_id=request_id, correlation_id=request_id, reply_to="amq.rabbitmq.reply-to",
        content_type="application/json", delivery_mode=2, headers=headers,
    )
    channel.basic_publish("", f"ember.{model}.realtime", body.encode(), properties)
# process_data_events returns as soon as it has handled some events: wait on a deadline instead.
deadline = time.monotonic() + 120
while len(answers) < len(requests) and time.monotonic() < deadline:
    connection.process_data_events(time_limit=1)
print(json.dumps(answers))
connection.close()
