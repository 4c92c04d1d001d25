// A task function must return `()` or `Result<(), E: Display>`.
fn write_in_file(line: String) -> std::io::Result<usize> {
    Ok(line.len())
}

fn main() {
    let _ = epilogue::BackgroundTask::new(write_in_file, ("signed up".to_owned(),));
}
