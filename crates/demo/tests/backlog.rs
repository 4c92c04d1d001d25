//! The listen backlog: a burst of connections the service has not accepted
//! yet waits in the kernel instead of being dropped (`TcpListener::bind`
//! asks for 128; a client left out retries its `SYN` a second later).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[tokio::test]
async fn a_burst_of_500_connections_waits_in_the_backlog() {
    // Bound as the demo binds, and never accepted: every connection that
    // completes its handshake is one the backlog held.
    let listener = epilogue_demo::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut connects = JoinSet::new();
    for _ in 0..500 {
        // Well under the one second a dropped SYN waits to be sent again.
        connects.spawn(tokio::time::timeout(
            Duration::from_millis(800),
            TcpStream::connect(addr),
        ));
    }
    let mut connected = Vec::new();
    let mut left_out = 0;
    while let Some(result) = connects.join_next().await {
        match result.unwrap() {
            Ok(Ok(stream)) => connected.push(stream),
            _ => left_out += 1,
        }
    }
    assert_eq!(
        left_out,
        0,
        "{} connected, {left_out} left out",
        connected.len()
    );
    drop(listener);
}
