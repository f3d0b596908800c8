//! Token trouble as the operator sees it: Entra's refusal with its AADSTS code and the fix, and the
//! mail server's refusal of a token it does not accept for the mailbox.

use crate::helpers::*;

async fn once_with(entra: &Entra, mailbox: &str, secret: &str) -> std::process::Output {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = ConfigFile::write(
        &ConfigSpec {
            db: &db,
            entra,
            secret_env: "IT_CLIENT_SECRET",
            mailbox,
            extra_mailbox_keys: "",
            tls: "implicit",
        }
        .render(),
    );
    mailintake(&config.path, &["once"], &[("IT_CLIENT_SECRET", secret)]).await
}

#[tokio::test]
async fn wrong_client_secret_reports_aadsts7000215_and_the_fix() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let out = once_with(&entra, &mailbox, "not-the-secret").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("AADSTS7000215"), "{stderr}");
    assert!(
        stderr.contains("fix: the client secret is wrong"),
        "{stderr}"
    );
    assert!(stderr.contains("trace id:"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
}

#[tokio::test]
async fn unknown_client_reports_aadsts700016_and_the_fix() {
    let mailbox = unique_mailbox();
    let entra = Entra::start(&[&mailbox]).await;
    let unknown = Entra {
        client_id: "0badc0de-1111-4222-8333-444444444444".into(),
        ..entra
    };
    let out = once_with(&unknown, &mailbox, &unknown.secret).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("AADSTS700016"), "{stderr}");
    assert!(
        stderr.contains("fix: no application with this client_id"),
        "{stderr}"
    );
}

#[tokio::test]
async fn mailbox_without_permission_is_refused_by_the_server_with_the_exchange_fix() {
    let allowed = unique_mailbox();
    let other = unique_mailbox();
    let entra = Entra::start(&[&allowed]).await;
    let out = once_with(&entra, &other, &entra.secret).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("XOAUTH2 was refused"), "{stderr}");
    assert!(stderr.contains("Add-MailboxPermission"), "{stderr}");
    // The server's base64 JSON challenge (RFC 7628 §3.2.2) was decoded into the error, and the
    // exchange did not hang: the empty answer was sent.
    assert!(stderr.contains(r#""status":"401""#), "{stderr}");
    // The refused token was replaced once (a stale token is the common cause), not hammered.
    let requests = entra.fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
}
