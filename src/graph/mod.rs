//! Microsoft Graph as a mail source (`transport = "graph"`), for tenants where IMAP is switched
//! off: plain HTTP on reqwest (one TLS stack, native-tls, and Graph's error JSON kept whole for
//! the operator) rather than an SDK that brings a second TLS stack or hides the error codes.
//! `client.rs` makes the requests (token, immutable ids, the app's concurrency bound, throttling
//! waits, capped downloads), `error.rs` reads Graph's refusals into errors with their fix,
//! `source.rs` is `GraphSource`, the seam's implementation, `send.rs` the requests of a send
//! through a draft (its attachments, the send, the copy in Sent Items read back by its id).

mod client;
mod error;
mod send;
mod source;

pub use client::Shared;
pub use error::{GraphError, Refusal};
pub use send::{Draft, FileAttachment, Item, MAX_ATTACHMENT, UPLOAD_SESSION_FROM};
pub use source::{GraphLogin, GraphMailbox, GraphSource, ListedMessage};
