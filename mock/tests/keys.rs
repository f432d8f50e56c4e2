//! The server and the client apply one key rule: every key in one table of good and bad
//! keys is accepted by both or refused by both, so the two copies of the rule (each
//! crate has its own, and neither depends on the other) cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use idempotent_retry::IdempotencyKey;
use idempotent_retry_mock::MockServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Keys as bytes, each with whether the rule admits it: 1 to 255 visible ASCII bytes.
fn table() -> Vec<(Vec<u8>, bool)> {
    let mut keys: Vec<(Vec<u8>, bool)> = vec![
        (b"a".to_vec(), true),
        (b"order-1234".to_vec(), true),
        (b"550e8400-e29b-41d4-a716-446655440000".to_vec(), true),
        (b"!#$%&'*+-.^_`|~".to_vec(), true),
        (b"k\"quote".to_vec(), true),
        (b"tilde~and{braces}".to_vec(), true),
        (vec![b'k'; 255], true),
        (vec![b'k'; 256], false),
        (vec![b'k'; 1000], false),
        (b"has space".to_vec(), false),
        (b"tab\there".to_vec(), false),
        (b"del\x7f".to_vec(), false),
        (b"bell\x07".to_vec(), false),
        ("caf\u{e9}".as_bytes().to_vec(), false),
        (vec![0x80, b'a'], false),
    ];
    // Every byte a header line can carry (not CR, LF or NUL, which end it), inside a
    // key: at its ends, HTTP trims spaces and tabs before any rule sees them.
    for byte in 1..=255u8 {
        if byte != b'\r' && byte != b'\n' {
            keys.push((vec![b'x', byte, b'y'], (0x21..=0x7E).contains(&byte)));
        }
    }
    keys
}

/// The client's verdict on `key`.
fn client_accepts(key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(|text| IdempotencyKey::parse(text).is_ok())
}

/// The server's verdict: sends `key` in the key header over a raw connection (any bytes,
/// as a client in another language could) and reads the status.
async fn server_accepts(server: &MockServer, key: &[u8]) -> bool {
    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    let mut request = b"POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: ".to_vec();
    request.extend_from_slice(key);
    request.extend_from_slice(
        b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let status = std::str::from_utf8(&answer[..12]).unwrap();
    match &status[9..12] {
        "201" => true,
        "400" => false,
        other => panic!("unexpected status {other} for key {key:?}"),
    }
}

#[tokio::test]
async fn server_and_client_accept_and_refuse_the_same_keys() {
    let server = MockServer::start().await;
    let table = table();
    for (key, admitted) in &table {
        let client = client_accepts(key);
        let served = server_accepts(&server, key).await;
        assert_eq!(client, *admitted, "the client on {key:?}");
        assert_eq!(served, *admitted, "the server on {key:?}");
    }
    let accepted = table.iter().filter(|(_, ok)| *ok).count() as u64;
    assert_eq!(server.executions(), accepted, "each accepted key ran once");
}
