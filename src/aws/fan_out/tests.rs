//! SubscribeToShard against the scripted HTTP/2 server: what a real
//! service rarely does, on purpose.

use std::io::Write;
use std::time::{Duration, Instant};

use super::*;
use crate::aws::ClientConfig;
use crate::aws::credentials::Credentials;
use crate::aws::event_stream::{HeaderValue, encode, event};
use crate::aws::http2::frame;
use crate::aws::http2::test_server::{Peer, ScriptedServer, indexed_huffman};
use crate::error::TransportKind;

const CONSUMER: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1";

fn client(url: &str, read_timeout: Duration) -> KinesisClient {
    KinesisClient::new(
        &ClientConfig::new()
            .region("us-east-1")
            .endpoint_url(url)
            .credentials(Credentials::new("AKID", "secret"))
            .read_timeout(read_timeout),
    )
    .unwrap()
}

fn subscribe(url: &str, read_timeout: Duration) -> Result<Subscription> {
    client(url, read_timeout).subscribe_to_shard(
        CONSUMER,
        "shardId-000000000001",
        &IteratorPosition::TrimHorizon,
    )
}

/// A SubscribeToShardEvent with records `seqs` (data "r<seq>").
fn records_event(seqs: &[u64], continuation: Option<u64>, children: &str) -> Vec<u8> {
    let records: Vec<String> = seqs
        .iter()
        .map(|s| {
            let data = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("r{s}"),
            );
            format!(
                r#"{{"SequenceNumber":"{s}","PartitionKey":"k","Data":"{data}","ApproximateArrivalTimestamp":1700000000.5}}"#
            )
        })
        .collect();
    let continuation = continuation.map_or("null".to_owned(), |c| format!("\"{c}\""));
    event(
        "SubscribeToShardEvent",
        &format!(
            r#"{{"Records":[{}],"ContinuationSequenceNumber":{continuation},"MillisBehindLatest":7,"ChildShards":{children}}}"#,
            records.join(",")
        ),
    )
}

/// Serves one subscription: handshake, request, 200, then `then`.
fn serving(then: impl FnOnce(&mut Peer, u32) + Send + 'static) -> ScriptedServer {
    ScriptedServer::start(move |peer| {
        peer.handshake(&[]);
        let request = peer.read_request();
        peer.ok_headers(request.stream);
        then(peer, request.stream);
    })
}

fn data_of(event: &SubscribeToShardEvent) -> Vec<String> {
    event
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(r.data()).into_owned())
        .collect()
}

