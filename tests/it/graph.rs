//! Mailboxes read through Microsoft Graph (`transport = "graph"`): the real binary against the
//! in-process fake Graph (crates/fake-graph), which serves the mail stack's real Dovecot
//! mailboxes, so mail delivered by LMTP is what Graph lists; tokens from a fake Entra whose
//! resource is Graph.

use std::time::Duration;

use fake_graph::{Config as GraphConfig, DovecotConfig, FakeGraph, ThrottleFault, User};

use crate::helpers::{
    Backend, ConfigFile, Entra, Stack, TENANT_ID, TestDb, deliver_lmtp, folder_contents,
    mailintake, unique, unique_mailbox,
};

/// A Graph mailbox's world: its address, a fake Entra issuing Graph tokens, the fake Graph in
/// front of Dovecot, a database and a config.
struct GraphCase {
    mailbox: String,
    entra: Entra,
    /// A fake Entra issuing IMAP tokens, to look into Dovecot as the test.
    imap_entra: Entra,
    graph: FakeGraph,
    db: TestDb,
    config: ConfigFile,
}

impl GraphCase {
    async fn new(backend: Backend, extra_mailbox_keys: &str) -> GraphCase {
        GraphCase::with_graph_keys(backend, extra_mailbox_keys, "").await
    }

    /// Like [`GraphCase::new`], with `graph_keys` in `[mailboxes.graph]`.
    async fn with_graph_keys(
        backend: Backend,
        extra_mailbox_keys: &str,
        graph_keys: &str,
    ) -> GraphCase {
        GraphCase::build(backend, extra_mailbox_keys, graph_keys, |_| {}).await
    }

