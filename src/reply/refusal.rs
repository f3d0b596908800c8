//! Whom a permanent SMTP refusal concerns, from the command it answered and its RFC 3463
//! enhanced status code: the recipient (that row fails) or the sender (its From address is
//! blocked). Pure; `smtp.rs` calls it with what the server said.

/// The SMTP command a refusal answered: RFC 3463's address codes mean the sender or the recipient
/// depending on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    MailFrom,
    RcptTo,
    /// `DATA` or the end of the message: the submission as a whole.
    Data,
}

/// Whom a permanent (5xx) refusal concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This recipient only: the row fails, the rest of the outbox goes on.
    Recipient,
    /// The From address (or the mailbox behind it): its rows wait.
    Sender,
    /// This message (x.3.4, too big for the server): the row fails, as for a recipient, since
    /// sending the same bytes again cannot help.
    Message,
}

/// The enhanced status code (RFC 3463, `class.subject.detail`) of a reply such as
/// `553 5.7.1 <a@b>: …`, if it carries one.
pub fn enhanced_code(reply: &str) -> Option<(u16, u16, u16)> {
    reply
        .split(|c: char| c.is_whitespace() || c == ':' || c == ';' || c == '(' || c == ')')
        .find_map(|word| {
            let mut parts = word.split('.');
            let class = parts.next()?.parse().ok()?;
            let subject = parts.next()?.parse().ok()?;
            let detail = parts.next()?.parse().ok()?;
            (parts.next().is_none()
                && matches!(class, 2 | 4 | 5)
                && subject < 1000
                && detail < 1000)
                .then_some((class, subject, detail))
        })
}

