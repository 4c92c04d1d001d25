//! A request received in full is handled, and its tasks run, whatever the
//! client does with the connection after sending it: shutting its side
//! down (HTTP/1 half-close) and reading the answer, or closing at once.

mod common;

use std::collections::BTreeSet;

use common::{raw_post, signup, Demo, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUESTS: usize = 10;
const MESSAGE: &str = "Thank you for registering.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_sent_before_a_half_close_or_a_close_sends_its_email() {
    let demo = Demo::start(&[]).await;
    let addr = demo.addr();
    let request = |who: &str| {
        raw_post(
            addr,
            "/response/single",
            &[],
            &signup(&format!("{who}@example.com")).to_string(),
        )
    };

    let half_closing: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let request = request(&format!("half-close-{i}"));
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("cannot connect");
                stream.write_all(request.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
                let mut answer = Vec::new();
                tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
                    .await
                    .expect("no answer, or the connection stayed open")
                    .expect("cannot read the answer");
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    for i in 0..REQUESTS {
        let mut stream = TcpStream::connect(addr).await.expect("cannot connect");
        stream
            .write_all(request(&format!("close-{i}")).as_bytes())
            .await
            .unwrap();
        drop(stream);
    }
    for client in half_closing {
        let answer = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
        assert!(answer.contains("Email sent"), "{answer:?}");
    }

    let emails = demo.wait_for_emails(MESSAGE, 2 * REQUESTS).await;
    let sent: BTreeSet<String> = emails.into_iter().filter_map(|email| email.to).collect();
    let expected: BTreeSet<String> = (0..REQUESTS)
        .flat_map(|i| {
            [
                format!("half-close-{i}@example.com"),
                format!("close-{i}@example.com"),
            ]
        })
        .collect();
    assert_eq!(sent, expected);
}
