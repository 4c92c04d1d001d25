//! Promise (Self-protection): a request whose body stalls is answered 408
//! after 30 s, and 4,100 such connections open at once leave `/healthz` on
//! a new connection answering within 2 s.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Demo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STALLED: usize = 4_100;

/// A head, then five bytes of a chunked JSON body, then nothing.
const STALLED_REQUEST: &[u8] = b"POST /response/single HTTP/1.1\r\nHost: test\r\n\
    Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ema\r\n";

/// Everything `stream` receives until the server closes it, within `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "still open after {limit:?}; received {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// `GET /healthz` on a connection of its own, and how long the answer took.
async fn healthz(addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(30)).await;
    (answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_leave_room_for_new_clients_and_are_answered_408() {
    // This process holds the client side of every connection.
    epilogue_demo::raise_open_files_limit();
    let demo = Demo::start(&[]).await;
    let addr = demo.addr();
    let opened = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(STALLED_REQUEST).await.unwrap();
        stalled.push(stream);
    }

    let (answer, took) = healthz(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        took < Duration::from_secs(2),
        "/healthz took {took:?} beside {STALLED} stalled connections"
    );

    // The first stalled body gets its 408 once 30 s have passed without a
    // byte, and its connection closes.
    let answer = read_until_closed(&mut stalled[0], Duration::from_secs(60)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(opened.elapsed() >= Duration::from_secs(29));
}
