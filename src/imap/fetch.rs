//! Reading mail: the size-first listing above a checkpoint (`UID SEARCH`, then a `UID FETCH` that
//! must cover what it found), capped body downloads, and the identifying header fields of mail
//! too large to download.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use tracing::debug;

use super::connection::{protocol, within};
use super::{Body, Connection, ImapError, MessageSummary, Uid, uid_set};
use crate::failpoint::{self, Point};

/// How many times a listing asks again for UIDs that `UID SEARCH` found but the `UID FETCH` did not
/// return, before it gives up until the next sweep.
const LISTING_ROUNDS: usize = 3;

impl Connection {
    /// Lists the messages with a UID above `last_uid`, with their sizes, without any body.
    ///
    /// `UID SEARCH` comes first and says which UIDs the listing must cover; the `UID FETCH` of
    /// sizes and flags must then return every one of them: a FETCH that the server ends with NO
    /// looks like a short, complete result, and a message missed here would be skipped for good.
    /// A UID searched but not fetched is searched again (and fetched again): if it is gone, it was
    /// expunged meanwhile, which is not an error. Mail delivered after the search is left to the
    /// next sweep (its UID is higher than any listed now, so the checkpoint cannot pass it), even
    /// when the FETCH would show it. An empty search lists nothing, which delays mail but never
    /// loses it: the checkpoint does not move.
    pub async fn list_above(&mut self, last_uid: u32) -> Result<Vec<MessageSummary>, ImapError> {
        // What was announced before this listing is in it.
        self.drain_unsolicited();
        self.new_mail = false;
        let first = last_uid.saturating_add(1);
        failpoint::reached(Point::Listing).await;
        // `n:*` also matches the highest message when its UID is below n.
        let mut wanted = self
            .search_uids(&format!("{first}:*"), |uid| uid >= first)
            .await?;
        let mut listed = Vec::with_capacity(wanted.len());
        let mut round = 0;
        while let (Some(&low), Some(&high)) = (wanted.first(), wanted.last()) {
            if round == LISTING_ROUNDS {
                return Err(ImapError::Unexpected {
                    operation: "UID FETCH",
                    detail: format!(
                        "the listing missed {} message(s) that UID SEARCH found, {LISTING_ROUNDS} times (e.g. UID {low}); retrying later",
                        wanted.len(),
                    ),
                });
            }
            round += 1;
            // One range, not the searched set (which may have many gaps): every UID in it that
            // SEARCH did not report arrived later and is not listed now.
            let range = if round == 1 {
                format!("{low}:{high}")
            } else {
                uid_set(&wanted.iter().map(|u| Uid(*u)).collect::<Vec<_>>())
            };
            let mut fetched = self.fetch_summaries(&range).await?;
            let mut missing = Vec::new();
            for uid in wanted {
                match fetched.remove(&uid) {
                    Some(summary) => listed.push(summary),
                    None => missing.push(uid),
                }
            }
            if missing.is_empty() {
                break;
            }
            let asked: HashSet<u32> = missing.iter().copied().collect();
            let set = uid_set(&missing.iter().map(|u| Uid(*u)).collect::<Vec<_>>());
            wanted = self.search_uids(&set, |uid| asked.contains(&uid)).await?;
            debug!(
                n_missing = missing.len(),
                n_gone = missing.len() - wanted.len(),
                "UID SEARCH found messages the listing FETCH did not return; those still there are fetched again, the others were expunged meanwhile"
            );
        }
        listed.sort_by_key(|m| m.uid);
        Ok(listed)
    }

    /// `UID SEARCH UID first:last` (with `UNSEEN` when `unseen_only`): which messages the folder
    /// has in that range, ascending. No message data is sent.
    pub async fn search_range(
        &mut self,
        first: Uid,
        last: Uid,
        unseen_only: bool,
    ) -> Result<Vec<Uid>, ImapError> {
        let (first, last) = (first.0, last.0);
        let criteria = if unseen_only {
            format!("{first}:{last} UNSEEN")
        } else {
            format!("{first}:{last}")
        };
        // `a:b` matches the highest message too when every UID is below a (as `n:*` does).
        let uids = self
            .search_uids(&criteria, |uid| (first..=last).contains(&uid))
            .await?;
        Ok(uids.into_iter().map(Uid).collect())
    }

