//! Waiting for new mail in IDLE (RFC 2177).

use std::time::Duration;

use super::connection::{protocol, within};
use super::{Connection, IdleOutcome, ImapError};

impl Connection {
    /// Waits in IDLE (RFC 2177) until the server reports a change, `max_wait` passes, or `shutdown`
    /// is cancelled; then ends IDLE and hands the connection back. async-imap restarts its own
    /// timeout on every server line (keepalives), so the wall-clock limit is enforced here; and
    /// it reports a dropped connection as an interrupt, which is an error here since we never
    /// interrupt it ourselves.
    pub async fn idle(
        self,
        max_wait: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Connection, IdleOutcome), ImapError> {
        use async_imap::extensions::idle::IdleResponse;
        let mut this = self;
        // Mail announced since the listing (in the answer to a disposition, say) is not
        // announced again in IDLE: sweep now rather than wait out `max_wait`.
        this.drain_unsolicited();
        if this.new_mail {
            this.new_mail = false;
            return Ok((this, IdleOutcome::Changed));
        }
        let Connection {
            session,
            login,
            capabilities,
            command_timeout,
            selected,
            new_mail: _,
        } = this;
        let mut handle = session.idle();
        within(command_timeout, "IDLE", async {
            handle.init().await.map_err(protocol("IDLE"))
        })
        .await?;
        let outcome = {
            let (wait, _interrupt) = handle.wait_with_timeout(max_wait);
            tokio::select! {
                result = tokio::time::timeout(max_wait, wait) => match result {
                    Err(_) | Ok(Ok(IdleResponse::Timeout)) => IdleOutcome::Timeout,
                    Ok(Ok(IdleResponse::NewData(_))) => IdleOutcome::Changed,
                    Ok(Ok(IdleResponse::ManualInterrupt)) => {
                        return Err(ImapError::Unexpected {
                            operation: "IDLE",
                            detail: "the connection was lost while idling".into(),
                        });
                    }
                    Ok(Err(source)) => return Err(ImapError::Protocol { operation: "IDLE", source }),
                },
                _ = shutdown.cancelled() => IdleOutcome::Shutdown,
            }
        };
        let session = within(command_timeout, "IDLE DONE", async {
            handle.done().await.map_err(protocol("IDLE DONE"))
        })
        .await?;
        Ok((
            Connection {
                session,
                login,
                capabilities,
                command_timeout,
                selected,
                new_mail: false,
            },
            outcome,
        ))
    }
}
