//! Folders and dispositions: SELECT or EXAMINE, LIST, STATUS and CREATE, and `\Seen`, MOVE (or
//! COPY and EXPUNGE) and delete, sent as commands whose tagged status is checked.

use futures::TryStreamExt;

use super::connection::{protocol, server_text, within};
use super::{Connection, ImapError, SelectedFolder, Uid, encode_folder_name, uid_set};

/// A folder name as an IMAP quoted string: modified UTF-7, then [`quoted_string`].
fn quoted(folder: &str) -> String {
    quoted_string(&encode_folder_name(folder))
}

/// An IMAP quoted string (RFC 3501 §4.3) of ASCII text: `"` and `\` escaped.
pub(super) fn quoted_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Connection {
    /// Selects `folder` read-write.
    pub async fn select(&mut self, folder: &str) -> Result<SelectedFolder, ImapError> {
        self.open_folder(folder, false).await
    }

    /// Opens `folder` read-only (EXAMINE): nothing in it can change through this session.
    pub async fn examine(&mut self, folder: &str) -> Result<SelectedFolder, ImapError> {
        self.open_folder(folder, true).await
    }

    async fn open_folder(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> Result<SelectedFolder, ImapError> {
        let encoded = encode_folder_name(folder);
        self.selected = None;
        let mailbox = within(self.command_timeout, "SELECT", async {
            if read_only {
                self.session
                    .examine(&encoded)
                    .await
                    .map_err(protocol("EXAMINE"))
            } else {
                self.session
                    .select(&encoded)
                    .await
                    .map_err(protocol("SELECT"))
            }
        })
        .await
        .map_err(|e| match e {
            // Exchange Online accepts the token but cannot open the mailbox for this identity.
            ImapError::Protocol {
                source: async_imap::error::Error::No(text),
                ..
            } if text.contains("authenticated but not connected") => ImapError::AuthFailed {
                login: self.login.clone(),
                response: server_text(&text),
                server_detail: None,
            },
            other => other,
        })?;
        let uidvalidity = mailbox.uid_validity.ok_or_else(|| ImapError::Unexpected {
            operation: "SELECT",
            detail: format!("the server sent no UIDVALIDITY for folder {folder}"),
        })?;
        self.selected = Some(folder.to_string());
        Ok(SelectedFolder {
            uidvalidity,
            uid_next: mailbox.uid_next,
            exists: mailbox.exists,
        })
    }

    /// Sets `\Seen` on `uids`.
    pub async fn mark_seen(&mut self, uids: &[Uid]) -> Result<(), ImapError> {
        self.checked(
            "UID STORE",
            format!("UID STORE {} +FLAGS.SILENT (\\Seen)", uid_set(uids)),
        )
        .await
    }

    /// Moves `uids` to `folder`: `UID MOVE` (RFC 6851) where offered, else COPY, `\Deleted` and
    /// `UID EXPUNGE` (RFC 4315) or, without UIDPLUS, leaves the originals flagged `\Deleted` for the
    /// next EXPUNGE (a plain EXPUNGE could remove other clients' deleted mail).
    pub async fn move_to(&mut self, uids: &[Uid], folder: &str) -> Result<(), ImapError> {
        let set = uid_set(uids);
        let target = quoted(folder);
        if self.has_capability("MOVE") {
            return self
                .checked("UID MOVE", format!("UID MOVE {set} {target}"))
                .await;
        }
        self.checked("UID COPY", format!("UID COPY {set} {target}"))
            .await?;
        self.delete(uids).await
    }

    /// Flags `uids` `\Deleted` and expunges exactly those (UIDPLUS); without UIDPLUS they stay
    /// flagged, for the same reason as in [`Connection::move_to`].
    pub async fn delete(&mut self, uids: &[Uid]) -> Result<(), ImapError> {
        let set = uid_set(uids);
        self.checked(
            "UID STORE",
            format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
        )
        .await?;
        if self.has_capability("UIDPLUS") {
            self.checked("UID EXPUNGE", format!("UID EXPUNGE {set}"))
                .await?;
        }
        Ok(())
    }

    /// Creates `folder` unless it exists (`[ALREADYEXISTS]`, RFC 5530, or present in LIST).
    pub async fn ensure_folder(&mut self, folder: &str) -> Result<(), ImapError> {
        if self.folder_exists(folder).await? {
            return Ok(());
        }
        match self
            .checked("CREATE", format!("CREATE {}", quoted(folder)))
            .await
        {
            Ok(()) => Ok(()),
            // Created concurrently by someone else: fine.
            Err(ImapError::Protocol {
                source: async_imap::error::Error::No(text),
                ..
            }) if text.contains("AlreadyExists")
                || text.to_ascii_uppercase().contains("ALREADYEXISTS") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `folder` exists (LIST), without creating it.
    pub async fn folder_exists(&mut self, folder: &str) -> Result<bool, ImapError> {
        let encoded = encode_folder_name(folder);
        within(self.command_timeout, "LIST", async {
            let stream = self
                .session
                .list(Some(""), Some(&encoded))
                .await
                .map_err(protocol("LIST"))?;
            let names: Vec<_> = stream.try_collect().await.map_err(protocol("LIST"))?;
            Ok(names.iter().any(|n| n.name() == encoded))
        })
        .await
    }

    /// The number of messages in `folder` (STATUS MESSAGES), without selecting it.
    pub async fn message_count(&mut self, folder: &str) -> Result<u32, ImapError> {
        let encoded = encode_folder_name(folder);
        let status = within(self.command_timeout, "STATUS", async {
            self.session
                .status(&encoded, "(MESSAGES)")
                .await
                .map_err(protocol("STATUS"))
        })
        .await?;
        self.drain_unsolicited();
        Ok(status.exists)
    }

    /// Sends a command whose answer carries no data we need, and checks its tagged status.
    async fn checked(&mut self, operation: &'static str, command: String) -> Result<(), ImapError> {
        within(self.command_timeout, operation, async {
            self.session
                .run_command_and_check_ok(&command)
                .await
                .map_err(protocol(operation))
        })
        .await?;
        // Unsolicited EXPUNGE/EXISTS responses are informational here; drain them so the library's
        // bounded channel never fills.
        self.drain_unsolicited();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_quoted_and_escaped() {
        assert_eq!(quoted("Processed"), "\"Processed\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        // Message-IDs for `UID SEARCH HEADER Message-ID` (`sent.rs`), a quoted local part too.
        assert_eq!(
            quoted_string("<mailintake.1.2@helpdesk.test>"),
            "\"<mailintake.1.2@helpdesk.test>\""
        );
        assert_eq!(quoted_string("<\"a\\b\"@x>"), "\"<\\\"a\\\\b\\\"@x>\"");
    }
}