    /// The summaries of exactly `uids` (sizes, flags, INTERNALDATE), ascending; a UID that is gone
    /// is left out.
    pub async fn list_uids(&mut self, uids: &[Uid]) -> Result<Vec<MessageSummary>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: HashSet<Uid> = uids.iter().copied().collect();
        let mut listed: Vec<MessageSummary> = self
            .fetch_summaries(&uid_set(uids))
            .await?
            .into_values()
            .filter(|m| wanted.contains(&m.uid))
            .collect();
        listed.sort_by_key(|m| m.uid);
        Ok(listed)
    }

    /// The UIDs `UID SEARCH UID <set>` finds that `keep` accepts, ascending. The answer is read
    /// up to the command's tagged completion, which must be OK: async-imap's `uid_search` takes a
    /// connection that ends first (after a `* BYE`, a reset) for an empty, successful answer, and
    /// "nothing found" here means "expunged", which would let the checkpoint pass mail the
    /// server merely failed to deliver.
    async fn search_uids(
        &mut self,
        set: &str,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, ImapError> {
        self.search(&format!("UID {set}"), keep).await
    }

    /// `UID SEARCH <criteria>`: the UIDs found that `keep` accepts, ascending, read up to the
    /// tagged completion as [`Connection::search_uids`] says.
    pub(super) async fn search(
        &mut self,
        criteria: &str,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, ImapError> {
        use async_imap::imap_proto::{MailboxDatum, Response, Status};
        let session = &mut self.session;
        let new_mail = &mut self.new_mail;
        let searched = within(self.command_timeout, "UID SEARCH", async {
            let tag = session
                .run_command(format!("UID SEARCH {criteria}"))
                .await
                .map_err(protocol("UID SEARCH"))?;
            let mut found = Vec::new();
            loop {
                let response = session
                    .read_response()
                    .await
                    .map_err(|e| protocol("UID SEARCH")(e.into()))?
                    .ok_or_else(|| ImapError::Unexpected {
                        operation: "UID SEARCH",
                        detail: "the connection ended before the server completed the command"
                            .into(),
                    })?;
                match response.parsed() {
                    Response::MailboxData(MailboxDatum::Search(uids)) => {
                        found.extend(uids.iter().copied())
                    }
                    // New mail announced while the server answers: perhaps not in the answer.
                    Response::MailboxData(MailboxDatum::Exists(_)) => *new_mail = true,
                    Response::MailboxData(MailboxDatum::Recent(n)) if *n > 0 => *new_mail = true,
                    Response::Done {
                        tag: done,
                        status,
                        outcome,
                    } if *done == tag => {
                        return match status {
                            Status::Ok => Ok(found),
                            other => Err(ImapError::Unexpected {
                                operation: "UID SEARCH",
                                detail: format!(
                                    "the server answered {other:?}: {}",
                                    outcome.information.as_deref().unwrap_or("")
                                ),
                            }),
                        };
                    }
                    // Untagged updates (EXISTS, EXPUNGE, FETCH flags) are not needed here: the
                    // sweep lists again next time.
                    _ => {}
                }
            }
        })
        .await?;
        let mut uids: Vec<u32> = searched.into_iter().filter(|uid| keep(*uid)).collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// `UID FETCH <set> (UID RFC822.SIZE FLAGS INTERNALDATE)`, by UID.
    async fn fetch_summaries(
        &mut self,
        set: &str,
    ) -> Result<HashMap<u32, MessageSummary>, ImapError> {
        within(self.command_timeout, "UID FETCH", async {
            let mut stream = self
                .session
                .uid_fetch(set, "(UID RFC822.SIZE FLAGS INTERNALDATE)")
                .await
                .map_err(protocol("UID FETCH"))?;
            // Map each response as it arrives: the library's response buffers are dropped at once,
            // so memory stays small however many messages the folder holds.
            let mut fetched = HashMap::new();
            while let Some(fetch) = stream.try_next().await.map_err(protocol("UID FETCH"))? {
                let Some(uid) = fetch.uid else { continue };
                fetched.insert(
                    uid,
                    MessageSummary {
                        uid: Uid(uid),
                        size: u64::from(fetch.size.unwrap_or(0)),
                        internal_date_ms: fetch.internal_date().map(|d| d.timestamp_millis()),
                        seen: fetch
                            .flags()
                            .any(|f| matches!(f, async_imap::types::Flag::Seen)),
                    },
                );
            }
            Ok(fetched)
        })
        .await
    }

    /// Downloads a batch of messages in one round trip, but never more than `cap + 1` bytes of any
    /// of them (`BODY.PEEK[]<0.N>`, which also leaves `\Seen` alone). Every requested UID must come
    /// back: a missing one may be a NO the library swallowed, so it is never an empty mail. `UID
    /// SEARCH` tells the two cases apart: gone (expunged since the listing), it is left out of the
    /// result; still there, the server refused it on a session that works (the SEARCH did), and
    /// it comes back as [`Body::Refused`]. A lost connection fails the SEARCH too: an error.
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
        let missing: Vec<Uid> = uids
            .iter()
            .filter(|uid| !bodies.contains_key(&uid.0))
            .copied()
            .collect();
        if !missing.is_empty() {
            let asked: HashSet<u32> = missing.iter().map(|uid| uid.0).collect();
            let still_there = self
                .search_uids(&uid_set(&missing), |uid| asked.contains(&uid))
                .await?;
            for uid in &still_there {
                bodies.insert(
                    *uid,
                    Body::Refused(format!(
                        "IMAP UID FETCH body: the server returned no body for UID {uid}, which UID SEARCH still finds (a tagged NO or BAD, e.g. a message it cannot read now)"
                    )),
                );
            }
            if still_there.len() < missing.len() {
                debug!(
                    n_gone = missing.len() - still_there.len(),
                    "messages expunged before their bodies were read; left out"
                );
            }
        }
        Ok(uids
            .iter()
            .filter_map(|uid| bodies.remove(&uid.0).map(|body| (*uid, body)))
            .collect())
    }

    /// The header fields that identify a message, without its body: what is recorded for mail
    /// that is too large to download, and what its notice is decided on (the receiving server's
    /// `Authentication-Results` and Exchange's spam level among them).
    pub async fn fetch_identifying_headers(&mut self, uid: Uid) -> Result<Vec<u8>, ImapError> {
        let header = within(self.command_timeout, "UID FETCH header", async {
            let stream = self
                .session
                .uid_fetch(
                    uid.to_string(),
                    "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM SUBJECT DATE RETURN-PATH REPLY-TO AUTO-SUBMITTED PRECEDENCE LIST-ID X-LOOP X-AUTO-RESPONSE-SUPPRESS AUTHENTICATION-RESULTS X-MS-EXCHANGE-ORGANIZATION-SCL)])",
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