    /// Like [`GraphCase::with_graph_keys`], with the fake Graph's configuration changed by
    /// `tweak`.
    async fn build(
        backend: Backend,
        extra_mailbox_keys: &str,
        graph_keys: &str,
        tweak: impl FnOnce(&mut GraphConfig),
    ) -> GraphCase {
        let mailbox = unique_mailbox();
        let entra = graph_entra(&mailbox).await;
        let stack = Stack::get();
        let mut dovecot =
            DovecotConfig::new(stack.ca_file(), stack.var("MAILSTACK_PLAIN_PASSWORD"));
        dovecot.imaps_port = stack.port("MAILSTACK_IMAPS_PORT");
        dovecot.submission_port = stack.port("MAILSTACK_SUBMISSION_PORT");
        dovecot.mx_port = Some(stack.port("MAILSTACK_MX_PORT"));
        let mut config = GraphConfig::default().with_user(User::new(&mailbox));
        config.dovecot = Some(dovecot);
        tweak(&mut config);
        let graph = FakeGraph::start(config, stack.signing_key(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("fake Graph starts");
        let db = TestDb::new(backend).await;
        let config = ConfigFile::write(&format!(
            r#"
[database]
url = "{db}"

[identities.app]
flow = "client_credentials"
tenant = "{tenant}"
client_id = "{client_id}"
client_secret = {{ env = "IT_CLIENT_SECRET" }}
authority = "{authority}"

[[mailboxes]]
name = "support"
address = "{mailbox}"
identity = "app"
transport = "graph"
poll_interval = "1s"
{extra_mailbox_keys}

[mailboxes.graph]
url = "{graph_url}"
{graph_keys}
"#,
            db = db.url,
            tenant = TENANT_ID,
            client_id = entra.client_id,
            authority = entra.fake.authority(),
            graph_url = graph.base_url(),
        ));
        GraphCase {
            imap_entra: Entra::start(&[&mailbox]).await,
            mailbox,
            entra,
            graph,
            db,
            config,
        }
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        mailintake(
            &self.config.path,
            args,
            &[("IT_CLIENT_SECRET", &self.entra.secret)],
        )
        .await
    }

    /// Starts `mailintake <args>` in the background with `env`; its stderr in a file.
    fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> crate::helpers::Running {
        let log = self.config.path.with_file_name("run.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(crate::helpers::binary())
            .arg("--config")
            .arg(&self.config.path)
            .args(args)
            .env("IT_CLIENT_SECRET", &self.entra.secret)
            .env("RUST_LOG", "mailintake=debug")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("mailintake starts");
        crate::helpers::Running { child, log }
    }

    async fn once(&self) {
        let out = self.run(&["once"]).await;
        assert!(
            out.status.success(),
            "once failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `$value` downloads the fake served, over all runs so far.
    fn value_requests(&self) -> usize {
        self.graph
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/$value") && r.status == 200)
            .count()
    }
}

/// A fake Entra whose tokens are for Microsoft Graph, with Mail.ReadWrite and Mail.Send granted
/// to a confidential client as application permissions.
async fn graph_entra(mailbox: &str) -> Entra {
    Entra::start_for(
        Some("https://graph.microsoft.com"),
        &[mailbox],
        Duration::from_secs(3599),
        &["Mail.ReadWrite", "Mail.Send"],
    )
    .await
}

fn mail(n: usize, from: &str, body_bytes: usize) -> Vec<u8> {
    let body = "All work and no play makes a ticket.\r\n".repeat(body_bytes / 38 + 1);
    format!(
        "From: Customer {n} <{from}>\r\nTo: support@helpdesk.test\r\nSubject: Graph request {n}\r\n\
         Message-ID: <graph-{n}-{}@customer.test>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        unique("m")
    )
    .into_bytes()
}

async fn graph_mail_becomes_tickets_once_and_oversized_mail_is_never_downloaded(backend: Backend) {
    let case = GraphCase::new(
        backend,
        "max_message_bytes = 20000\ndispose = \"move\"\nprocessed_folder = \"Processed\"\nquarantine_folder = \"Quarantine\"",
    )
    .await;
    for n in 0..3 {
        deliver_lmtp(
            &case.mailbox,
            "ann@customer.test",
            &mail(n, "ann@customer.test", 2_000),
        )
        .await;
    }
    // Well above max_message_bytes: quarantined by its listed size alone.
    deliver_lmtp(
        &case.mailbox,
        "bob@customer.test",
        &mail(9, "bob@customer.test", 80_000),
    )
    .await;

    case.once().await;
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM tickets WHERE subject LIKE 'Graph request %'")
            .await,
        3
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'too-large'")
            .await,
        1,
        "the oversized message is quarantined"
    );
    assert_eq!(
        case.value_requests(),
        3,
        "only the three small messages are downloaded: the large one is decided by PidTagMessageSize"
    );
    let inbox = folder_contents(&case.imap_entra, &case.mailbox, "INBOX").await;
    assert!(inbox.is_empty(), "every message is moved out: {inbox:?}");
    assert_eq!(
        folder_contents(&case.imap_entra, &case.mailbox, "Processed")
            .await
            .len(),
        3
    );
    assert_eq!(
        folder_contents(&case.imap_entra, &case.mailbox, "Quarantine")
            .await
            .len(),
        1
    );

    // Nothing twice: a second run finds nothing new, and new mail comes in alone.
    case.once().await;
    deliver_lmtp(
        &case.mailbox,
        "ann@customer.test",
        &mail(4, "ann@customer.test", 1_000),
    )
    .await;
    case.once().await;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 4);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM imap_messages").await, 5);
    assert_eq!(case.value_requests(), 4);
}

#[tokio::test]
async fn graph_mail_becomes_tickets_once_and_oversized_mail_is_never_downloaded_sqlite() {
    graph_mail_becomes_tickets_once_and_oversized_mail_is_never_downloaded(Backend::Sqlite).await;
}

#[tokio::test]
async fn graph_mail_becomes_tickets_once_and_oversized_mail_is_never_downloaded_postgres() {
    graph_mail_becomes_tickets_once_and_oversized_mail_is_never_downloaded(Backend::Postgres).await;
}

/// Graph forgets delta links (410 SyncStateNotFound): the folder is synchronised afresh, and the
/// messages recorded before keep their numbers, so none becomes a ticket twice.
async fn a_forgotten_delta_link_resyncs_without_duplicates(backend: Backend) {
    // Read mail stays in the Inbox, so the fresh round names it again.
    let case = GraphCase::new(backend, "dispose = \"seen\"").await;
    for n in 0..2 {
        deliver_lmtp(
            &case.mailbox,
            "ann@customer.test",
            &mail(n, "ann@customer.test", 500),
        )
        .await;
    }
    case.once().await;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 2);
    let inbox = folder_contents(&case.imap_entra, &case.mailbox, "INBOX").await;
    assert!(
        inbox.len() == 2 && inbox.iter().all(|(_, seen)| *seen),
        "both are marked read: {inbox:?}"
    );

    let expired = case
        .graph
        .expire_delta_tokens(&case.mailbox, None)
        .expect("expire");
    assert!(expired > 0, "the fake had delta links to expire");
    deliver_lmtp(
        &case.mailbox,
        "carl@customer.test",
        &mail(7, "carl@customer.test", 500),
    )
    .await;
    case.once().await;

    assert!(
        case.graph.requests().iter().any(|r| r.status == 410),
        "the old delta link was answered 410"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'duplicate'")
            .await,
        0,
        "the messages seen before are recognised by their ids, not taken in again"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM imap_messages").await, 3);
}

#[tokio::test]
async fn a_forgotten_delta_link_resyncs_without_duplicates_sqlite() {
    a_forgotten_delta_link_resyncs_without_duplicates(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_forgotten_delta_link_resyncs_without_duplicates_postgres() {
    a_forgotten_delta_link_resyncs_without_duplicates(Backend::Postgres).await;
}

/// 429 with Retry-After (Outlook's ApplicationThrottled) is waited out as told; the run goes on.
#[tokio::test]
async fn throttling_is_waited_out_as_retry_after_says() {
    let case = GraphCase::new(Backend::Sqlite, "").await;
    deliver_lmtp(
        &case.mailbox,
        "ann@customer.test",
        &mail(1, "ann@customer.test", 500),
    )
    .await;
    case.graph.inject(
        ThrottleFault::TooManyRequests {
            retry_after: Duration::from_secs(2),
        },
        2,
        Some(&case.mailbox),
    );
    let started = std::time::Instant::now();
    case.once().await;
    let took = started.elapsed();
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    let throttled: Vec<_> = case
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.status == 429)
        .collect();
    assert_eq!(throttled.len(), 2, "both injected 429s were met");
    assert!(
        took >= Duration::from_secs(4),
        "each 429 was waited out for its Retry-After of 2 s (took {took:?})"
    );
}

/// An app the mailbox does not let in (RBAC for Applications scoped elsewhere, an Application
/// Access Policy): the run fails naming Graph's code and the PowerShell fix.
#[tokio::test]
async fn an_app_scoped_away_from_the_mailbox_is_told_the_fix() {
    let case = GraphCase::new(Backend::Sqlite, "").await;
    case.graph
        .restrict_app(&case.entra.client_id, &["someone-else@helpdesk.test"]);
    let out = case.run(&["once"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "once fails: {stderr}");
    assert!(stderr.contains("ErrorAccessDenied"), "{stderr}");
    assert!(stderr.contains("New-ManagementRoleAssignment"), "{stderr}");
    assert!(stderr.contains(&case.entra.client_id), "{stderr}");
}

/// `check` on a Graph mailbox: the Graph token, the mailbox read with it, the folders.
#[tokio::test]
async fn check_proves_graph_access_by_reading_the_mailbox() {
    let case = GraphCase::new(
        Backend::Sqlite,
        "dispose = \"move\"\nprocessed_folder = \"Processed\"",
    )
    .await;
    let out = case.run(&["check", "support"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check passes: {stdout}");
    assert!(
        stdout.contains("audience https://graph.microsoft.com")
            && stdout.contains("Mail.ReadWrite"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the Inbox of") && stdout.contains("is readable"),
        "{stdout}"
    );
    assert!(stdout.contains("`INBOX` exists"), "{stdout}");
    assert!(
        stdout.contains("`Processed` is missing; the worker creates it"),
        "{stdout}"
    );

    // An app the mailbox does not let in fails at the Graph step, with the fix.
    case.graph
        .restrict_app(&case.entra.client_id, &["someone-else@helpdesk.test"]);
    let out = case.run(&["check", "support"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL graph") && stdout.contains("ErrorAccessDenied"),
        "{stdout}"
    );
}

/// `run` polls a Graph folder: mail delivered while it runs becomes a ticket within a few polls,
/// and SIGTERM ends it cleanly.
#[tokio::test]
async fn run_polls_a_graph_folder() {
    let case = GraphCase::new(Backend::Postgres, "").await;
    let log = case.config.path.with_file_name("run.log");
    let child = tokio::process::Command::new(crate::helpers::binary())
        .arg("--config")
        .arg(&case.config.path)
        .arg("run")
        .env("IT_CLIENT_SECRET", &case.entra.secret)
        .env("RUST_LOG", "mailintake=debug")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run starts");
    let running = crate::helpers::Running { child, log };
    tokio::time::sleep(Duration::from_secs(2)).await;
    deliver_lmtp(
        &case.mailbox,
        "ann@customer.test",
        &mail(1, "ann@customer.test", 500),
    )
    .await;
    let arrived = crate::helpers::eventually(Duration::from_secs(20), || async {
        case.db.count_or_zero("SELECT COUNT(*) FROM tickets").await == 1
    })
    .await;
    let (status, log) = crate::helpers::terminate(running, Duration::from_secs(20)).await;
    assert!(arrived, "the ticket was written while run polled: {log}");
    assert!(status.success(), "{log}");
}

/// Acknowledgements through Graph (where SMTP AUTH is off), each through a draft. Exchange strips
/// `Auto-Submitted` and unknown `X-` headers from what it sends (the fake does too), so when our
/// own acknowledgement comes back into the mailbox it is known by our Message-ID alone: ignored
/// as a loop, never acknowledged.
async fn acknowledgements_go_through_sendmail_and_never_loop(backend: Backend) {
    let case = GraphCase::new(
        backend,
        "send = \"graph\"\nacknowledge = { authserv_id = \"mx.mailstack.test\" }",
    )
    .await;
    let customer = format!("{}@customer.test", unique("alice"));
    // Mail there at the first start gets no acknowledgement: the customer writes after it.
    case.once().await;
    crate::helpers::next_second().await;
    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &crate::acks::customer_mail(&customer, &case.mailbox, "Printer on fire", &first, ""),
    )
    .await;
    case.once().await;
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND smtp_response LIKE '202 Accepted (Graph, a draft); Sent Items has <mailintake.%' AND sent_copy = 'present' AND graph_item_id IS NOT NULL AND sent_message_id IS NULL")
            .await,
        1,
        "sent through a draft, and its copy read back from Sent Items by the draft's id, with our Message-ID: {}",
        crate::outgoing::query_text(
            &case.db,
            "SELECT state || ' ' || COALESCE(smtp_response, '') || ' ' || COALESCE(last_error, '') FROM outbox"
        )
        .await
    );
    assert!(
        case.graph
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/send") && r.status == 202),
        "sent through Graph"
    );

    let arrived = crate::helpers::eventually(Duration::from_secs(20), || async {
        !crate::acks::inbox_messages(&case.imap_entra, &customer)
            .await
            .is_empty()
    })
    .await;
    assert!(arrived, "the acknowledgement reaches the customer");
    let ack = crate::acks::inbox_messages(&case.imap_entra, &customer)
        .await
        .remove(0);
    let parsed = mailintake::ingest::parse(&ack).unwrap();
    assert_eq!(parsed.subject, "[#TCK-000001] Re: Printer on fire");
    assert_eq!(parsed.in_reply_to, std::slice::from_ref(&first));
    assert!(
        parsed.message_id.starts_with("mailintake."),
        "{}",
        parsed.message_id
    );
    let text = String::from_utf8_lossy(&ack);
    assert!(
        !text.contains("Auto-Submitted") && !text.contains("X-Loop"),
        "stripped on the way, as Exchange does: {text}"
    );

    // The acknowledgement comes back (a forward, a misconfigured autoresponder): a loop.
    deliver_lmtp(&case.mailbox, &customer, &ack).await;
    case.once().await;
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM outbox").await,
        1,
        "no acknowledgement of our own acknowledgement"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' AND detail LIKE 'loop:%'")
            .await,
        1
    );
}

#[tokio::test]
async fn acknowledgements_go_through_sendmail_and_never_loop_sqlite() {
    acknowledgements_go_through_sendmail_and_never_loop(Backend::Sqlite).await;
}

#[tokio::test]
async fn acknowledgements_go_through_sendmail_and_never_loop_postgres() {
    acknowledgements_go_through_sendmail_and_never_loop(Backend::Postgres).await;
}

/// A delivery status notification (RFC 3464, `Action: failed`) about `about` (with angle
/// brackets), as a remote MTA sends it.
fn failure_notice(to: &str, about: &str, recipient: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.customer.test (Mail Delivery System)\r\nTo: {to}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <{id}@mx.customer.test>\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"D\"\r\n\r\n\
         --D\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         --D\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.customer.test\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 mailbox unavailable\r\n\r\n\
         --D\r\nContent-Type: text/rfc822-headers\r\n\r\n\
         From: {to}\r\nTo: {recipient}\r\nSubject: [#TCK-000001] Re: Printer on fire\r\nMessage-ID: {about}\r\n\r\n\
         --D--\r\n",
        id = unique("dsn")
    )
    .into_bytes()
}

/// Exchange gives our acknowledgement a Message-ID of its own (at the draft's creation, or at
/// the send: the fake does either on demand) and strips `Auto-Submitted` and our `X-` headers:
/// the draft's answer or the Sent Items copy (read back by the draft's immutable id) tells
/// which, and it is kept beside ours. Then our acknowledgement coming back is still a loop, a
/// colleague's reply naming only Exchange's Message-ID (and no tag) still lands on the ticket,
/// and a bounce about it still marks the outbox row; the customer got it once.
async fn exchanges_own_message_ids_keep_loops_threads_and_bounces(
    backend: Backend,
    own: fake_graph::OwnMessageIds,
) {
    let case = GraphCase::build(
        backend,
        "send = \"graph\"\nacknowledge = { authserv_id = \"mx.mailstack.test\" }",
        "",
        |config| config.own_message_ids = own,
    )
    .await;
    let customer = format!("{}@customer.test", unique("alice"));
    case.once().await;
    crate::helpers::next_second().await;
    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &crate::acks::customer_mail(&customer, &case.mailbox, "Printer on fire", &first, ""),
    )
    .await;
    case.once().await;
    let row = crate::outgoing::query_text(
        &case.db,
        "SELECT state || ' ' || message_id || ' ' || COALESCE(sent_message_id, '-') || ' ' || COALESCE(sent_copy, '-') || ' ' || smtp_response FROM outbox",
    )
    .await;
    let fields: Vec<&str> = row.splitn(5, ' ').collect();
    let (ours, given) = (fields[1].to_string(), fields[2].to_string());
    assert_eq!(fields[0], "sent", "{row}");
    assert_ne!(given, "-", "Exchange's Message-ID is kept: {row}");
    assert!(!given.starts_with("mailintake."), "{row}");
    assert_eq!(fields[3], "present", "the copy read back: {row}");
    assert!(
        fields[4].contains(&format!("Sent Items has <{given}>")),
        "{row}"
    );
    // Had the copy not been in Sent Items right after the send, the next flush reads it back
    // by the draft's id (and learns Exchange's Message-ID then).
    crate::outgoing::execute(
        &case.db,
        "UPDATE outbox SET sent_copy = 'pending', sent_copy_folder = NULL, sent_copy_due_at = 0, sent_message_id = NULL",
    )
    .await;
    case.once().await;
    assert_eq!(
        crate::outgoing::query_text(
            &case.db,
            "SELECT sent_copy || ' ' || sent_copy_folder || ' ' || sent_message_id FROM outbox"
        )
        .await,
        format!("present Sent Items {given}")
    );

    let arrived = crate::helpers::eventually(Duration::from_secs(20), || async {
        !crate::acks::inbox_messages(&case.imap_entra, &customer)
            .await
            .is_empty()
    })
    .await;
    assert!(arrived, "the acknowledgement reaches the customer");
    let acks = crate::acks::inbox_messages(&case.imap_entra, &customer).await;
    assert_eq!(acks.len(), 1, "once");
    let ack = acks[0].clone();
    let parsed = mailintake::ingest::parse(&ack).unwrap();
    assert_eq!(
        parsed.message_id, given,
        "the customer got Exchange's Message-ID"
    );
    let text = String::from_utf8_lossy(&ack);
    assert!(
        !text.contains("Auto-Submitted") && !text.contains("X-Loop") && !text.contains(&ours),
        "nothing of ours tells it is ours: {text}"
    );

    // 1. Our acknowledgement comes back: a loop, by the Message-ID Exchange gave it.
    deliver_lmtp(&case.mailbox, &customer, &ack).await;
    case.once().await;
    assert_eq!(
        case.db.count("SELECT COUNT(*) FROM outbox").await,
        1,
        "no acknowledgement of our own acknowledgement"
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'ignored' AND detail LIKE 'loop:%Exchange gave our message%'")
            .await,
        1,
        "{}",
        crate::outgoing::query_lines(&case.db, "SELECT outcome || ' ' || COALESCE(detail, '') FROM imap_messages").await
    );

    // 2. A colleague (not on the ticket) answers the acknowledgement, the subject's tag cut:
    //    the reply names only Exchange's Message-ID, and still lands on the ticket.
    let colleague = format!("{}@customer.test", unique("carol"));
    let reply = format!(
        "From: Carol <{colleague}>\r\nTo: {mailbox}\r\nSubject: Re: Printer on fire\r\n\
         Date: Tue, 24 Nov 2026 18:00:00 +0000\r\nMessage-ID: <{id}>\r\nIn-Reply-To: <{given}>\r\n\
         References: <{given}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nIt is still on fire.\r\n",
        mailbox = case.mailbox,
        id = unique("carol"),
    );
    deliver_lmtp(&case.mailbox, &colleague, reply.as_bytes()).await;
    // 3. The acknowledgement bounced somewhere: the notice names Exchange's Message-ID.
    deliver_lmtp(
        &case.mailbox,
        "MAILER-DAEMON@mx.customer.test",
        &failure_notice(&case.mailbox, &format!("<{given}>"), &customer),
    )
    .await;
    case.once().await;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    assert_eq!(
        case.db
            .count(&format!(
                "SELECT COUNT(*) FROM messages WHERE ticket_id = 1 AND from_address = '{colleague}' AND in_reply_to = '{ours}'"
            ))
            .await,
        1,
        "the colleague's reply is a follow-up, its reference read as ours: {}",
        crate::outgoing::query_text(&case.db, "SELECT ticket_id || ' ' || COALESCE(from_address, '') || ' ' || COALESCE(in_reply_to, '') FROM messages").await
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'bounced'")
            .await,
        1,
        "the bounce found our row: {}",
        crate::outgoing::query_text(
            &case.db,
            "SELECT state || ' ' || COALESCE(reason, '') FROM outbox"
        )
        .await
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state <> 'suppressed'")
            .await,
        1,
        "nothing acknowledged twice: {}",
        crate::outgoing::query_lines(&case.db, "SELECT kind || ' ' || state || ' ' || COALESCE(to_address, '') || ' ' || COALESCE(reason, '') || ' ' || COALESCE(last_error, '') FROM outbox").await
    );
}

#[tokio::test]
async fn exchanges_own_message_id_at_the_send_keeps_loops_threads_and_bounces_sqlite() {
    exchanges_own_message_ids_keep_loops_threads_and_bounces(
        Backend::Sqlite,
        fake_graph::OwnMessageIds::AtSend,
    )
    .await;
}

#[tokio::test]
async fn exchanges_own_message_id_at_the_send_keeps_loops_threads_and_bounces_postgres() {
    exchanges_own_message_ids_keep_loops_threads_and_bounces(
        Backend::Postgres,
        fake_graph::OwnMessageIds::AtSend,
    )
    .await;
}

#[tokio::test]
async fn exchanges_own_message_id_at_the_draft_keeps_loops_threads_and_bounces() {
    exchanges_own_message_ids_keep_loops_threads_and_bounces(
        Backend::Sqlite,
        fake_graph::OwnMessageIds::AtDraftCreation,
    )
    .await;
}

/// The process dies right after Graph's 202 for a draft's send (failpoint `smtp-accepted`),
/// before the row says `sent`. Over SMTP that is the one documented resend; through Graph the
/// row kept its draft's immutable id, so the next attempt finds the item sent already (in Sent
/// Items) and marks the row sent without sending it again: the customer gets it once.
#[tokio::test]
async fn a_stop_after_graphs_202_sends_nothing_twice() {
    let case = GraphCase::new(
        Backend::Sqlite,
        "send = \"graph\"\nacknowledge = { authserv_id = \"mx.mailstack.test\" }",
    )
    .await;
    let customer = format!("{}@customer.test", unique("dan"));
    case.once().await;
    crate::helpers::next_second().await;
    let first = format!("{}@customer.test", unique("q"));
    deliver_lmtp(
        &case.mailbox,
        &customer,
        &crate::acks::customer_mail(&customer, &case.mailbox, "Screen flickers", &first, ""),
    )
    .await;
    let crashed = mailintake(
        &case.config.path,
        &["once"],
        &[
            ("IT_CLIENT_SECRET", &case.entra.secret),
            ("MAILINTAKE_FAILPOINT", "smtp-accepted"),
        ],
    )
    .await;
    assert!(!crashed.status.success(), "the failpoint aborts");
    assert_eq!(
        case.db
            .count(
                "SELECT COUNT(*) FROM outbox WHERE state = 'sending' AND graph_item_id IS NOT NULL"
            )
            .await,
        1
    );
    // The claim runs out (smtp.claim_lease): the row is due again.
    crate::outgoing::execute(&case.db, "UPDATE outbox SET claimed_at = 0").await;
    case.once().await;
    assert_eq!(
        crate::outgoing::query_text(&case.db, "SELECT state || ' ' || smtp_response FROM outbox")
            .await
            .split_once(' ')
            .map(|(state, response)| (
                state.to_string(),
                response.starts_with("202 Accepted by an earlier attempt")
            )),
        Some(("sent".to_string(), true))
    );
    let sends = case
        .graph
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/send") && r.status == 202)
        .count();
    assert_eq!(sends, 1, "sent once");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrived = crate::helpers::eventually(Duration::from_secs(20), || async {
        !crate::acks::inbox_messages(&case.imap_entra, &customer)
            .await
            .is_empty()
    })
    .await;
    assert!(arrived);
    assert_eq!(
        crate::acks::inbox_messages(&case.imap_entra, &customer)
            .await
            .len(),
        1,
        "the customer got it once"
    );
}

/// `quarantine release` on a Graph mailbox: the oversized message is moved back by its immutable
/// id and comes in once with the higher limit.
async fn a_quarantined_graph_message_is_released_once(backend: Backend) {
    let case = GraphCase::new(
        backend,
        "max_message_bytes = 20000\ndispose = \"move\"\nprocessed_folder = \"Processed\"\nquarantine_folder = \"Quarantine\"",
    )
    .await;
    deliver_lmtp(
        &case.mailbox,
        "bob@customer.test",
        &mail(9, "bob@customer.test", 60_000),
    )
    .await;
    case.once().await;
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM quarantine WHERE reason = 'too-large'")
            .await,
        1
    );
    assert_eq!(case.value_requests(), 0, "not downloaded");

    let out = case
        .run(&["quarantine", "release", "1", "--max-bytes", "200000"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        folder_contents(&case.imap_entra, &case.mailbox, "Quarantine")
            .await
            .is_empty(),
        "moved out of the quarantine folder"
    );
    let out = case.run(&["once"]).await;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM tickets WHERE subject = 'Graph request 9'")
            .await,
        1,
        "the released message is a ticket: {log}"
    );
    assert_eq!(
        case.value_requests(),
        1,
        "downloaded once, with the release's limit"
    );
    assert_eq!(
        folder_contents(&case.imap_entra, &case.mailbox, "Processed")
            .await
            .len(),
        1
    );
    // Released once: a second release is refused.
    let again = case
        .run(&["quarantine", "release", "1", "--max-bytes", "200000"])
        .await;
    assert!(!again.status.success());
}

#[tokio::test]
async fn a_quarantined_graph_message_is_released_once_sqlite() {
    a_quarantined_graph_message_is_released_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_quarantined_graph_message_is_released_once_postgres() {
    a_quarantined_graph_message_is_released_once(Backend::Postgres).await;
}

/// `junk list` and `junk release` on a Graph mailbox: the Junk Email folder from message
/// properties only, a message released by its Graph id, and ingested as ordinary mail.
#[tokio::test]
async fn junk_is_listed_and_released_through_graph() {
    let case = GraphCase::new(Backend::Sqlite, "junk_folder = \"Junk Email\"").await;
    let (real, _) = crate::helpers::unique_fixture("plain.eml");
    crate::helpers::doveadm_with_input(&["save", "-u", &case.mailbox, "-m", "Junk Email"], &real);

    let out = case.run(&["junk", "list", "--json"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let items: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 1, "{stdout}");
    assert_eq!(items[0]["from"], "alice@customer.test", "{stdout}");
    let id = items[0]["graph_id"]
        .as_str()
        .expect("a Graph id")
        .to_string();
    assert_eq!(case.value_requests(), 0, "no body read to list");

    let out = case.run(&["junk", "release", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    case.once().await;
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    let out = case.run(&["junk", "release", &id]).await;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no message"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl GraphCase {
    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut all = vec![("IT_CLIENT_SECRET", self.entra.secret.as_str())];
        all.extend_from_slice(env);
        mailintake(&self.config.path, args, &all).await
    }
}

/// A crash between the commit and the dispositions (the `after-commit` failpoint aborts the
/// process): the next run completes the dispositions and writes nothing twice.
#[tokio::test]
async fn a_crash_between_commit_and_disposition_is_completed_on_graph() {
    let case = GraphCase::new(
        Backend::Postgres,
        "dispose = \"move\"\nprocessed_folder = \"Processed\"",
    )
    .await;
    for n in 0..3 {
        deliver_lmtp(
            &case.mailbox,
            "ann@customer.test",
            &mail(n, "ann@customer.test", 800),
        )
        .await;
    }
    let out = case
        .run_with(&["once"], &[("MAILINTAKE_FAILPOINT", "after-commit")])
        .await;
    assert!(!out.status.success(), "the failpoint stops the process");
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(
        folder_contents(&case.imap_entra, &case.mailbox, "INBOX")
            .await
            .len(),
        3,
        "nothing moved yet"
    );
    let out = case.run(&["once"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("3 earlier disposition(s) completed"),
        "{stdout}"
    );
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 3);
    assert_eq!(case.db.count("SELECT COUNT(*) FROM messages").await, 3);
    assert!(
        folder_contents(&case.imap_entra, &case.mailbox, "INBOX")
            .await
            .is_empty()
    );
    assert_eq!(
        folder_contents(&case.imap_entra, &case.mailbox, "Processed")
            .await
            .len(),
        3
    );
}

/// The same message delivered twice is a duplicate; a reply naming it is a follow-up on its
/// ticket; shadow mode changes nothing in the mailbox.
#[tokio::test]
async fn duplicates_threading_and_shadow_mode_on_graph() {
    let case = GraphCase::new(Backend::Sqlite, "mode = \"shadow\"").await;
    let first = mail(1, "ann@customer.test", 600);
    deliver_lmtp(&case.mailbox, "ann@customer.test", &first).await;
    deliver_lmtp(&case.mailbox, "ann@customer.test", &first).await;
    let parsed = mailintake::ingest::parse(&first).unwrap();
    let reply = format!(
        "From: Customer 1 <ann@customer.test>\r\nTo: support@helpdesk.test\r\nSubject: Re: Graph request 1\r\n\
         Message-ID: <{}@customer.test>\r\nIn-Reply-To: <{}>\r\nReferences: <{}>\r\n\
         Date: Mon, 30 Nov 2026 11:00:00 +0000\r\nContent-Type: text/plain\r\n\r\nStill broken.\r\n",
        unique("reply"),
        parsed.message_id,
        parsed.message_id
    );
    deliver_lmtp(&case.mailbox, "ann@customer.test", reply.as_bytes()).await;
    case.once().await;
    for outcome in ["ticket", "duplicate", "follow-up"] {
        let sql = format!("SELECT COUNT(*) FROM imap_messages WHERE outcome = '{outcome}'");
        assert_eq!(case.db.count(&sql).await, 1, "{outcome}");
    }
    assert_eq!(case.db.count("SELECT COUNT(*) FROM tickets").await, 1);
    // Shadow mode: nothing marked read, nothing moved, no change request sent to Graph.
    let inbox = folder_contents(&case.imap_entra, &case.mailbox, "INBOX").await;
    assert!(
        inbox.len() == 3 && inbox.iter().all(|(_, seen)| !seen),
        "{inbox:?}"
    );
    assert!(
        case.graph.requests().iter().all(|r| r.method == "GET"),
        "shadow mode only reads"
    );
}

/// A Graph mailbox beside an IMAP mailbox in one `run`, both taking mail; the app's requests at
/// once stay within max_concurrent_requests (the fake counts them for real).
#[tokio::test]
async fn a_graph_mailbox_runs_beside_an_imap_one_within_the_concurrency_bound() {
    // Each download takes 150 ms at the fake, so two side by side overlap even on a loaded
    // machine (without it, the peak was sometimes 1 there).
    let case = GraphCase::build(
        Backend::Sqlite,
        "fetch_batch_messages = 20",
        "max_concurrent_requests = 2",
        |config| config.value_latency = Some(Duration::from_millis(150)),
    )
    .await;
    let text = std::fs::read_to_string(&case.config.path).unwrap();
    // A second mailbox over IMAP, with the stack's IMAP Entra client.
    let imap_box = unique_mailbox();
    let imap_entra = Entra::start(&[&imap_box]).await;
    let stack = Stack::get();
    let text = format!(
        r#"{text}
[identities.imap]
flow = "client_credentials"
tenant = "{tenant}"
client_id = "{client_id}"
client_secret = {{ env = "IT_IMAP_SECRET" }}
authority = "{authority}"

[[mailboxes]]
name = "imapbox"
address = "{imap_box}"
identity = "imap"
poll_interval = "1s"

[mailboxes.imap]
host = "localhost"
port = {port}
tls = "implicit"
ca_file = "{ca}"
"#,
        tenant = TENANT_ID,
        client_id = imap_entra.client_id,
        authority = imap_entra.fake.authority(),
        port = stack.port("MAILSTACK_IMAPS_PORT"),
        ca = stack.ca_file(),
    );
    std::fs::write(&case.config.path, text).unwrap();
    for n in 0..12 {
        deliver_lmtp(
            &case.mailbox,
            "ann@customer.test",
            &mail(n, "ann@customer.test", 4_000),
        )
        .await;
    }
    for n in 20..23 {
        deliver_lmtp(
            &imap_box,
            "bob@customer.test",
            &mail(n, "bob@customer.test", 500),
        )
        .await;
    }
    let out = case
        .run_with(&["once"], &[("IT_IMAP_SECRET", &imap_entra.secret)])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM tickets WHERE mailbox = 'support'")
            .await,
        12
    );
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM tickets WHERE mailbox = 'imapbox'")
            .await,
        3
    );
    let peak = case.graph.peak_concurrency(&case.entra.client_id, "");
    assert_eq!(
        peak, 2,
        "the downloads run side by side, at most 2 at once, as configured"
    );
}

/// Agent mail larger than one Graph request (~4 MB with base64) goes as a draft: the message
/// without its large attachments (a 1.5 MB photo still in it), a 2 MB file added by `POST
/// …/attachments`, a 5 MB one by an upload session in two ranges, then the draft's `send`. A worker killed with the draft made
/// and filled (before its `send`) leaves a draft behind; the next attempt deletes it and sends
/// its own, so the customer gets the message once, its attachments byte for byte, and Drafts
/// is left empty.
///
/// Before: `max_send_bytes` was capped at 3,000,000 with `send = "graph"`, and such mail was
/// refused at submission as too large.
#[tokio::test]
async fn large_agent_mail_goes_as_a_draft_with_its_attachments_and_a_crash_leaves_no_draft() {
    use base64::Engine as _;
    let case = GraphCase::new(Backend::Sqlite, "send = \"graph\"").await;
    case.once().await;
    let customer = format!("{}@customer.test", unique("bob"));
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let medium: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let small: Vec<u8> = (0..1_500_000u32).map(|i| (i % 241) as u8).collect();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let request = format!(
        r#"{{"idempotency_key": "big-1", "to": [{{"address": "{customer}"}}], "subject": "Your logs", "text": "Both files attached.",
            "attachments": [
              {{"filename": "trace.bin", "content_type": "application/octet-stream", "content_base64": "{}"}},
              {{"filename": "report.pdf", "content_type": "application/pdf", "content_base64": "{}"}},
              {{"filename": "photo.jpg", "content_type": "image/jpeg", "content_base64": "{}"}}]}}"#,
        b64(&big),
        b64(&medium),
        b64(&small)
    );
    let file = case.config.path.with_file_name("request.json");
    std::fs::write(&file, request).unwrap();
    let file = file.to_str().unwrap().to_string();

    // Killed with the draft filled, before its send.
    let crashed = mailintake(
        &case.config.path,
        &["send", "--request", &file, "--wait"],
        &[
            ("IT_CLIENT_SECRET", &case.entra.secret),
            ("MAILINTAKE_FAILPOINT", "draft-filled"),
        ],
    )
    .await;
    assert!(!crashed.status.success(), "the failpoint aborts");
    let drafts = case.graph.messages(&case.mailbox, "drafts").unwrap();
    assert_eq!(drafts.len(), 1, "the cut-off attempt left its draft");
    let sessions = |status: u16| {
        case.graph
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/createUploadSession") && r.status == status)
            .count()
    };
    assert_eq!(sessions(201), 1, "the 5 MB file by an upload session");
    let posted = case
        .graph
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/attachments") && r.status == 201)
        .count();
    assert_eq!(posted, 1, "the 2 MB file by one POST");
    assert_eq!(
        case.db
            .count("SELECT COUNT(*) FROM outbox WHERE state = 'sending'")
            .await,
        1
    );

    // The claim runs out (smtp.claim_lease): the row is sent again, with the same Message-ID.
    crate::outgoing::execute(&case.db, "UPDATE outbox SET claimed_at = 0").await;
    case.once().await;
    assert_eq!(
        crate::outgoing::query_text(
            &case.db,
            "SELECT state || ' ' || COALESCE(smtp_response, '') || ' ' || COALESCE(last_error, '') FROM outbox"
        )
        .await
        .split(' ')
        .next(),
        Some("sent")
    );
    assert!(
        case.graph
            .messages(&case.mailbox, "drafts")
            .unwrap()
            .is_empty(),
        "the left draft deleted, the sent one gone from Drafts"
    );
    let message_id = crate::outgoing::query_text(&case.db, "SELECT message_id FROM outbox").await;
    let (mail, text) = crate::outgoing::arrived(&case.imap_entra, &customer, &message_id).await;
    let mut got: Vec<(String, String)> = mail
        .attachments
        .iter()
        .map(|a| (a.filename.clone().unwrap_or_default(), a.sha256.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "photo.jpg".to_string(),
                mailintake::ingest::sha256_hex(&small)
            ),
            (
                "report.pdf".to_string(),
                mailintake::ingest::sha256_hex(&medium)
            ),
            (
                "trace.bin".to_string(),
                mailintake::ingest::sha256_hex(&big)
            ),
        ]
    );
    assert!(text.contains("Both files attached."));
    // Once: the customer's inbox has it a single time, and Sent Items has our Message-ID.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copies = crate::outgoing::inbox(&case.imap_entra, &customer)
        .await
        .into_iter()
        .filter(|(m, _)| m.message_id == message_id)
        .count();
    assert_eq!(copies, 1);
    assert!(
        crate::outgoing::query_text(&case.db, "SELECT smtp_response FROM outbox")
            .await
            .contains(&format!("Sent Items has <{message_id}>")),
    );
}

/// Graph forgets the sync state in the middle of a paged delta round (410 `SyncStateNotFound` on
/// a next link), once in the first, fresh round and once in a later round from the stored delta
/// link: the round starts again afresh, and every message is a ticket once — nothing lost,
/// nothing duplicated. The fake serves two items per page; `once` is held between pages
/// (failpoint `delta-page`) while the test expires the fake's sync states.
///
/// Before: a 410 while paging a fresh round failed the sweep (only a stored link was retried
/// afresh), so a folder whose first round kept meeting resets never came in.
#[tokio::test]
async fn a_410_in_the_middle_of_a_paged_round_loses_and_duplicates_nothing() {
    let case = GraphCase::build(Backend::Sqlite, "dispose = \"seen\"", "", |c| {
        c.max_page_size = 2;
    })
    .await;
    let hold_ms = 3000;
    let held = format!("failpoint delta-page reached; holding {hold_ms} ms");
    for (wave, count) in [(0, 5), (1, 5)] {
        for n in 0..count {
            let n = wave * 100 + n;
            deliver_lmtp(
                &case.mailbox,
                "ann@customer.test",
                &mail(n, "ann@customer.test", 300),
            )
            .await;
        }
        let before = case.graph.requests().len();
        let mut running = case.spawn(
            &["once"],
            &[(
                "MAILINTAKE_FAILPOINT",
                &format!("delta-page:1:hold={hold_ms}"),
            )],
        );
        assert!(
            crate::helpers::eventually(Duration::from_secs(30), || async {
                running.log().contains(&held)
            })
            .await,
            "`once` never reached a second delta page: {}",
            running.log()
        );
        assert!(case.graph.expire_delta_tokens(&case.mailbox, None).unwrap() > 0);
        let status = tokio::time::timeout(Duration::from_secs(60), running.child.wait())
            .await
            .expect("`once` finishes")
            .unwrap();
        let log = running.log();
        assert!(status.success(), "{log}");
        assert!(
            case.graph.requests()[before..]
                .iter()
                .any(|r| r.status == 410 && r.path.ends_with("/delta")),
            "the next page was answered 410: {log}"
        );
        let expected = 5 * (wave + 1);
        assert_eq!(
            case.db.count("SELECT COUNT(*) FROM tickets").await,
            expected as i64,
            "{log}"
        );
        assert_eq!(
            case.db.count("SELECT COUNT(*) FROM imap_messages").await,
            expected as i64
        );
        assert_eq!(
            case.db
                .count("SELECT COUNT(*) FROM imap_messages WHERE outcome = 'duplicate'")
                .await,
            0
        );
    }
    assert_eq!(case.value_requests(), 10, "each body downloaded once");
}
