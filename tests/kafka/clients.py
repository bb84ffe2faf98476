"""Real Kafka clients against keeld's Kafka listener, driven by tests/tests/kafka_clients.rs.

Each command prints one JSON document on stdout. Records are made by `record(i)`, which the
Rust test computes the same way, so that both sides check byte identity independently.
"""
import json
import sys
import time


def record(i):
    key = b"key-%d-" % i + bytes([0xFF, 0x00, i % 256])
    value = bytes((i * 7 + j) % 256 for j in range(1 + (i * 37) % 3000))
    headers = [("n", str(i).encode()), ("bin", bytes([0, 1, 0xFE]))]
    return key, value, headers, 1_700_000_000_000 + i


def hexed(b):
    return None if b is None else b.hex()


def produce_kafka_python(bootstrap, topic, n):
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = []
    for i in range(n):
        key, value, headers, ts = record(i)
        futures.append(
            producer.send(topic, key=key, value=value, headers=headers, partition=i % 2, timestamp_ms=ts)
        )
    producer.flush()
    acked = []
    for i, f in enumerate(futures):
        meta = f.get(timeout=30)
        acked.append([i, meta.partition, meta.offset])
    producer.close()
    return {"acked": acked}


def produce_confluent(bootstrap, topic, n):
    from confluent_kafka import Producer

    # batch.size below the tests' keeld's max_batch_bytes (256 KiB), as a Kafka user sets it
    # below the broker's message.max.bytes.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "acks": "all", "batch.size": 200000}
    )
    acked, failed = [], []

    def done(i):
        def report(err, msg):
            if err is None:
                acked.append([i, msg.partition(), msg.offset()])
            else:
                failed.append([i, str(err)])

        return report

    for i in range(n):
        key, value, headers, ts = record(i)
        producer.produce(topic, key=key, value=value, headers=headers, partition=i % 2, timestamp=ts, on_delivery=done(i))
        producer.poll(0)
    left = producer.flush(30)
    return {"acked": acked, "failed": failed, "unflushed": left}


def consume_kafka_python(bootstrap, topic, partitions, n):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, consumer_timeout_ms=20000)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out = []
    for m in consumer:
        out.append([m.partition, m.offset, hexed(m.key), hexed(m.value), [[k, hexed(v)] for k, v in m.headers], m.timestamp])
        if len(out) >= n:
            break
    consumer.close()
    return {"records": out}


def consume_confluent(bootstrap, topic, partitions, n):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, errors = [], []
    deadline = time.time() + 20
    while len(out) < n and time.time() < deadline:
        m = consumer.poll(0.2)
        if m is None:
            continue
        if m.error():
            errors.append(str(m.error()))
            continue
        headers = [[k, hexed(v)] for k, v in (m.headers() or [])]
        out.append([m.partition(), m.offset(), hexed(m.key()), hexed(m.value()), headers, m.timestamp()[1]])
    consumer.close()
    return {"records": out, "errors": errors}


def main():
    command, bootstrap, topic = sys.argv[1:4]
    rest = [int(a) for a in sys.argv[4:]]
    result = {
        "produce-kafka-python": produce_kafka_python,
        "produce-confluent": produce_confluent,
        "consume-kafka-python": consume_kafka_python,
        "consume-confluent": consume_confluent,
    }[command](bootstrap, topic, *rest)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
