#!/usr/bin/env python3
"""Cross-checks our KPL code against aws-kinesis-agg, an independent implementation.

Used by tests/kpl_independent.rs. Two modes:

  make_agg.py              Aggregates a fixed set of user records with
                           aws_kinesis_agg's RecordAggregator and prints JSON:
                           {"generator": ..., "aggregates": [{"group",
                           "partition_key", "explicit_hash_key", "data_base64",
                           "user_records": [{"partition_key",
                           "explicit_hash_key", "data_base64"}]}]}
                           where user_records are the records that went into
                           that aggregate, in order (taken from the input, not
                           from de-aggregating).

  make_agg.py deaggregate  Reads {"records": [{"partition_key", "data_base64"}]}
                           on stdin, de-aggregates each record with
                           aws_kinesis_agg's deaggregator and prints
                           {"results": [{"aggregated": bool, "user_records":
                           [...]}]}, one result per input record.

Requires: pip install -r tests/kpl/requirements.txt
"""

import base64
import json
import random
import sys

try:
    from importlib.metadata import version

    from aws_kinesis_agg.aggregator import RecordAggregator
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records
except ImportError as e:  # pragma: no cover - the message is the point
    print(
        "make_agg.py: cannot import aws_kinesis_agg (%s); "
        "install it with: pip install -r tests/kpl/requirements.txt" % e,
        file=sys.stderr,
    )
    sys.exit(3)

MAX_EHK = str(2**128 - 1)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def groups():
    """Yields (name, max_size or None, [(partition_key, explicit_hash_key, data)])."""
    rng = random.Random(20240611)

    def data(n):
        return bytes(rng.getrandbits(8) for _ in range(n))

    small = [("user-%d" % (i % 7), None, data(rng.randrange(0, 200))) for i in range(50)]
    small[3] = ("user-3", None, b"")
    yield "small_no_ehk", None, small

    ehk = [
        ("ключ-%d" % i, rng.choice(["0", "1", MAX_EHK, str(rng.getrandbits(127))]), data(rng.randrange(1, 100)))
        for i in range(20)
    ]
    ehk.append(("键", MAX_EHK, b""))
    yield "ehk_unicode_keys", None, ehk

    mixed = [
        ("mixed-%d" % (i % 3), str(i * 1000) if i % 2 else None, data(rng.randrange(0, 64)))
        for i in range(30)
    ]
    yield "mixed_ehk", None, mixed

    split = [
        ("split-%d" % (i % 11), str(rng.getrandbits(100)) if i % 5 == 0 else None, data(rng.randrange(0, 300)))
        for i in range(100)
    ]
    yield "split_max_2048", 2048, split

    large = [("large-%d" % i, None, data(300000)) for i in range(5)]
    yield "large_1mib_limit", None, large

    yield "single_near_limit", None, [("k", None, data(1048576 - 100))]


def record_json(pk, ehk, data):
    return {"partition_key": pk, "explicit_hash_key": ehk, "data_base64": b64(data)}


def generate():
    aggregates = []
    for name, max_size, records in groups():
        agg = RecordAggregator() if max_size is None else RecordAggregator(max_size=max_size)
        pending = []

        def emit(out):
            pk, ehk, blob = out.get_contents()
            assert out.get_num_user_records() == len(pending), name
            aggregates.append(
                {
                    "group": name,
                    "partition_key": pk,
                    "explicit_hash_key": ehk or None,
                    "data_base64": b64(blob),
                    "user_records": [record_json(*r) for r in pending],
                }
            )

        for pk, ehk, data in records:
            out = agg.add_user_record(pk, data, ehk)
            if out is not None:
                emit(out)
                pending = []
            pending.append((pk, ehk, data))
        out = agg.clear_and_get()
        if out is not None:
            emit(out)
    json.dump(
        {
            "generator": "aws-kinesis-agg %s (protobuf %s)" % (version("aws-kinesis-agg"), version("protobuf")),
            "aggregates": aggregates,
        },
        sys.stdout,
    )


def deaggregate():
    request = json.load(sys.stdin)
    results = []
    for i, record in enumerate(request["records"]):
        event = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "sequenceNumber": str(i),
                "approximateArrivalTimestamp": 0,
                "partitionKey": record["partition_key"],
                "data": record["data_base64"],
            }
        }
        user_records = []
        aggregated = True
        for out in iter_deaggregate_records(event):
            k = out["kinesis"]
            if not k.get("aggregated"):
                # Delivered whole: not (validly) aggregated.
                aggregated = False
                continue
            data = k["data"]
            user_records.append(
                {
                    "partition_key": k["partitionKey"],
                    "explicit_hash_key": k["explicitHashKey"],
                    "data_base64": data.decode("ascii") if isinstance(data, bytes) else data,
                }
            )
        results.append({"aggregated": aggregated, "user_records": user_records})
    json.dump({"generator": "aws-kinesis-agg %s" % version("aws-kinesis-agg"), "results": results}, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1:] == []:
        generate()
    elif sys.argv[1:] == ["deaggregate"]:
        deaggregate()
    else:
        print("usage: make_agg.py [deaggregate]", file=sys.stderr)
        sys.exit(2)
