//! The sender's copies in the Sent folder (`sent_copy = "append"`), on the mail-source seam:
//! `reply` knows no mail-source protocol, so intake hands the sender this
//! [`SentCopies`](crate::reply::sender::SentCopies) built on its own login.

use std::future::Future;
use std::pin::Pin;

use tracing::debug;

use super::session::{Login, login_to};
use crate::config::SentCopy;
use crate::mail_source::{MailSource, SourceErrorKind};
use crate::reply::sender::{KeptCopies, SentCopies, SentMessage};

/// Copies to the Sent folder of `login.mailbox` over its own session, opened per call.
pub struct SourceSentCopies<'a> {
    pub login: Login<'a>,
}

impl SentCopies for SourceSentCopies<'_> {
    fn keep<'a>(
        &'a self,
        messages: &'a [SentMessage],
    ) -> Pin<Box<dyn Future<Output = Result<KeptCopies, String>> + Send + 'a>> {
        Box::pin(async move {
            let configured = match &self.login.mailbox.sent_copy {
                SentCopy::Append { folder } => folder.clone(),
                SentCopy::Server | SentCopy::None => None,
            };
            let session = login_to(&self.login).await.map_err(|e| e.to_string())?;
            let mut source = session.source;
            let folder = match configured {
                Some(folder) => folder,
                None => match source.sent_folder().await {
                    Ok(Some(folder)) => folder,
                    Ok(None) => {
                        source.logout().await;
                        return Err("the server marks no folder \\Sent (RFC 6154 SPECIAL-USE)\n  fix: set sent_folder to the folder that keeps the mailbox's sent mail".into());
                    }
                    Err(e) => {
                        source.logout().await;
                        return Err(format!("cannot find the Sent folder: {e}"));
                    }
                },
            };
            let mut outcomes = Vec::with_capacity(messages.len());
            let mut lost = None;
            for message in messages {
                if let Some(error) = &lost {
                    outcomes.push(Err(format!("not tried: {error}")));
                    continue;
                }
                match source
                    .keep_copy(&folder, &message.message_id, &message.raw)
                    .await
                {
                    Ok(kept) => {
                        debug!(message_id = %message.message_id, %folder, ?kept, "copy kept");
                        outcomes.push(Ok(kept));
                    }
                    // The folder refused this one (too large, over quota, gone); the next may fit.
                    Err(e) if e.kind() == SourceErrorKind::Refused => {
                        outcomes.push(Err(format!("the folder `{folder}`: {e}")));
                    }
                    Err(e) => {
                        let error = format!("the session was lost: {e}");
                        outcomes.push(Err(error.clone()));
                        lost = Some(error);
                    }
                }
            }
            if lost.is_none() {
                source.logout().await;
            }
            Ok((folder, outcomes))
        })
    }
}
