//! The stack's SMTP submission service (Postfix, STARTTLS + AUTH XOAUTH2) delivers into Dovecot,
//! and what it delivered becomes a ticket: the path a customer's mail takes in the demo.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::helpers::*;

#[tokio::test]
async fn mail_submitted_over_smtp_with_xoauth2_becomes_a_ticket() {
    let stack = Stack::get();
    let customer = unique_mailbox();
    let support = unique_mailbox();
    let entra = Entra::start(&[&customer, &support]).await;

    let token = entra
        .fake
        .issue_access_token(
            fake_entra::AccessTokenSpec::app(&entra.client_id)
                .with_permissions(IMAP_ROLES)
                .with_mailboxes(&[&customer]),
        )
        .unwrap();
    let ca = Certificate::from_pem(&std::fs::read(stack.ca_file()).unwrap()).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(ca)
        .build_native()
        .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(stack.port("MAILSTACK_SUBMISSION_PORT"))
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(customer.clone(), token))
        .authentication(vec![Mechanism::Xoauth2])
        .build();
    let subject = format!("Laptop will not boot ({})", unique(""));
    let message = Message::builder()
        .from(format!("Customer <{customer}>").parse::<Mailbox>().unwrap())
        .to(support.parse::<Mailbox>().unwrap())
        .subject(&subject)
        .body("It shows a black screen since this morning.".to_string())
        .unwrap();
    transport
        .send(message)
        .await
        .expect("Postfix accepts the submission");

    // Postfix delivers asynchronously; wait until the message is in the support inbox.
    let delivered = eventually(std::time::Duration::from_secs(30), || async {
        !folder_contents(&entra, &support, "INBOX").await.is_empty()
    })
    .await;
    assert!(delivered, "the submitted mail did not arrive within 30 s");

    let db = TestDb::new(Backend::Sqlite).await;
    let config = ConfigFile::write(
        &ConfigSpec {
            db: &db,
            entra: &entra,
            secret_env: "IT_CLIENT_SECRET",
            mailbox: &support,
            extra_mailbox_keys: "",
            tls: "implicit",
        }
        .render(),
    );
    let out = mailintake(
        &config.path,
        &["once"],
        &[("IT_CLIENT_SECRET", &entra.secret)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM tickets WHERE subject = '{subject}' AND requester_address = '{customer}'"
        ))
        .await,
        1
    );
}