/// Whom a permanent refusal of `command` concerns. Only a refusal that names the recipient fails
/// a single row; anything else blocks the From address, because failing row after row for a
/// problem of the sender would throw away every acknowledgement in the outbox.
///
/// - Postfix names the address it refuses (`Sender address rejected`, `Recipient address
///   rejected`) and, with its default `smtpd_delay_reject = yes`, refuses a sender only at RCPT
///   TO; Exchange's Edge Blocking uses the same words (`550 5.4.1 Recipient address rejected`).
/// - A refusal of MAIL FROM is about the sender.
/// - x.1.x (addressing): x.1.7 and x.1.8 are the sender's address, x.1.0 whichever address the
///   command named; the other details (x.1.1 unknown user, x.1.2 bad domain, x.1.10 null MX …) are
///   the recipient's.
/// - x.2.x (mailbox): at RCPT TO the recipient's mailbox (disabled, full); after DATA the
///   sending mailbox (Exchange's `5.2.252 SendAsDenied`, `5.2.2` submission quota).
/// - x.7.x (policy: `5.7.60` SendAs, `5.7.708` tenant blocked) and every other class: the sender.
/// - No enhanced code: at RCPT TO the recipient (RFC 5321's 550/553), else the sender.
/// - x.3.4 (message too big), or Postfix's `message size exceeds` wherever it comes (MAIL FROM
///   with `SIZE=`, or the end of DATA): the message.
pub fn refused(command: Command, reply: &str) -> Refused {
    let lower = reply.to_ascii_lowercase();
    if matches!(enhanced_code(reply), Some((_, 3, 4))) || lower.contains("message size exceeds") {
        return Refused::Message;
    }
    if lower.contains("sender address rejected") {
        return Refused::Sender;
    }
    if lower.contains("recipient address rejected") {
        return Refused::Recipient;
    }
    if command == Command::MailFrom {
        return Refused::Sender;
    }
    let at_rcpt = command == Command::RcptTo;
    match enhanced_code(reply) {
        Some((_, 1, 7 | 8)) => Refused::Sender,
        Some((_, 1, 0)) if at_rcpt => Refused::Recipient,
        Some((_, 1, 0)) => Refused::Sender,
        Some((_, 1, _)) => Refused::Recipient,
        Some((_, 2, _)) if at_rcpt => Refused::Recipient,
        Some(_) => Refused::Sender,
        None if at_rcpt => Refused::Recipient,
        None => Refused::Sender,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Command::{Data, MailFrom, RcptTo};
    use Refused::{Message, Recipient, Sender};

    /// Replies as Exchange Online and Postfix send them, with the command they answered and whom
    /// they concern.
    #[test]
    fn refusals_are_classified_by_enhanced_code_and_command() {
        let cases = [
            // Exchange Online.
            (
                Data,
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                Sender,
            ),
            (
                MailFrom,
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                Sender,
            ),
            (
                Data,
                "554 5.2.252 SendAsDenied; support@contoso.com not allowed to send as sales@contoso.com; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
                Sender,
            ),
            (
                Data,
                "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Sender,
            ),
            (
                Data,
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception",
                Sender,
            ),
            (
                MailFrom,
                "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
                Sender,
            ),
            (
                MailFrom,
                "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains.",
                Sender,
            ),
            (
                MailFrom,
                "550 5.1.8 Access denied, bad outbound sender",
                Sender,
            ),
            (
                RcptTo,
                "550 5.1.8 Access denied, bad outbound sender",
                Sender,
            ),
            (
                RcptTo,
                "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
                Sender,
            ),
            (
                RcptTo,
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                Recipient,
            ),
            (
                RcptTo,
                "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
                Recipient,
            ),
            (
                RcptTo,
                "550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found",
                Recipient,
            ),
            // Too big: this message fails; the From address's other rows are not held.
            (
                Data,
                "552 5.3.4 Message size exceeds fixed maximum message size",
                Message,
            ),
            (
                MailFrom,
                "552 5.3.4 Message size exceeds fixed limit",
                Message,
            ),
            // Postfix: sender restrictions apply at RCPT TO (smtpd_delay_reject = yes).
            (
                RcptTo,
                "553 5.7.1 <someone.else@helpdesk.test>: Sender address rejected: not owned by user support@helpdesk.test",
                Sender,
            ),
            (
                MailFrom,
                "553 5.7.1 <someone.else@helpdesk.test>: Sender address rejected: not owned by user support@helpdesk.test",
                Sender,
            ),
            (
                RcptTo,
                "554 5.7.1 <noreply@helpdesk.test>: Sender address rejected: Access denied",
                Sender,
            ),
            (
                RcptTo,
                "450 4.1.8 <a@nowhere.invalid>: Sender address rejected: Domain not found",
                Sender,
            ),
            (
                RcptTo,
                "550 5.1.1 <unknown-x@customer.test>: Recipient address rejected: User unknown in virtual mailbox table",
                Recipient,
            ),
            (
                RcptTo,
                "554 5.7.1 <x@customer.test>: Recipient address rejected: Access denied",
                Recipient,
            ),
            (
                RcptTo,
                "504 5.5.2 <x>: Recipient address rejected: need fully-qualified address",
                Recipient,
            ),
            (
                RcptTo,
                "554 5.7.1 <x@elsewhere.example>: Relay access denied",
                Sender,
            ),
            (
                RcptTo,
                "552 5.2.2 <x@customer.test>: Mailbox full",
                Recipient,
            ),
            (RcptTo, "550 5.2.1 Mailbox disabled", Recipient),
            (Data, "554 5.6.0 Message content rejected", Sender),
            // x.1.0: whichever address the command named.
            (RcptTo, "550 5.1.0 Address rejected", Recipient),
            (MailFrom, "550 5.1.0 Address rejected", Sender),
            // No enhanced code (a server without ENHANCEDSTATUSCODES).
            (
                RcptTo,
                "550 Requested action not taken: mailbox unavailable",
                Recipient,
            ),
            (
                MailFrom,
                "553 Requested action not taken: mailbox name not allowed",
                Sender,
            ),
            (Data, "554 Transaction failed", Sender),
        ];
        for (command, reply, expected) in cases {
            assert_eq!(refused(command, reply), expected, "{command:?} {reply}");
        }
    }

    #[test]
    fn the_enhanced_code_is_found_in_the_reply() {
        assert_eq!(
            enhanced_code("553 5.7.1 <a@b>: Sender address rejected"),
            Some((5, 7, 1))
        );
        assert_eq!(
            enhanced_code("permanent error (550): 5.1.10 RESOLVER"),
            Some((5, 1, 10))
        );
        assert_eq!(
            enhanced_code("554 5.2.252 SendAsDenied; x"),
            Some((5, 2, 252))
        );
        assert_eq!(enhanced_code("550 Requested action not taken"), None);
        assert_eq!(enhanced_code("550 version 1.2.3 of a.b.c"), None);
    }
}
