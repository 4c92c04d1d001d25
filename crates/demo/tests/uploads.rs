//! Promises (Self-protection): uploads stream to disk, an upload that meets
//! a full disk is answered 503 with `Retry-After` and leaves no partial
//! file, and `/files` is admitted like the other task routes.

mod common;

use std::fs;
use std::path::Path;

use common::tmpfs::Tmpfs;
use common::{demo_on, Demo};
use reqwest::StatusCode;

/// The names in `DATA_DIR/files`.
fn uploads_in(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(data_dir.join("files"))
        .expect("the uploads directory")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_upload_that_meets_a_full_disk_gets_503_and_leaves_nothing_behind() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: mounting a small tmpfs needs root");
        return;
    }
    // Declared first: unmounted after the demo is gone. Room for the
    // store, not for a 10 MiB upload.
    let tmpfs = match Tmpfs::mount("6m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("skipped: no tmpfs: {why}");
            return;
        }
    };
    let data_dir = tmpfs.path().to_owned();
    let demo = demo_on(&data_dir, &["--workers", "0"]).await;

    let reply = demo
        .post_bytes("/files", vec![b'x'; 10 * 1024 * 1024])
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert!(reply.headers.contains_key("retry-after"), "{reply:?}");
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("disk is full"));
    assert_eq!(uploads_in(&data_dir), Vec::<String>::new());

    // The space came back with the partial file: a small upload is stored.
    let reply = demo.post_bytes("/files", b"one\ntwo\n".to_vec()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let stored = uploads_in(&data_dir);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(!stored[0].ends_with(".partial"), "{stored:?}");
}

#[tokio::test]
async fn an_upload_cut_short_leaves_nothing_behind() {
    let demo = Demo::start(&["--workers", "0"]).await;
    // A body of 1 MiB announced, 64 KiB sent, then the connection closed.
    let mut stream = tokio::net::TcpStream::connect(demo.addr()).await.unwrap();
    let head = "POST /files HTTP/1.1\r\nHost: test\r\nContent-Length: 1048576\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &[b'x'; 64 * 1024])
        .await
        .unwrap();
    // The file exists while the body comes.
    let data_dir = demo.data_dir().to_owned();
    common::eventually("the upload to start on disk", async || {
        (!uploads_in(&data_dir).is_empty()).then_some(())
    })
    .await;
    drop(stream);
    common::eventually("the partial upload to be removed", async || {
        uploads_in(&data_dir).is_empty().then_some(())
    })
    .await;
}
