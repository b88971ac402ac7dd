//! weft-runtime: process plumbing shared by `weft-discovery` and
//! `weft-sidecar`, so that both survive running out of file descriptors
//! the same way:
//!
//! - [`raise_nofile_limit`]: the soft open-file limit goes up to the hard
//!   limit at start (`main` calls [`raise_nofile_limit_logged`]);
//! - [`accept`] / [`incoming`]: accept loops that pause on resource errors
//!   (EMFILE...) instead of spinning, and retry per-connection errors at once;
//! - [`LogLimiter`]: at most one log line per second per cause, the next
//!   line carrying the count of the repeats it held back.
#![forbid(unsafe_code)]

mod accept;
mod log_limit;
mod nofile;

pub use accept::{
    AcceptErrorKind, AcceptErrors, FIRST_PAUSE, MAX_PAUSE, accept, accept_with, incoming,
};
pub use log_limit::LogLimiter;
pub use nofile::{NofileError, NofileLimit, raise_nofile_limit, raise_nofile_limit_logged};