#[test]
fn events_with_huffman_dynamic_table_headers_padding_ping_and_child_shards() {
    let server = ScriptedServer::start(|peer| {
        peer.handshake(&[(frame::SETTINGS_MAX_FRAME_SIZE, 16_384)]);
        let request = peer.read_request();
        assert_eq!(request.header(":method"), Some("POST"));
        assert_eq!(request.header(":path"), Some("/"));
        assert_eq!(request.header(":scheme"), Some("http"));
        assert_eq!(
            request.header("x-amz-target"),
            Some("Kinesis_20131202.SubscribeToShard")
        );
        assert!(
            request
                .header("authorization")
                .unwrap()
                .starts_with("AWS4-HMAC-SHA256 ")
        );
        assert!(request.header("x-amz-date").is_some());
        assert!(
            request
                .header("user-agent")
                .unwrap()
                .starts_with("kinesis-consumer/")
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["ConsumerARN"], CONSUMER);
        assert_eq!(body["ShardId"], "shardId-000000000001");
        assert_eq!(body["StartingPosition"]["Type"], "TRIM_HORIZON");
        // Headers: a size update, Huffman strings added to the dynamic
        // table, then one of them used again by its dynamic index (62 is
        // the newest entry), split across HEADERS and CONTINUATION.
        let mut block = vec![0x3F, 0xE1, 0x1F]; // table size update to 4096
        indexed_huffman(&mut block, 8, "", "200"); // :status (static 8 name)
        indexed_huffman(&mut block, 0, "x-amzn-requestid", "req-huffman-42");
        indexed_huffman(&mut block, 31, "", "application/vnd.amazon.eventstream");
        block.push(0x80 | 63); // x-amzn-requestid again, from the dynamic table
        peer.headers(request.stream, &block, Some(5), false);
        let mut ping = Vec::new();
        frame::write_frame(&mut ping, frame::PING, 0, 0, b"pingpong");
        peer.send(&ping);
        let mut messages = event("initial-response", "{}");
        messages.extend(records_event(&[1, 2], Some(2), "null"));
        messages.extend(records_event(
            &[],
            None,
            r#"[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000001"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]"#,
        ));
        // The first bytes in a padded DATA frame, the rest cut at odd places.
        let mut out = Vec::new();
        let mut padded = vec![3u8];
        padded.extend_from_slice(&messages[..7]);
        padded.extend_from_slice(&[0, 0, 0]);
        frame::write_frame(
            &mut out,
            frame::DATA,
            frame::PADDED,
            request.stream,
            &padded,
        );
        peer.send(&out);
        for part in messages[7..].chunks(33) {
            peer.data(request.stream, part, false);
        }
        peer.data(request.stream, &[], true);
        // The client answered the PING with the same payload.
        loop {
            let f = peer.read_frame();
            if f.kind == frame::PING {
                assert_eq!(f.flags, frame::ACK);
                assert_eq!(f.payload, b"pingpong");
                break;
            }
        }
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    assert_eq!(sub.request_id(), Some("req-huffman-42"));
    let first = sub.next().unwrap().unwrap();
    assert_eq!(data_of(&first), ["r1", "r2"]);
    assert_eq!(first.records[1].sequence_number().as_str(), "2");
    assert_eq!(first.records[0].shard_id(), "shardId-000000000001");
    assert_eq!(first.millis_behind_latest, Some(7));
    assert_eq!(sub.continuation_sequence_number().unwrap().as_str(), "2");
    let last = sub.next().unwrap().unwrap();
    assert!(last.records.is_empty() && last.continuation_sequence_number.is_none());
    assert_eq!(
        last.child_shards,
        [ChildShard {
            shard_id: "shardId-000000000002".into(),
            parent_shards: vec!["shardId-000000000001".into()],
        }]
    );
    assert!(sub.next().is_none(), "END_STREAM ends the iteration");
    server.finish();
}

#[test]
fn goaway_mid_stream_delivers_what_came_then_an_error() {
    let server = serving(|peer, stream| {
        peer.data(stream, &records_event(&[1], Some(1), "null"), false);
        // Last stream 0: this stream is cut off, while the socket stays open.
        peer.goaway(0, frame::NO_ERROR, "shutting down");
        let _ = stream;
        std::thread::sleep(Duration::from_millis(100));
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r1"]);
    let err = sub.next().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportKind::Broken,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("GOAWAY NO_ERROR"), "{err}");
    assert!(err.to_string().contains("shutting down"), "{err}");
    assert!(err.is_retryable());
    assert!(sub.next().is_none());
    server.finish();
}

#[test]
fn rst_stream_is_an_error_after_the_events_before_it() {
    let server = serving(|peer, stream| {
        peer.data(stream, &records_event(&[5], Some(5), "null"), false);
        let mut out = Vec::new();
        frame::write_rst_stream(&mut out, stream, 0x2);
        peer.send(&out);
        std::thread::sleep(Duration::from_millis(300));
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r5"]);
    let err = sub.next().unwrap().unwrap_err();
    assert!(
        err.to_string().contains("RST_STREAM INTERNAL_ERROR"),
        "{err}"
    );
    server.finish();
}

#[test]
fn a_connection_reset_is_a_broken_transport() {
    let server = serving(|peer, stream| {
        peer.data(stream, &records_event(&[1], Some(1), "null"), false);
        // A PING the client answers, left unread: closing a socket with
        // unread data makes the kernel send a reset, not a FIN.
        peer.graceful = false;
        let mut ping = Vec::new();
        frame::write_frame(&mut ping, frame::PING, 0, 0, b"12345678");
        peer.send(&ping);
        std::thread::sleep(Duration::from_millis(200));
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r1"]);
    server.finish();
    let err = sub.next().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportKind::Broken,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().to_lowercase().contains("reset"), "{err}");
}

#[test]
fn a_server_that_stops_sending_is_a_read_timeout() {
    let server = serving(|peer, stream| {
        peer.data(stream, &records_event(&[1], Some(1), "null"), false);
        std::thread::sleep(Duration::from_secs(3));
    });
    let mut sub = subscribe(&server.url, Duration::from_millis(500)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r1"]);
    let started = Instant::now();
    let err = sub.next().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Short polls are not the timeout: nothing yet is Idle.
    drop(sub);
    server.finish();
}

#[test]
fn a_bad_crc_is_an_error_and_its_records_are_not_delivered() {
    let server = serving(|peer, stream| {
        peer.data(stream, &records_event(&[1], Some(1), "null"), false);
        let mut bad = records_event(&[2], Some(2), "null");
        let at = bad.len() - 10;
        bad[at] ^= 0x01;
        peer.data(stream, &bad, false);
        peer.data(stream, &records_event(&[3], Some(3), "null"), false);
        std::thread::sleep(Duration::from_millis(300));
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r1"]);
    let err = sub.next().unwrap().unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("message CRC mismatch"), "{err}");
    assert!(sub.next().is_none(), "nothing after a bad message");
    assert_eq!(sub.continuation_sequence_number().unwrap().as_str(), "1");
    server.finish();
}

#[test]
fn exception_events_are_service_errors() {
    let server = serving(|peer, stream| {
        let exception = encode(
            &[
                (":message-type", HeaderValue::String("exception".into())),
                (
                    ":exception-type",
                    HeaderValue::String("ResourceInUseException".into()),
                ),
                (
                    ":content-type",
                    HeaderValue::String("application/json".into()),
                ),
            ],
            br#"{"message":"Another active subscription exists"}"#,
        );
        peer.data(stream, &exception, false);
        std::thread::sleep(Duration::from_millis(300));
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    let err = sub.next().unwrap().unwrap_err();
    let Error::Service(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, "ResourceInUseException");
    assert_eq!(e.message, "Another active subscription exists");
    assert_eq!(e.request_id.as_deref(), Some("req-1"));
    server.finish();
}

#[test]
fn an_error_status_is_a_service_error_with_its_code() {
    let server = ScriptedServer::start(|peer| {
        peer.handshake(&[]);
        let request = peer.read_request();
        let mut block = vec![0x8C]; // :status 400
        crate::aws::http2::hpack::encode_literal(&mut block, "x-amzn-requestid", b"rid-9");
        peer.headers(request.stream, &block, None, false);
        peer.data(
            request.stream,
            br#"{"__type":"ResourceNotFoundException","message":"no such consumer"}"#,
            true,
        );
    });
    let err = subscribe(&server.url, Duration::from_secs(5)).unwrap_err();
    let Error::Service(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (e.status, e.code.as_str()),
        (400, "ResourceNotFoundException")
    );
    assert_eq!(e.message, "no such consumer");
    assert_eq!(e.request_id.as_deref(), Some("rid-9"));
    server.finish();
}

#[test]
fn a_redirect_is_an_error_naming_its_host() {
    let server = ScriptedServer::start(|peer| {
        peer.handshake(&[]);
        let request = peer.read_request();
        let mut block = Vec::new();
        crate::aws::http2::hpack::encode_literal(&mut block, ":status", b"307");
        crate::aws::http2::hpack::encode_literal(
            &mut block,
            "location",
            b"https://elsewhere.example:8443/x?token=LOCATION-SECRET",
        );
        peer.headers(request.stream, &block, None, false);
        peer.data(request.stream, b"", true);
    });
    let err = subscribe(&server.url, Duration::from_secs(5)).unwrap_err();
    let Error::Service(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.status, 307);
    let shown = err.to_string();
    assert!(
        shown.contains("HTTP 307") && shown.contains("to host elsewhere.example:8443"),
        "{shown}"
    );
    assert!(!shown.contains("LOCATION-SECRET"), "{shown}");
    server.finish();
}

#[test]
fn a_tiny_initial_window_makes_the_body_wait_for_window_updates() {
    let server = ScriptedServer::start(|peer| {
        peer.handshake(&[(frame::SETTINGS_INITIAL_WINDOW_SIZE, 16)]);
        let mut body = Vec::new();
        let mut stream = 0;
        loop {
            let f = peer.read_frame();
            match f.kind {
                frame::HEADERS => stream = f.stream,
                frame::DATA => {
                    assert!(
                        f.payload.len() <= 16,
                        "{} bytes beyond a window of 16",
                        f.payload.len()
                    );
                    body.extend_from_slice(&f.payload);
                    if f.flags & frame::END_STREAM != 0 {
                        break;
                    }
                    let mut update = Vec::new();
                    frame::write_window_update(&mut update, f.stream, f.payload.len() as u32);
                    peer.send(&update);
                }
                _ => {}
            }
        }
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["ShardId"], "shardId-000000000001");
        peer.ok_headers(stream);
        peer.data(stream, &records_event(&[9], Some(9), "null"), true);
    });
    let mut sub = subscribe(&server.url, Duration::from_secs(5)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r9"]);
    server.finish();
}

#[test]
fn a_server_that_does_not_speak_http2_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut socket, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = socket.read(&mut buf);
        let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    let err = subscribe(&url, Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("does it speak HTTP/2"), "{err}");
    server.join().unwrap();
}

#[test]
fn ensure_registers_a_missing_consumer_and_waits_through_not_found() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::aws::test_server::FakeServer;

    let describes = AtomicUsize::new(0);
    let consumer = |status: &str| {
        format!(
            r#"{{"ConsumerName":"app","ConsumerARN":"{CONSUMER}","ConsumerStatus":"{status}","ConsumerCreationTimestamp":1700000000.5,"StreamARN":"arn:aws:kinesis:us-east-1:123456789012:stream/s"}}"#
        )
    };
    let not_found = r#"{"__type":"ResourceNotFoundException","message":"not found"}"#;
    let server = FakeServer::start(move |r| match r.operation() {
        "RegisterStreamConsumer" => (200, format!(r#"{{"Consumer":{}}}"#, consumer("CREATING"))),
        // Not found, not found (just registered), creating, active.
        "DescribeStreamConsumer" => match describes.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => (400, not_found.to_owned()),
            2 => (
                200,
                format!(r#"{{"ConsumerDescription":{}}}"#, consumer("CREATING")),
            ),
            _ => (
                200,
                format!(r#"{{"ConsumerDescription":{}}}"#, consumer("ACTIVE")),
            ),
        },
        _ => (400, "{}".into()),
    });
    let client = client(&server.url, Duration::from_secs(5));
    let c = client
        .ensure_stream_consumer(
            "arn:aws:kinesis:us-east-1:123456789012:stream/s",
            "app",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        (c.consumer_status.as_str(), c.consumer_arn.as_str()),
        ("ACTIVE", CONSUMER)
    );
    assert_eq!(
        c.creation_time,
        Some(UNIX_EPOCH + Duration::from_secs_f64(1_700_000_000.5))
    );
    let operations: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.operation().to_owned())
        .collect();
    assert_eq!(
        operations,
        [
            "DescribeStreamConsumer",
            "RegisterStreamConsumer",
            "DescribeStreamConsumer",
            "DescribeStreamConsumer",
            "DescribeStreamConsumer"
        ]
    );
    // Every describe went by stream and name.
    for r in server
        .requests()
        .iter()
        .filter(|r| r.operation() == "DescribeStreamConsumer")
    {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["ConsumerName"], "app", "{body}");
    }
}

fn service_error(status: u16, code: &str) -> Error {
    Error::Service(ServiceError {
        operation: SUBSCRIBE,
        code: code.to_owned(),
        message: "m".into(),
        status,
        request_id: None,
    })
}

/// An exception event's error: a service error with the status of the
/// 200 response that carried it.
fn exception(code: &str) -> Error {
    service_error(200, code)
}

#[test]
fn exception_events_are_resubscribed_except_the_documented_fatal_ones() {
    use AfterSubscribeError::*;
    let quiet = Resubscribe {
        floor: Duration::from_millis(200),
        warn: false,
    };
    let warned = Resubscribe {
        floor: Duration::from_millis(200),
        warn: true,
    };
    for code in [
        "InternalFailureException",
        "KMSThrottlingException",
        "LimitExceededException",
    ] {
        assert_eq!(after_subscribe_error(&exception(code)), quiet, "{code}");
    }
    // A type nobody documented yet: retried, and said at warn.
    assert_eq!(
        after_subscribe_error(&exception("BrandNewException")),
        warned
    );
    assert_eq!(after_subscribe_error(&exception("")), warned);
    for code in FATAL_EXCEPTIONS {
        assert_eq!(after_subscribe_error(&exception(code)), Fail, "{code}");
        assert_eq!(
            after_subscribe_error(&service_error(400, code)),
            Fail,
            "{code}"
        );
    }
    assert_eq!(
        after_subscribe_error(&exception("ResourceInUseException")),
        InUse
    );
    assert_eq!(
        after_subscribe_error(&service_error(400, "ResourceInUseException")),
        InUse
    );
    assert_eq!(
        after_subscribe_error(&exception("ResourceNotFoundException")),
        CheckConsumer
    );
    assert_eq!(
        after_subscribe_error(&service_error(400, "ResourceNotFoundException")),
        CheckConsumer
    );
    // Replies (not events): 5xx, throttling, broken connections and
    // garbled events are resubscribed; a refused request fails.
    for retried in [
        service_error(400, "LimitExceededException"),
        service_error(500, "InternalFailure"),
        service_error(400, "InternalFailureException"),
        Error::transport(SUBSCRIBE, "http://h", TransportKind::Broken, "reset"),
        Error::Decode {
            operation: SUBSCRIBE,
            message: "bad checksum".into(),
        },
    ] {
        assert_eq!(after_subscribe_error(&retried), quiet, "{retried}");
    }
    assert_eq!(
        after_subscribe_error(&service_error(400, "AccessDeniedException")),
        Fail
    );
    // A TLS or protocol refusal: retried slowly, said at warn.
    let refusal = http2_error(
        "https://h",
        Http2Error::Tls("invalid peer certificate: UnknownIssuer".into()),
    );
    assert!(is_refusal(&refusal));
    assert_eq!(
        after_subscribe_error(&refusal),
        Resubscribe {
            floor: Duration::from_secs(1),
            warn: true
        }
    );
    let not_h2 = http2_error("http://h", Http2Error::NotHttp2("HTTP/1.1".into()));
    assert!(is_refusal(&not_h2) && !is_refusal(&http2_error("http://h", Http2Error::Closed)));
}

#[test]
fn resource_in_use_waits_until_five_seconds_after_the_last_subscribe() {
    let now = Instant::now();
    let floor = Duration::from_millis(300);
    assert_eq!(in_use_wait(None, now, floor), floor);
    assert_eq!(
        in_use_wait(Some(now - Duration::from_secs(2)), now, floor),
        Duration::from_secs(3)
    );
    assert_eq!(
        in_use_wait(Some(now - Duration::from_secs(9)), now, floor),
        floor
    );
}

#[test]
fn a_consumer_refused_as_not_found_is_judged_by_its_description() {
    let c = |status: &str, arn: &str| StreamConsumer {
        consumer_name: "app".into(),
        consumer_arn: arn.into(),
        consumer_status: status.into(),
        creation_time: None,
        stream_arn: None,
    };
    assert_eq!(
        judge_consumer(Some(&c("ACTIVE", CONSUMER)), CONSUMER),
        ConsumerFound::Same
    );
    assert_eq!(
        judge_consumer(Some(&c("ACTIVE", "arn:new")), CONSUMER),
        ConsumerFound::Replaced("arn:new".into())
    );
    for status in ["CREATING", "DELETING"] {
        assert_eq!(
            judge_consumer(Some(&c(status, CONSUMER)), CONSUMER),
            ConsumerFound::Missing
        );
    }
    assert_eq!(judge_consumer(None, CONSUMER), ConsumerFound::Missing);
}

/// A handler slower than the read timeout leaves the next event waiting in
/// the stream: that is not the server's silence.
#[test]
fn data_waiting_behind_a_slow_handler_is_not_a_timeout() {
    let (sent, wait_sent) = std::sync::mpsc::channel::<()>();
    let server = serving(move |peer, stream| {
        peer.data(stream, &records_event(&[1], Some(1), "null"), false);
        // The second event once the client took the first.
        std::thread::sleep(Duration::from_millis(100));
        peer.data(stream, &records_event(&[2], Some(2), "null"), false);
        sent.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    let mut sub = subscribe(&server.url, Duration::from_millis(500)).unwrap();
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r1"]);
    wait_sent.recv().unwrap();
    // The handler: longer than the read timeout.
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(data_of(&sub.next().unwrap().unwrap()), ["r2"]);
    server.finish();
}

/// A server that sends a message one byte at a time is never silent for
/// the read timeout, yet the event must arrive whole within its deadline.
#[test]
fn an_event_dribbled_a_byte_at_a_time_times_out() {
    let server = serving(|peer, stream| {
        let event = records_event(&[1], Some(1), "null");
        for byte in &event {
            let mut out = Vec::new();
            frame::write_frame(&mut out, frame::DATA, 0, stream, std::slice::from_ref(byte));
            if peer.socket.write_all(&out).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut sub = subscribe(&server.url, Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    let err = sub.next().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the rest of a SubscribeToShard event"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(sub);
    server.finish();
}

/// The signature goes out as a never-indexed literal (RFC 7541, 7.1.3).
#[test]
fn the_authorization_header_is_never_indexed_on_the_wire() {
    let server = ScriptedServer::start(|peer| {
        peer.handshake(&[]);
        let headers = loop {
            let f = peer.read_frame();
            if f.kind == frame::HEADERS {
                break f;
            }
        };
        let name = b"authorization";
        let at = headers
            .payload
            .windows(name.len())
            .position(|w| w == name)
            .expect("an authorization literal with its name");
        assert_eq!(headers.payload[at - 2], 0x10, "never indexed");
    });
    let _ = subscribe(&server.url, Duration::from_millis(500));
    server.finish();
}
