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


def produce_kafka_python(bootstrap, topic, n, codec=None):
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=codec)
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


def produce_confluent(bootstrap, topic, n, codec="none"):
    from confluent_kafka import Producer

    # batch.size below the tests' keeld's max_batch_bytes (256 KiB), as a Kafka user sets it
    # below the broker's message.max.bytes.
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "acks": "all",
            "batch.size": 200000,
            "compression.type": codec,
        }
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


def group_rebalance(bootstrap, topic, n):
    """Two librdkafka consumers in one group: the first alone, then both (a rebalance), until
    every record of the topic was consumed; each commits what it consumed."""
    from confluent_kafka import Consumer

    def member(name):
        assigned = []

        def on_assign(consumer, partitions):
            assigned.append(sorted(p.partition for p in partitions))

        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "g",
                "client.id": name,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }
        )
        c.subscribe([topic], on_assign=on_assign)
        return c, assigned

    seen = {}
    errors = []
    refused = []

    def poll(c, name):
        m = c.poll(0.1)
        if m is None:
            return
        if m.error():
            errors.append(str(m.error()))
            return
        seen.setdefault((m.partition(), m.offset()), []).append(name)
        try:
            c.commit(message=m, asynchronous=False)
        except Exception as e:  # refused during a rebalance: the record comes again
            refused.append(str(e))

    a, a_assigned = member("a")
    deadline = time.time() + 60
    while len(seen) < n // 4 and time.time() < deadline:
        poll(a, "a")
    b, b_assigned = member("b")
    while len(seen) < n and time.time() < deadline:
        poll(a, "a")
        poll(b, "b")
    a.close()
    b.close()
    return {
        "seen": [[p, o, names] for (p, o), names in sorted(seen.items())],
        "a_assigned": a_assigned,
        "b_assigned": b_assigned,
        "errors": errors,
        "refused_commits": len(refused),
    }


def group_resume(bootstrap, topic, partitions, wait_s):
    """A new member of group "g": the offsets it starts from, and what it consumes in wait_s."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    committed = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
    c.subscribe([topic])
    got = []
    deadline = time.time() + wait_s
    while time.time() < deadline:
        m = c.poll(0.1)
        if m is not None and not m.error():
            got.append([m.partition(), m.offset()])
    c.close()
    return {"committed": [[tp.partition, tp.offset] for tp in committed], "consumed": got}


def produce_spread(bootstrap, topic, n, partitions, first):
    """Records first..first+n over `partitions` partitions, acks=all."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    acked = []
    for i in range(first, first + n):
        producer.produce(topic, value=b"%d" % i, partition=i % partitions, on_delivery=lambda e, m: acked.append(e is None))
    producer.flush(30)
    return {"acked": sum(acked)}


def offsets(bootstrap, topic, partitions, ts):
    """ListOffsets through kafka-python: earliest, latest, and the first at or after ts."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    at = c.offsets_for_times({tp: ts for tp in tps})
    out = {
        "earliest": [c.beginning_offsets(tps)[tp] for tp in tps],
        "latest": [c.end_offsets(tps)[tp] for tp in tps],
        "at": [None if at[tp] is None else [at[tp].offset, at[tp].timestamp] for tp in tps],
    }
    c.close()
    return out


def produce_through_restarts(bootstrap, topic, n):
    """An idempotent librdkafka producer sending records 0..n-1 (value: the number) at a steady
    pace over two partitions while keeld is killed and restarted under it; retries until each is
    acknowledged or two minutes pass."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 120000,
            "retry.backoff.ms": 50,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        }
    )
    acked, failed = [], []

    def report(err, msg):
        if err is None:
            acked.append(int(msg.value()))
        else:
            failed.append(str(err))

    for i in range(n):
        while True:
            try:
                producer.produce(topic, value=b"%d" % i, partition=i % 2, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20 == 19:
            producer.poll(0.005)
    left = producer.flush(130)
    return {"acked": sorted(acked), "failed": failed[:5], "failed_count": len(failed), "unflushed": left}


def configs(bootstrap, topic):
    """DescribeConfigs, AlterConfigs and IncrementalAlterConfigs through librdkafka's admin."""
    import warnings

    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})
    out = {}
    for kind, name, key in [(ResourceType.TOPIC, topic, "topic"), (ResourceType.BROKER, "0", "broker")]:
        for res, f in admin.describe_configs([ConfigResource(kind, name)]).items():
            out[key] = {k: v.value for k, v in f.result().items()}
    for res, f in admin.describe_configs([ConfigResource(ResourceType.TOPIC, "no-such-topic")]).items():
        try:
            f.result()
            out["unknown"] = "described"
        except Exception as e:
            out["unknown"] = e.args[0].name()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        altered = admin.alter_configs([ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "1000"})])
    for res, f in altered.items():
        try:
            f.result()
            out["alter"] = "altered"
        except Exception as e:
            out["alter"] = e.args[0].name()
    entry = ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    for res, f in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])]).items():
        try:
            f.result()
            out["incremental"] = "altered"
        except Exception as e:
            out["incremental"] = e.args[0].name()
    return out


def main():
    command, bootstrap, topic = sys.argv[1:4]
    rest = [int(a) if a.lstrip("-").isdigit() else a for a in sys.argv[4:]]
    result = {
        "produce-kafka-python": produce_kafka_python,
        "produce-confluent": produce_confluent,
        "consume-kafka-python": consume_kafka_python,
        "consume-confluent": consume_confluent,
        "group-rebalance": group_rebalance,
        "group-resume": group_resume,
        "produce-spread": produce_spread,
        "offsets": offsets,
        "produce-through-restarts": produce_through_restarts,
        "configs": configs,
    }[command](bootstrap, topic, *rest)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
