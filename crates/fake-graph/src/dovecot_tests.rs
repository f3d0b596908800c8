//! Tests of the Dovecot backend against the real local mail stack (`scripts/mailstack.sh up`):
//! mail delivered by LMTP, read through the fake's Graph API, changes checked with an IMAP
//! session of the test's own, sendMail checked in the recipient's real mailbox. Each test uses
//! mailboxes no other test (or earlier run) uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures::TryStreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::http_tests::{World, answer, delta_round, delta_url, start_with};
use crate::{Config, DovecotConfig, STORE_SIZE_OVERHEAD, User};

const IMMUTABLE: &str = "IdType=\"ImmutableId\"";
const SIZE_EXPAND: &str = "$expand=singleValueExtendedProperties($filter=id eq 'Long 0x0E08')";

/// The stack's env file (`KEY=VALUE` lines).
fn stack() -> HashMap<String, String> {
    let dir = std::env::var("MAILSTACK_DIR").unwrap_or_else(|_| {
        let tmp = std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into());
        format!("{tmp}/mailintake-mailstack")
    });
    let path = format!("{dir}/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the Dovecot backend's tests need the local mail stack ({path}: {e}); start it with `scripts/mailstack.sh up`"
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn dovecot_config() -> DovecotConfig {
    let env = stack();
    let mut config = DovecotConfig::new(&env["MAILSTACK_CA"], &env["MAILSTACK_PLAIN_PASSWORD"]);
    config.imaps_port = env["MAILSTACK_IMAPS_PORT"].parse().unwrap();
    config.submission_port = env["MAILSTACK_SUBMISSION_PORT"].parse().unwrap();
    config.mx_port = Some(env["MAILSTACK_MX_PORT"].parse().unwrap());
    config
}

fn unique_user(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "fg{tag}{}x{}x{:x}@helpdesk.test",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        nanos & 0xffff_ffff
    )
}

async fn start_on_dovecot(users: &[&str]) -> World {
    start_with(Config {
        users: users.iter().map(|u| User::new(u)).collect(),
        dovecot: Some(dovecot_config()),
        ..Config::default()
    })
    .await
}

fn mime(to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Dana Swope <danas@contoso.com>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}.{}@contoso.com>\r\nDate: Mon, 4 Sep 2017 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody of {subject}.\r\n",
        subject.replace(' ', "."),
        std::process::id()
    )
    .into_bytes()
}

