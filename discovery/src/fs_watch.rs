//! What the directory watchers (the file backend, the CA reload) react to.

use notify::EventKind;

/// Everything but reads: our own reads (inotify reports opens and
/// closes-after-read) must not trigger another read. An error means events
/// may have been lost (e.g. the inotify queue overflowed), so reading
/// everything again is the safe answer; `what` names the watcher in the log.
pub fn is_relevant(event: &notify::Result<notify::Event>, what: &str) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write,
            )) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        Err(error) => {
            tracing::warn!("{what} watcher: {error}; reading it again");
            true
        }
    }
}
