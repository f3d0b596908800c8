//! IMAP as a mail source: the seam's operations (`crate::mail_source::MailSource`) on a logged-in
//! [`Connection`].

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Connection, ImapError};
use crate::mail_source::{
    Body, CopyKept, Disposition, IdleOutcome, MailSource, MessageSummary, SelectedFolder,
    SourceError, SourceErrorKind, Uid,
};

/// A logged-in IMAP session used by intake.
pub struct ImapSource {
    conn: Connection,
    /// Folders known to exist, so that each move target is checked (and created) once per session.
    known_folders: HashSet<String>,
}

impl ImapSource {
    pub fn new(conn: Connection) -> ImapSource {
        ImapSource {
            conn,
            known_folders: HashSet::new(),
        }
    }
}

impl From<ImapError> for SourceError {
    fn from(error: ImapError) -> SourceError {
        let kind = if error.is_auth_failure() {
            SourceErrorKind::AuthRefused
        } else if error.is_refusal() {
            SourceErrorKind::Refused
        } else {
            SourceErrorKind::Failed
        };
        SourceError::new(kind, error)
    }
}

impl MailSource for ImapSource {
    async fn open(&mut self, folder: &str, read_only: bool) -> Result<SelectedFolder, SourceError> {
        Ok(if read_only {
            self.conn.examine(folder).await?
        } else {
            self.conn.select(folder).await?
        })
    }

    async fn list_above(&mut self, last: Uid) -> Result<Vec<MessageSummary>, SourceError> {
        Ok(self.conn.list_above(last.0).await?)
    }

    async fn search_range(
        &mut self,
        first: Uid,
        last: Uid,
        unseen_only: bool,
    ) -> Result<Vec<Uid>, SourceError> {
        Ok(self.conn.search_range(first, last, unseen_only).await?)
    }

    async fn list_uids(&mut self, uids: &[Uid]) -> Result<Vec<MessageSummary>, SourceError> {
        Ok(self.conn.list_uids(uids).await?)
    }

    async fn fetch_bodies(
        &mut self,
        uids: &[Uid],
        cap: u64,
    ) -> Result<Vec<(Uid, Body)>, SourceError> {
        Ok(self.conn.fetch_bodies(uids, cap).await?)
    }

    async fn fetch_identifying_headers(&mut self, uid: Uid) -> Result<Vec<u8>, SourceError> {
        Ok(self.conn.fetch_identifying_headers(uid).await?)
    }

    async fn dispose(
        &mut self,
        uids: &[Uid],
        disposition: &Disposition,
    ) -> Result<(), SourceError> {
        match disposition {
            Disposition::None => {}
            Disposition::Seen => self.conn.mark_seen(uids).await?,
            Disposition::Delete => self.conn.delete(uids).await?,
            Disposition::Move(folder) | Disposition::Quarantine(folder) => {
                if !self.known_folders.contains(folder) {
                    self.conn.ensure_folder(folder).await?;
                    self.known_folders.insert(folder.clone());
                }
                // Moving a UID that is already gone is a no-op for the server (RFC 3501 §6.4.8),
                // which makes a repeated disposition after a crash harmless.
                self.conn.move_to(uids, folder).await?;
            }
        }
        Ok(())
    }

    fn can_wait_for_change(&self) -> bool {
        self.conn.has_capability("IDLE")
    }

    async fn wait_for_change(
        self,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(ImapSource, IdleOutcome), SourceError> {
        let ImapSource {
            conn,
            known_folders,
        } = self;
        let (conn, outcome) = conn.idle(max_wait, shutdown).await?;
        Ok((
            ImapSource {
                conn,
                known_folders,
            },
            outcome,
        ))
    }

    async fn sent_folder(&mut self) -> Result<Option<String>, SourceError> {
        Ok(self.conn.sent_folder().await?)
    }

    async fn keep_copy(
        &mut self,
        folder: &str,
        message_id: &str,
        raw: &[u8],
    ) -> Result<CopyKept, SourceError> {
        Ok(self.conn.keep_copy(folder, message_id, raw).await?)
    }

    async fn logout(self) {
        self.conn.logout().await;
    }
}
