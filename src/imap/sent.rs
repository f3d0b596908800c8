//! Copies of sent mail, for servers whose submission keeps none (Postfix with Dovecot, most hosted
//! IMAP; Exchange Online keeps its own): the folder the server marks `\Sent` (RFC 6154
//! SPECIAL-USE), and an APPEND that happens once — the folder is searched for the message's
//! Message-ID first, so a copy whose APPEND answer was lost (a crash, a reset) is not appended a
//! second time.

use async_imap::imap_proto::NameAttribute;
use futures::TryStreamExt;

use super::connection::{protocol, within};
use super::folders::quoted_string;
use super::{Connection, ImapError, decode_folder_name, encode_folder_name};
use crate::mail_source::CopyKept;

impl Connection {
    /// The folder the server marks `\Sent` in its LIST answer (RFC 6154 §2; Exchange Online,
    /// Dovecot and Gmail do, in the plain LIST), decoded; `None` when none is marked.
    pub async fn sent_folder(&mut self) -> Result<Option<String>, ImapError> {
        let found = within(self.command_timeout, "LIST", async {
            let stream = self
                .session
                .list(Some(""), Some("*"))
                .await
                .map_err(protocol("LIST"))?;
            let names: Vec<_> = stream.try_collect().await.map_err(protocol("LIST"))?;
            Ok(names
                .iter()
                .find(|name| {
                    name.attributes().contains(&NameAttribute::Sent)
                        && !name.attributes().contains(&NameAttribute::NoSelect)
                })
                .map(|name| decode_folder_name(name.name())))
        })
        .await?;
        self.drain_unsolicited();
        Ok(found)
    }

    /// Whether `folder` holds a message whose Message-ID is `message_id` (without angle
    /// brackets). Opens `folder` read-only unless it is the folder open already (a SEARCH sees
    /// what arrived since, the server's state at the command), so a run of copies costs one
    /// EXAMINE.
    pub async fn has_message_id(
        &mut self,
        folder: &str,
        message_id: &str,
    ) -> Result<bool, ImapError> {
        if self.selected.as_deref() != Some(folder) {
            self.examine(folder).await?;
        }
        let criteria = format!(
            "HEADER Message-ID {}",
            quoted_string(&format!("<{message_id}>"))
        );
        Ok(!self.search(&criteria, |_| true).await?.is_empty())
    }

    /// Keeps `raw` in `folder`, flagged `\Seen`, unless a message whose Message-ID is
    /// `message_id` (without angle brackets) is there already. Leaves `folder` selected.
    pub async fn keep_copy(
        &mut self,
        folder: &str,
        message_id: &str,
        raw: &[u8],
    ) -> Result<CopyKept, ImapError> {
        if self.has_message_id(folder, message_id).await? {
            return Ok(CopyKept::AlreadyThere);
        }
        let encoded = encode_folder_name(folder);
        within(self.command_timeout, "APPEND", async {
            self.session
                .append(&encoded, Some("(\\Seen)"), None, raw)
                .await
                .map_err(|e| match e {
                    // The server answered the command line itself (no continuation): a refusal
                    // such as `[TOOBIG]`, `[OVERQUOTA]` or `[TRYCREATE]` (RFC 5530), whose text
                    // async-imap does not keep.
                    async_imap::error::Error::Append => ImapError::Protocol {
                        operation: "APPEND",
                        source: async_imap::error::Error::No(format!(
                            "the server refused to take the message into the folder `{folder}` (too large for it, over quota, or the folder is gone)"
                        )),
                    },
                    other => protocol("APPEND")(other),
                })
        })
        .await?;
        self.drain_unsolicited();
        Ok(CopyKept::Appended)
    }
}
