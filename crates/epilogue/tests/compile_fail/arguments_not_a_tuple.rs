// Arguments are given as a tuple, even a single one.
async fn send_email(to: String) {
    let _ = to;
}

fn main() {
    let _ = epilogue::BackgroundTask::new(send_email, "ada@example.com".to_owned());
}
