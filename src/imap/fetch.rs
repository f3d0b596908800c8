//! Reading mail: the size-first listing above a checkpoint (confirmed by `UID SEARCH`), capped
//! body downloads, and the identifying header fields of mail too large to download.

use std::collections::HashSet;

use futures::TryStreamExt;

use super::connection::{protocol, within};
use super::{Body, Connection, ImapError, MessageSummary, Uid, uid_set};

impl Connection {
    /// Lists the messages with a UID above `last_uid`, with their sizes, without any body.
    ///
    /// The listing is confirmed with `UID SEARCH`: a FETCH that the server ends with NO looks like
    /// a short, complete result, and a message missed here would be skipped for good.
    pub async fn list_above(&mut self, last_uid: u32) -> Result<Vec<MessageSummary>, ImapError> {
        let first = last_uid.saturating_add(1);
        let range = format!("{first}:*");
        let mut listed: Vec<MessageSummary> = within(self.command_timeout, "UID FETCH", async {
            let mut stream = self
                .session
                .uid_fetch(&range, "(UID RFC822.SIZE FLAGS INTERNALDATE)")
                .await
                .map_err(protocol("UID FETCH"))?;
            // Map each response as it arrives: the library's response buffers are dropped at once,
            // so memory stays small however many messages the folder holds.
            let mut listed = Vec::new();
            while let Some(fetch) = stream.try_next().await.map_err(protocol("UID FETCH"))? {
                let Some(uid) = fetch.uid else { continue };
                if uid < first {
                    continue;
                }
                listed.push(MessageSummary {
                    uid: Uid(uid),
                    size: u64::from(fetch.size.unwrap_or(0)),
                    internal_date_ms: fetch.internal_date().map(|d| d.timestamp_millis()),
                    seen: fetch
                        .flags()
                        .any(|f| matches!(f, async_imap::types::Flag::Seen)),
                });
            }
            Ok(listed)
        })
        .await?;
        listed.sort_by_key(|m| m.uid);
        listed.dedup_by_key(|m| m.uid);

        let searched = within(self.command_timeout, "UID SEARCH", async {
            self.session
                .uid_search(format!("UID {range}"))
                .await
                .map_err(protocol("UID SEARCH"))
        })
        .await?;
        let listed_uids: HashSet<u32> = listed.iter().map(|m| m.uid.0).collect();
        let missing: Vec<u32> = searched
            .into_iter()
            .filter(|uid| *uid >= first && !listed_uids.contains(uid))
            .collect();
        if !missing.is_empty() {
            return Err(ImapError::Unexpected {
                operation: "UID FETCH",
                detail: format!(
                    "the listing missed {} message(s) that UID SEARCH found (e.g. UID {}); retrying later",
                    missing.len(),
                    missing[0]
                ),
            });
        }
        Ok(listed)
    }

    /// Downloads a batch of messages in one round trip, but never more than `cap + 1` bytes of any
    /// of them (`BODY.PEEK[]<0.N>`, which also leaves `\Seen` alone). Every requested UID must come
    /// back: a missing one may be a NO the library swallowed, so it is an error, never an empty mail.
    pub async fn fetch_bodies(
        &mut self,
        uids: &[Uid],
        cap: u64,
    ) -> Result<Vec<(Uid, Body)>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let limit = cap.saturating_add(1);
        let set = uid_set(uids);
        let mut bodies = within(self.command_timeout, "UID FETCH body", async {
            let mut stream = self
                .session
                .uid_fetch(&set, format!("(UID BODY.PEEK[]<0.{limit}>)"))
                .await
                .map_err(protocol("UID FETCH body"))?;
            let mut bodies = std::collections::HashMap::with_capacity(uids.len());
            // Take each body out as it arrives, so the library's response buffers are dropped.
            while let Some(fetch) = stream
                .try_next()
                .await
                .map_err(protocol("UID FETCH body"))?
            {
                if let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) {
                    let body = if body.len() as u64 > cap {
                        Body::TooLarge
                    } else {
                        Body::Complete(body.to_vec())
                    };
                    bodies.insert(uid, body);
                }
            }
            Ok(bodies)
        })
        .await?;
        uids.iter()
            .map(|uid| match bodies.remove(&uid.0) {
                Some(body) => Ok((*uid, body)),
                None => Err(ImapError::Unexpected {
                    operation: "UID FETCH body",
                    detail: format!("the server returned no body for UID {uid}"),
                }),
            })
            .collect()
    }

    /// The header fields that identify a message, without its body: what is recorded for mail
    /// that is too large to download.
    pub async fn fetch_identifying_headers(&mut self, uid: Uid) -> Result<Vec<u8>, ImapError> {
        let header = within(self.command_timeout, "UID FETCH header", async {
            let stream = self
                .session
                .uid_fetch(
                    uid.to_string(),
                    "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM SUBJECT DATE RETURN-PATH REPLY-TO AUTO-SUBMITTED PRECEDENCE LIST-ID X-LOOP)])",
                )
                .await
                .map_err(protocol("UID FETCH header"))?;
            let fetches: Vec<_> = stream
                .try_collect()
                .await
                .map_err(protocol("UID FETCH header"))?;
            Ok(fetches
                .iter()
                .find(|f| f.uid == Some(uid.0))
                .and_then(|f| f.header().map(<[u8]>::to_vec)))
        })
        .await?;
        header.ok_or_else(|| ImapError::Unexpected {
            operation: "UID FETCH header",
            detail: format!("the server returned no header for UID {uid}"),
        })
    }
}