/// Delivers `mime` to `to` through the stack's Dovecot LMTP.
async fn lmtp(to: &str, mime: &[u8]) {
    let port: u16 = stack()["MAILSTACK_LMTP_PORT"].parse().unwrap();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    async fn reply(lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>) {
        loop {
            let line = lines.next_line().await.unwrap().expect("LMTP reply");
            assert!(
                line.starts_with('2') || line.starts_with('3'),
                "LMTP: {line}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }
    reply(&mut lines).await;
    for command in [
        "LHLO fake-graph.test".to_owned(),
        "MAIL FROM:<danas@contoso.com>".to_owned(),
        format!("RCPT TO:<{to}>"),
        "DATA".to_owned(),
    ] {
        write
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        reply(&mut lines).await;
    }
    let mut data = Vec::new();
    for line in mime.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data.extend_from_slice(b".\r\n");
    write.write_all(&data).await.unwrap();
    reply(&mut lines).await;
    write.write_all(b"QUIT\r\n").await.unwrap();
}

/// The test's own IMAP session as `user` (not the fake's).
async fn imap(
    user: &str,
) -> async_imap::Session<async_native_tls::TlsStream<tokio::net::TcpStream>> {
    let config = dovecot_config();
    let pem = std::fs::read(&config.ca_file).unwrap();
    let tls = async_native_tls::TlsConnector::new()
        .add_root_certificate(native_tls::Certificate::from_pem(&pem).unwrap());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", config.imaps_port))
        .await
        .unwrap();
    let stream = tls.connect("localhost", tcp).await.unwrap();
    let mut client = async_imap::Client::new(stream);
    client.read_response().await.unwrap().unwrap();
    client
        .login(user, &config.password)
        .await
        .map_err(|(e, _)| e)
        .unwrap()
}

/// (UID, `\Seen`, body) of every message in `folder`, read over IMAP.
async fn imap_messages(user: &str, folder: &str) -> Vec<(u32, bool, Vec<u8>)> {
    let mut session = imap(user).await;
    let mailbox = session.select(folder).await.unwrap();
    let mut out = Vec::new();
    if mailbox.exists > 0 {
        let fetched: Vec<_> = session
            .uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for f in fetched {
            let seen = f.flags().any(|x| x == async_imap::types::Flag::Seen);
            out.push((f.uid.unwrap(), seen, f.body().unwrap_or_default().to_vec()));
        }
    }
    session.logout().await.unwrap();
    out
}

/// Microsoft's delta example (https://learn.microsoft.com/graph/api/message-delta, "Example
/// 1": `Prefer: odata.maxpagesize=2`, pages linked by `@odata.nextLink` with `$skiptoken`, the
/// last with `@odata.deltaLink`) over a real mailbox; then the next round sees exactly a message
/// Dovecot received by LMTP, and a flag someone else set over IMAP.
#[tokio::test]
async fn dovecot_delta_pages_sees_lmtp_delivery_and_foreign_flag_changes() {
    let user = unique_user("delta");
    for i in 1..=5 {
        lmtp(&user, &mime(&user, &format!("delta {i}"))).await;
    }
    let w = start_on_dovecot(&[&user]).await;
    let prefer = ["odata.maxpagesize=2", IMMUTABLE];
    let first = delta_url(
        &user,
        "inbox",
        &format!("?$select=subject,isRead&{SIZE_EXPAND}"),
    );
    let (pages, delta_link) = delta_round(&w, &first, &prefer).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1],
        "{pages:?}"
    );
    let items: Vec<&Value> = pages.iter().flatten().collect();
    let subjects: Vec<&str> = items
        .iter()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        ["delta 1", "delta 2", "delta 3", "delta 4", "delta 5"]
    );
    // The size is RFC822.SIZE + the overhead; $value is what Dovecot stores (LMTP adds its
    // trace headers), byte for byte.
    let stored = imap_messages(&user, "INBOX").await;
    for (item, (_, _, body)) in items.iter().zip(&stored) {
        let props = &item["singleValueExtendedProperties"][0];
        assert_eq!(props["id"], "Long 0xe08");
        assert_eq!(
            props["value"],
            (body.len() as u64 + STORE_SIZE_OVERHEAD).to_string()
        );
        let id = item["id"].as_str().unwrap();
        let value = w
            .http
            .get(w.url(&format!("/users/{user}/messages/{id}/$value")))
            .bearer_auth(&w.token)
            .header("Prefer", IMMUTABLE)
            .send()
            .await
            .unwrap();
        assert_eq!(value.status().as_u16(), 200);
        assert_eq!(value.bytes().await.unwrap().as_ref(), body.as_slice());
    }

    // Nothing changed: an empty round.
    let (pages, delta_link) = delta_round(&w, &delta_link, &prefer).await;
    assert!(pages.iter().all(Vec::is_empty), "{pages:?}");

    // A delivery by LMTP and \Seen set by another IMAP client: exactly those two changes.
    lmtp(&user, &mime(&user, "delta 6")).await;
    let mut session = imap(&user).await;
    session.select("INBOX").await.unwrap();
    let first_uid = stored[0].0;
    let _: Vec<_> = session
        .uid_store(first_uid.to_string(), "+FLAGS (\\Seen)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    session.logout().await.unwrap();
    let (pages, _) = delta_round(&w, &delta_link, &prefer).await;
    let changed: Vec<(String, bool)> = pages
        .iter()
        .flatten()
        .map(|v| {
            (
                v["subject"].as_str().unwrap().to_owned(),
                v["isRead"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        [("delta 1".to_owned(), true), ("delta 6".to_owned(), false)],
        "{pages:?}"
    );
}

/// https://learn.microsoft.com/graph/outlook-immutable-id: with `Prefer: IdType="ImmutableId"`
/// the id survives a move (here a real IMAP UID MOVE into a folder created through Graph); the
/// source folder's delta reports it `@removed`; PATCH isRead is `\Seen` in Dovecot; DELETE
/// puts it into Deleted Items, permanentDelete expunges it.
#[tokio::test]
async fn dovecot_move_keeps_the_immutable_id_and_changes_reach_imap() {
    let user = unique_user("move");
    lmtp(&user, &mime(&user, "to move")).await;
    lmtp(&user, &mime(&user, "to purge")).await;
    let w = start_on_dovecot(&[&user]).await;
    let prefer = [IMMUTABLE];
    let (_, inbox_link) =
        delta_round(&w, &delta_url(&user, "inbox", "?$select=subject"), &prefer).await;
    let list = w
        .get(
            &format!("/users/{user}/mailFolders/inbox/messages?$select=subject"),
            &prefer,
        )
        .await;
    let id_of = |subject: &str| -> String {
        list.body["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["subject"] == subject)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (moving, purging) = (id_of("to move"), id_of("to purge"));

    // POST mailFolders (https://learn.microsoft.com/graph/api/user-post-mailfolders, its example:
    // {"displayName": "Clutter", "isHidden": true} answers 201 with the folder) creates the
    // IMAP folder.
    let folder = w
        .post(
            &format!("/users/{user}/mailFolders"),
            &[],
            json!({"displayName": "Tickets"}),
        )
        .await;
    assert_eq!(folder.status, 201, "{:?}", folder.body);
    assert_eq!(folder.body["displayName"], "Tickets");
    let folder_id = folder.body["id"].as_str().unwrap().to_owned();

    // message-move's example: POST …/move {"destinationId": "…"} answers 201 with the message.
    let moved = w
        .post(
            &format!("/users/{user}/messages/{moving}/move"),
            &prefer,
            json!({"destinationId": folder_id}),
        )
        .await;
    assert_eq!(moved.status, 201, "{:?}", moved.body);
    assert_eq!(moved.body["id"], moving.as_str());
    assert_eq!(moved.body["parentFolderId"], folder_id.as_str());
    assert_eq!(imap_messages(&user, "Tickets").await.len(), 1);
    assert_eq!(imap_messages(&user, "INBOX").await.len(), 1);
    // The id still resolves, $value comes from the new UID.
    let value = w
        .http
        .get(w.url(&format!("/users/{user}/messages/{moving}/$value")))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap();
    assert_eq!(value.status().as_u16(), 200);
    assert!(String::from_utf8_lossy(&value.bytes().await.unwrap()).contains("Subject: to move"));
    let (pages, _) = delta_round(&w, &inbox_link, &prefer).await;
    let removed: Vec<&Value> = pages.iter().flatten().collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["id"], moving.as_str());
    assert_eq!(removed[0]["@removed"]["reason"], "deleted");

    // message-update's example shape: PATCH {"isRead": true} answers 200 with the message.
    let patched = w
        .call(
            reqwest::Method::PATCH,
            &format!("/users/{user}/messages/{moving}"),
            &prefer,
            Some(json!({"isRead": true})),
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["isRead"], true);
    assert!(
        imap_messages(&user, "Tickets").await[0].1,
        "\\Seen not set in Dovecot"
    );

    // DELETE: to Deleted Items (204); permanentDelete: gone from Dovecot (204).
    let deleted = w
        .call(
            reqwest::Method::DELETE,
            &format!("/users/{user}/messages/{moving}"),
            &prefer,
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(imap_messages(&user, "Deleted Items").await.len(), 1);
    assert!(imap_messages(&user, "Tickets").await.is_empty());
    let purged = w
        .post(
            &format!("/users/{user}/messages/{purging}/permanentDelete"),
            &prefer,
            json!({}),
        )
        .await;
    assert_eq!(purged.status, 204, "{:?}", purged.body);
    assert!(imap_messages(&user, "INBOX").await.is_empty());
    let gone = w
        .get(&format!("/users/{user}/messages/{purging}"), &prefer)
        .await;
    assert_eq!((gone.status, gone.code()), (404, "ErrorItemNotFound"));
}

/// https://learn.microsoft.com/graph/api/user-sendmail, "Example 4: Send a new message using
/// MIME format" (`Content-Type: text/plain`, the base64 MIME, 202): the MIME goes through
/// Postfix into the recipient's real mailbox without `Auto-Submitted` and unknown `X-`
/// headers, Message-ID kept; the sender's Sent Items copy shows it as `internetMessageId`.
#[tokio::test]
async fn dovecot_send_mail_goes_through_postfix_stripped_and_lands_in_sent_items() {
    let sender = unique_user("from");
    let recipient = unique_user("to");
    let w = start_on_dovecot(&[&sender]).await;
    let message_id = format!("<ack.{}@helpdesk.test>", std::process::id());
    let mime = format!(
        "From: {sender}\r\nTo: {recipient}\r\nSubject: Re: ticket 7\r\nAuto-Submitted: auto-replied\r\nX-Custom-Loop: 1\r\nX-Priority: 3\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nThanks.\r\n"
    );
    let response = w
        .http
        .post(w.url(&format!("/users/{sender}/sendMail")))
        .bearer_auth(&w.token)
        .header("Content-Type", "text/plain")
        .body(base64::engine::general_purpose::STANDARD.encode(mime.as_bytes()))
        .send()
        .await
        .unwrap();
    let a = answer(response).await;
    assert_eq!(a.status, 202, "{:?}", a.body);

    // The recipient's real mailbox (Postfix delivers through LMTP shortly after).
    let mut arrived = Vec::new();
    for _ in 0..100 {
        arrived = imap_messages(&recipient, "INBOX").await;
        if !arrived.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        arrived.len(),
        1,
        "the mail did not arrive in {recipient}'s INBOX"
    );
    let text = String::from_utf8_lossy(&arrived[0].2).into_owned();
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("auto-submitted"), "{text}");
    assert!(!lower.contains("x-custom-loop"), "{text}");
    assert!(text.contains("X-Priority: 3"), "{text}");
    assert!(
        text.contains(&format!("Message-ID: {message_id}")),
        "{text}"
    );

    // Sent Items, through Graph: the same Message-ID.
    let sent = w
        .get(
            &format!(
                "/users/{sender}/mailFolders/sentitems/messages?$select=internetMessageId,isRead"
            ),
            &[],
        )
        .await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert_eq!(
        sent.body["value"][0]["internetMessageId"],
        message_id.as_str()
    );
    assert_eq!(sent.body["value"][0]["isRead"], true);
    assert_eq!(imap_messages(&sender, "Sent Items").await.len(), 1);
}

/// A directory of its own for one test's state files.
fn state_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_user(tag).replace('@', "-"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Issue 18: the fake's ids and sync state survive its restart. A restarted fake (same state
/// dir, new port) on the same Dovecot mailbox resolves the immutable ids from before, also of a
/// message it moved (its UID changed), keeps folder ids, and the deltaLink from before the
/// restart returns exactly what Dovecot received meanwhile.
#[tokio::test]
async fn dovecot_ids_and_delta_state_survive_a_restart() {
    let user = unique_user("restart");
    let dir = state_dir("state");
    lmtp(&user, &mime(&user, "before 1")).await;
    lmtp(&user, &mime(&user, "before 2")).await;
    let config = || Config {
        users: vec![User::new(&user)],
        dovecot: Some(dovecot_config()),
        state_dir: Some(dir.clone()),
        ..Config::default()
    };
    let prefer = [IMMUTABLE];
    let w = start_with(config()).await;
    let (pages, delta_link) =
        delta_round(&w, &delta_url(&user, "inbox", "?$select=subject"), &prefer).await;
    let ids: Vec<String> = pages
        .iter()
        .flatten()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    let archive = w
        .get(&format!("/users/{user}/mailFolders/archive"), &[])
        .await;
    let archive_id = archive.body["id"].as_str().unwrap().to_owned();
    let moved = w
        .post(
            &format!("/users/{user}/messages/{}/move", ids[0]),
            &prefer,
            json!({"destinationId": "archive"}),
        )
        .await;
    assert_eq!(moved.status, 201, "{:?}", moved.body);
    // The move is in the inbox's next round; take it, so the round after the restart is clean.
    let (pages, delta_link) = delta_round(&w, &delta_link, &prefer).await;
    assert_eq!(pages.iter().flatten().count(), 1);
    let old_base = w.graph.graph_url();
    w.graph.shutdown().await;

    lmtp(&user, &mime(&user, "during the restart")).await;
    let w = start_with(config()).await;
    let delta_link = delta_link.replace(&old_base, &w.graph.graph_url());
    let (pages, _) = delta_round(&w, &delta_link, &prefer).await;
    let subjects: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["during the restart"], "{pages:?}");
    for id in &ids {
        let a = w
            .get(
                &format!("/users/{user}/messages/{id}?$select=subject,parentFolderId"),
                &prefer,
            )
            .await;
        assert_eq!(a.status, 200, "{id}: {:?}", a.body);
    }
    let a = w
        .get(
            &format!("/users/{user}/messages/{}?$select=parentFolderId", ids[0]),
            &prefer,
        )
        .await;
    assert_eq!(a.body["parentFolderId"], archive_id.as_str());
    let value = w
        .http
        .get(w.url(&format!("/users/{user}/messages/{}/$value", ids[0])))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap();
    assert_eq!(value.status().as_u16(), 200);
    assert!(String::from_utf8_lossy(&value.bytes().await.unwrap()).contains("Subject: before 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The in-memory backend with a state dir keeps its messages, ids and sync states too.
#[tokio::test]
async fn in_memory_state_survives_a_restart() {
    let user = "keeper@helpdesk.test";
    let dir = state_dir("memory");
    let config = || Config {
        users: vec![User::new(user)],
        state_dir: Some(dir.clone()),
        ..Config::default()
    };
    let w = start_with(config()).await;
    let ids = w
        .graph
        .deliver(
            user,
            "inbox",
            mime(user, "kept"),
            crate::DeliverOptions::default(),
        )
        .unwrap();
    let (_, delta_link) = delta_round(&w, &delta_url(user, "inbox", ""), &[IMMUTABLE]).await;
    let old_base = w.graph.graph_url();
    w.graph.shutdown().await;

    let w = start_with(config()).await;
    let a = w
        .get(
            &format!(
                "/users/{user}/messages/{}?$select=subject",
                ids.immutable_id
            ),
            &[IMMUTABLE],
        )
        .await;
    assert_eq!(
        (a.status, a.body["subject"].as_str()),
        (200, Some("kept")),
        "{:?}",
        a.body
    );
    w.graph
        .deliver(
            user,
            "inbox",
            mime(user, "new"),
            crate::DeliverOptions::default(),
        )
        .unwrap();
    let (pages, _) = delta_round(
        &w,
        &delta_link.replace(&old_base, &w.graph.graph_url()),
        &[IMMUTABLE],
    )
    .await;
    let subjects: Vec<&str> = pages
        .iter()
        .flatten()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["new"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Microsoft's large-attachment walk-through (https://learn.microsoft.com/graph/outlook-large-attachments)
/// on a MIME draft (https://learn.microsoft.com/graph/api/user-post-messages, MIME example):
/// POST …/messages (201, isDraft), createUploadSession (201, `nextExpectedRanges: ["0-"]`), PUT
/// `bytes 0-2097151/…` without Authorization (200, `["2097152"]`), an out-of-order PUT (416),
/// the last PUT (201 with `Location` …/attachments('…')), then POST …/send (202,
/// https://learn.microsoft.com/graph/api/message-send): the mail with its attachment arrives in
/// the recipient's real mailbox through Postfix, stripped as sendMail is, and the draft is gone.
#[tokio::test]
async fn dovecot_draft_with_upload_session_is_sent_through_postfix() {
    let sender = unique_user("draft");
    let recipient = unique_user("att");
    let w = start_on_dovecot(&[&sender]).await;
    let mime = format!(
        "From: {sender}\r\nTo: {recipient}\r\nSubject: big reply\r\nAuto-Submitted: auto-replied\r\nX-Loop-Guard: 1\r\nMessage-ID: <big.{}@helpdesk.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachment.\r\n",
        std::process::id()
    );
    let draft = answer(
        w.http
            .post(w.url(&format!("/users/{sender}/messages")))
            .bearer_auth(&w.token)
            .header("Content-Type", "text/plain")
            .body(base64::engine::general_purpose::STANDARD.encode(mime.as_bytes()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(draft.status, 201, "{:?}", draft.body);
    assert_eq!(draft.body["isDraft"], true);
    let draft_id = draft.body["id"].as_str().unwrap().to_owned();

    let content: Vec<u8> = (0..3_483_322u32).map(|i| (i % 251) as u8).collect();
    let session = w
        .post(
            &format!("/users/{sender}/messages/{draft_id}/attachments/createUploadSession"),
            &[],
            json!({"AttachmentItem": {"attachmentType": "file", "name": "flower", "size": content.len()}}),
        )
        .await;
    assert_eq!(session.status, 201, "{:?}", session.body);
    assert_eq!(session.body["nextExpectedRanges"], json!(["0-"]));
    assert!(session.body["expirationDateTime"].is_string());
    let upload_url = session.body["uploadUrl"].as_str().unwrap().to_owned();
    let total = content.len();
    let put = |start: usize, end: usize| {
        w.http
            .put(&upload_url)
            .header("Content-Range", format!("bytes {start}-{end}/{total}"))
            .body(content[start..=end].to_vec())
            .send()
    };
    let first = answer(put(0, 2_097_151).await.unwrap()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["nextExpectedRanges"], json!(["2097152"]));
    let skipped = answer(put(2_097_153, total - 1).await.unwrap()).await;
    assert_eq!(skipped.status, 416, "{:?}", skipped.body);
    let last = put(2_097_152, total - 1).await.unwrap();
    assert_eq!(last.status().as_u16(), 201);
    let location = last.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("/attachments('"), "{location}");
    let draft_now = w
        .get(
            &format!("/users/{sender}/messages/{draft_id}?$select=hasAttachments"),
            &[],
        )
        .await;
    assert_eq!(draft_now.body["hasAttachments"], true);

    let sent = w
        .post(
            &format!("/users/{sender}/messages/{draft_id}/send"),
            &[],
            json!({}),
        )
        .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let gone = w
        .get(&format!("/users/{sender}/messages/{draft_id}"), &[])
        .await;
    assert_eq!(gone.status, 404);

    let mut arrived = Vec::new();
    for _ in 0..100 {
        arrived = imap_messages(&recipient, "INBOX").await;
        if !arrived.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        arrived.len(),
        1,
        "the mail did not arrive in {recipient}'s INBOX"
    );
    let message = mail_parser::MessageParser::default()
        .parse(&arrived[0].2)
        .unwrap();
    assert_eq!(message.subject(), Some("big reply"));
    assert!(message.header("Auto-Submitted").is_none());
    assert!(message.header("X-Loop-Guard").is_none());
    let attachment = message.attachment(0).expect("the attachment");
    {
        use mail_parser::MimeHeaders as _;
        assert_eq!(attachment.attachment_name(), Some("flower"));
    }
    assert_eq!(attachment.contents(), content.as_slice());
    assert_eq!(imap_messages(&sender, "Sent Items").await.len(), 1);
}
