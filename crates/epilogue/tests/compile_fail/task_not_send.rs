// Tasks run on the runner's threads, not on the actix-web worker that
// accepted them: what a task takes, and its future, must be `Send`.
use std::rc::Rc;

async fn send_email_notification(to: Rc<String>) {
    let _ = to;
}

fn main() {
    let to = Rc::new("ada@example.com".to_owned());
    let _ = epilogue::BackgroundTask::new(send_email_notification, (to,));
}
