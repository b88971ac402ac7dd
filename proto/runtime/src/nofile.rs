//! The open-file limit (`RLIMIT_NOFILE`).
//!
//! Every connection, upstream socket, Consul watch and log file costs a file
//! descriptor. Most systems start processes with a soft limit of 1,024 and a
//! hard limit far above it (systemd: 1,024 / 524,288), so a process that
//! never raises its soft limit runs out of descriptors at ~1,000 connections
//! while the system would allow hundreds of times more. Raising the soft
//! limit to the hard one needs no privilege; going above the hard limit
//! does, and stays the operator's decision (`LimitNOFILE=`, `ulimit -Hn`).

use std::io;

/// What [`raise_nofile_limit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NofileLimit {
    /// The soft limit went from `from` to `to` (the hard limit).
    Raised { from: u64, to: u64 },
    /// The soft limit already was the hard limit (`u64::MAX`: unlimited).
    Unchanged { limit: u64 },
    /// This platform has no `RLIMIT_NOFILE`.
    Unsupported,
}

/// The soft limit could not be raised.
#[derive(Debug, thiserror::Error)]
#[error("cannot raise the open-file limit (RLIMIT_NOFILE) from {soft} to {target}: {source}")]
pub struct NofileError {
    /// The soft limit the process keeps.
    pub soft: u64,
    /// What it tried to set.
    pub target: u64,
    #[source]
    pub source: io::Error,
}

/// A hard limit of "unlimited" is not a value `setrlimit` takes for the soft
/// limit on every system: Linux caps descriptors at `fs.nr_open`, whose
/// default is 2^20; macOS at `OPEN_MAX` (10,240) for this call. Tried in
/// this order.
const UNLIMITED_TARGETS: [u64; 2] = [1 << 20, 10_240];

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit.
#[cfg(unix)]
pub fn raise_nofile_limit() -> Result<NofileLimit, NofileError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

    let limit = getrlimit(Resource::Nofile);
    let targets: &[u64] = match &limit.maximum {
        Some(hard) => std::slice::from_ref(hard),
        None => &UNLIMITED_TARGETS,
    };
    // `None` is unlimited: nothing to raise.
    let Some(soft) = limit.current else {
        return Ok(NofileLimit::Unchanged { limit: u64::MAX });
    };
    let mut last_error = None;
    // Never lower the limit: a target at or below the soft limit is skipped.
    for &target in targets.iter().filter(|&&target| target > soft) {
        let wanted = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, wanted) {
            Ok(()) => {
                return Ok(NofileLimit::Raised {
                    from: soft,
                    to: target,
                });
            }
            Err(errno) => last_error = Some((target, io::Error::from(errno))),
        }
    }
    match last_error {
        None => Ok(NofileLimit::Unchanged { limit: soft }),
        Some((target, source)) => Err(NofileError {
            soft,
            target,
            source,
        }),
    }
}

#[cfg(not(unix))]
pub fn raise_nofile_limit() -> Result<NofileLimit, NofileError> {
    Ok(NofileLimit::Unsupported)
}

/// [`raise_nofile_limit`], logged once: info with the limits, a warning on
/// failure (the process runs on with the limit it had; never fatal, since
/// a small limit only matters under load). What `main` calls, after the
/// log subscriber is set up.
pub fn raise_nofile_limit_logged() {
    match raise_nofile_limit() {
        Ok(NofileLimit::Raised { from, to }) => {
            tracing::info!(
                from,
                to,
                "raised the open-file limit (RLIMIT_NOFILE soft limit) to the hard limit"
            )
        }
        Ok(NofileLimit::Unchanged { limit }) => {
            tracing::info!(limit, "open-file limit already at the hard limit")
        }
        Ok(NofileLimit::Unsupported) => {}
        Err(error) => tracing::warn!(%error, "keeping the open-file limit"),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use rustix::process::{Resource, getrlimit};

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        // Idempotent for the test process: raising to the hard limit twice
        // is the same as once, so this cannot disturb other tests.
        let outcome = raise_nofile_limit().expect("raising to the hard limit needs no privilege");
        let now = getrlimit(Resource::Nofile);
        match outcome {
            NofileLimit::Raised { from, to } => {
                assert!(from < to, "{outcome:?}");
                assert_eq!(now.current, Some(to));
            }
            NofileLimit::Unchanged { limit } => assert_eq!(now.current, Some(limit)),
            NofileLimit::Unsupported => panic!("unix has RLIMIT_NOFILE"),
        }
        if let Some(hard) = now.maximum {
            assert_eq!(now.current, Some(hard));
        }
        assert_eq!(
            raise_nofile_limit().expect("second call"),
            NofileLimit::Unchanged {
                limit: now.current.unwrap_or(u64::MAX)
            }
        );
    }
}
