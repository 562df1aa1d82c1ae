"""The events topic read as a stranger reads it: confluent-kafka for the
messages, the CloudEvents SDK for their attributes (Kafka binary content
mode), jsonschema for the AsyncAPI document's schemas. Run by
`cargo xtask contract` after schemathesis has filled the topic; it first
writes a few commands of its own so that every kind of stream (and sealed
personal data) is on it whatever the fuzzing did.

Exits non-zero, naming each message, when any message breaks the contract.
"""

import argparse
import collections
import json
import sys
import time
import urllib.request
import uuid

import jsonschema
from cloudevents.core.bindings import kafka as ce_kafka
from confluent_kafka import Consumer, TopicPartition


def command(base, token, path, body):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def write_known_events(base, token):
    """Customers, products and orders, personal data, claims: what the
    topic must carry for the check to mean something. Answers the last
    position written."""
    tag = uuid.uuid4().hex[:12]
    address = {"line1": "1 Contract Way", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    customer = command(base, token, "/v1/customers", {"email": f"contract-{tag}@example.com", "name": "Ada", "shipping_address": address})
    product = command(
        base,
        token,
        "/v1/products",
        {"sku": f"CONTRACT-{tag}", "name": "Contract lamp", "description": "", "category": "lamps",
         "price": {"amount_minor": 1999, "currency": "EUR"}, "initial_stock": 5},
    )
    command(base, token, f"/v1/products/{product['id']}/price", {"price": {"amount_minor": 2499, "currency": "EUR"}})
    command(base, token, "/v1/orders", {"customer_id": customer["id"], "lines": [{"product_id": product["id"], "quantity": 2}], "shipping_address": address})
    command(base, token, f"/v1/customers/{customer['id']}/email", {"email": f"contract-{tag}-2@example.com"})
    last = command(base, token, f"/v1/customers/{customer['id']}/forget", {})
    return last["position"]


def read_topic(brokers, topic, last_position, deadline_s=120):
    """Every message of the topic up to the partitions' ends, once the
    relay has published `last_position`."""
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "contract-" + uuid.uuid4().hex,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages, seen_last, ends = [], False, None
    started = time.monotonic()
    while True:
        if time.monotonic() - started > deadline_s:
            sys.exit(f"the topic did not carry position {last_position} within {deadline_s} s")
        message = consumer.poll(0.5)
        if message is not None:
            if message.error():
                sys.exit(f"consuming {topic}: {message.error()}")
            messages.append(message)
            headers = dict(message.headers() or [])
            if int(headers.get("global_position", b"0")) >= last_position:
                seen_last = True
        if seen_last and ends is None:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        if ends is not None:
            done = {p: 0 for p in partitions}
            for m in messages:
                done[m.partition()] = max(done[m.partition()], m.offset() + 1)
            if all(done[p] >= ends[p] for p in partitions):
                consumer.close()
                return messages


def main():
    parser = argparse.ArgumentParser()
    for name in ["--brokers", "--topic", "--command", "--token", "--asyncapi"]:
        parser.add_argument(name, required=True)
    args = parser.parse_args()

    with open(args.asyncapi) as f:
        document = json.load(f)
    assert document["asyncapi"].startswith("3."), "an AsyncAPI 3 document"
    components = document["components"]
    by_schema_id = {schema["$id"]: schema for schema in components["schemas"].values()}
    by_type = {}
    for message in components["messages"].values():
        headers = message["headers"]
        ce_type = headers["properties"]["ce_type"]["const"]
        by_type[ce_type] = message

    last = write_known_events(args.command, args.token)
    messages = read_topic(args.brokers, args.topic, last)

    problems, counts = [], collections.Counter()
    for m in messages:
        where = f"partition {m.partition()} offset {m.offset()}"
        raw_headers = m.headers() or []
        names = [name for name, _ in raw_headers]
        if len(names) != len(set(names)):
            problems.append(f"{where}: a header appears twice: {names}")
        headers = {name: value for name, value in raw_headers}
        try:
            event = ce_kafka.from_binary_event(ce_kafka.KafkaMessage(headers=headers, key=m.key(), value=m.value()))
        except Exception as e:  # the SDK refuses what is not a CloudEvent
            problems.append(f"{where}: not a CloudEvent in binary mode: {e!r}")
            continue
        envelope = json.loads(m.value())
        ce_type = event.get_type()
        message = by_type.get(ce_type)
        if message is None:
            problems.append(f"{where}: type {ce_type} is not in the AsyncAPI document")
            continue
        text_headers = {name: value.decode() for name, value in headers.items()}
        for error in jsonschema.Draft7Validator(message["headers"], format_checker=jsonschema.FormatChecker()).iter_errors(text_headers):
            problems.append(f"{where} ({ce_type}): headers: {error.message}")
        schema = by_schema_id.get(event.get_dataschema())
        if schema is None:
            problems.append(f"{where}: dataschema {event.get_dataschema()} names no schema of the document")
            continue
        for error in jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).iter_errors(envelope):
            problems.append(f"{where} ({ce_type}): value at {list(error.absolute_path)}: {error.message}")
        expected = {
            "id": envelope["event_id"],
            "subject": envelope["stream_id"],
            "specversion": "1.0",
            "datacontenttype": "application/json",
        }
        actual = {
            "id": event.get_id(),
            "subject": event.get_subject(),
            "specversion": event.get_specversion(),
            "datacontenttype": event.get_datacontenttype(),
        }
        if expected != actual:
            problems.append(f"{where}: attributes {actual} do not name the envelope's event {expected}")
        if m.key() is None or m.key().decode() != envelope["stream_id"]:
            problems.append(f"{where}: the key is not the stream id")
        if event.get_data() != envelope:
            problems.append(f"{where}: the CloudEvent's data is not the message value")
        counts[ce_type] += 1

    for ce_type, n in sorted(counts.items()):
        print(f"  {n:6} {ce_type}")
    print(f"{len(messages)} messages on {args.topic}, {len(counts)} types, {len(problems)} problems")
    needed = {"storekeeper.CustomerRegistered.v2", "storekeeper.ProductAdded.v2", "storekeeper.OrderPlaced.v2",
              "storekeeper.CustomerForgotten.v1", "storekeeper.UniqueValueClaimed.v1"}
    missing = needed - set(counts)
    if missing:
        problems.append(f"no message of {sorted(missing)} was read: the check proved nothing about them")
    for problem in problems[:50]:
        print("  " + problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
