//! The writer thread: takes entries off the queue, formats them and writes
//! them to stdout or a file, flushing whenever the queue runs empty. A
//! thread of its own, not a tokio task: a slow disk blocks only it.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc::Receiver;

use anyhow::Context as _;

use super::{Entry, Target};

pub fn open(target: &Target) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!("--access-log: cannot open {} for appending", path.display())
                })?,
        ),
    })
}

pub fn spawn(out: Box<dyn Write + Send>, lines: Receiver<Entry>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || run(out, lines))
        .context("cannot start the access log's writer thread")?;
    Ok(())
}

fn run(mut out: Box<dyn Write + Send>, lines: Receiver<Entry>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut warned = false;
    // Ends when every sender is gone (never, for the process's log).
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        // Take what is queued, up to a buffer's worth, then write once.
        while let Some(entry) = next {
            if let Err(error) = super::line::write(&entry, &mut buf) {
                tracing::warn!(%error, "an access log line could not be formatted");
            }
            next = if buf.len() < 64 * 1024 {
                lines.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(error) = out.write_all(&buf).and_then(|()| out.flush())
            && !warned
        {
            tracing::warn!(%error, "writing the access log failed; lines are lost");
            warned = true;
        }
        buf.clear();
    }
}
