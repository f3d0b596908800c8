//! `mailintake check <mailbox>`: the path a mailbox's mail takes, one step per line, each saying
//! what was found and, on failure, what to fix: token (expiry, audience, roles or scopes read from
//! the token) → IMAP (TLS, XOAUTH2) → folders (watched, quarantine, processed). The first failing
//! step ends that mailbox's check, because the next steps depend on it.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use secrecy::ExposeSecret;

use crate::config::{
    Config, Disposal, Grant, GraphEndpoint, Identity, Mailbox, SendVia, SentCopy, Transport,
};
use crate::graph::{GraphLogin, GraphMailbox};
use crate::imap;
use crate::intake::{self, session::LoginPacer};
use crate::oauth::{self, AccessToken, TokenCache};
use crate::reply;
use crate::reply::sender::{SentCopies, SentMessage};
use crate::store::Store;
use crate::telemetry::Metrics;

/// What each Exchange Online permission allows, for explaining a token's roles or scopes.
const PERMISSIONS: &[(&str, &str)] = &[
    (
        "IMAP.AccessAsApp",
        "app-only IMAP to mailboxes the app was given (Add-MailboxPermission)",
    ),
    (
        "SMTP.SendAsApp",
        "app-only SMTP sending as mailboxes the app was given (Add-RecipientPermission … SendAs)",
    ),
    (
        "IMAP.AccessAsUser.All",
        "delegated IMAP to the user's own mailbox and mailboxes they have FullAccess to",
    ),
    ("SMTP.Send", "delegated SMTP sending as the user"),
];

/// Checks the named mailbox (or every mailbox) online and prints one line per step to stdout.
/// True when every step of every checked mailbox passed.
pub async fn online(
    config: &Config,
    only: Option<&str>,
    send_test_mail: Option<&str>,
) -> anyhow::Result<bool> {
    let mailboxes: Vec<&Mailbox> = config
        .mailboxes
        .iter()
        .filter(|m| only.is_none_or(|name| m.name == name))
        .collect();
    if mailboxes.is_empty() {
        let names: Vec<&str> = config.mailboxes.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!(
            "no mailbox `{}` is configured; configured mailboxes: {}",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    // Delegated identities on refresh tokens need the database; others do not open it.
    let needs_store = mailboxes.iter().any(|m| {
        matches!(
            config.identity(&m.identity).grant,
            Grant::RefreshToken { .. }
        )
    });
    let mut tokens = TokenCache::new();
    let mut store = None;
    if needs_store {
        let opened = Store::open_configured(&config.database, 0).await?;
        tokens = tokens.with_token_store(opened.clone(), &config.token_keys);
        store = Some(opened);
    } else if mailboxes.iter().any(|m| reply::sends_acknowledgements(m)) {
        // Only for the acknowledgement notice: without a database it is not given.
        store = Store::open_configured(&config.database, 0).await.ok();
    }
    let mut all_passed = true;
    for mailbox in mailboxes {
        println!("mailbox {} ({}):", mailbox.name, mailbox.address);
        let identity = config.identity(&mailbox.identity);
        let mut passed = check_mailbox(identity, mailbox, &tokens).await;
        if passed {
            passed &= check_smtp(config, identity, mailbox, &tokens, send_test_mail).await;
        }
        acknowledgement_notice(mailbox, store.as_ref()).await;
        all_passed &= passed;
        let _ = std::io::stdout().flush();
    }
    Ok(all_passed)
}

fn step(ok: bool, name: &str, text: &str) {
    let mark = if ok { "ok  " } else { "FAIL" };
    // Multi-line texts (a fix, trace ids) are indented under their step.
    println!(
        "  {mark} {name:<8} {}",
        text.replace('\n', "\n                ")
    );
}

async fn check_mailbox(identity: &Identity, mailbox: &Mailbox, tokens: &TokenCache) -> bool {
    let imap = match &mailbox.transport {
        Transport::Imap(imap) => imap,
        Transport::Graph(graph) => return check_graph(identity, mailbox, graph, tokens).await,
    };
    let token = match tokens.token(identity).await {
        Ok(token) => token,
        Err(e) => {
            // Every token error names its identity already.
            step(false, "token", &e.to_string());
            return false;
        }
    };
    let (token_ok, text) = describe_token(identity, &token);
    step(token_ok, "token", &text);
    if !token_ok {
        return false;
    }
    expiry_step(identity);

    let mut conn = match imap::connect(imap, &mailbox.address, &token).await {
        Ok(conn) => conn,
        Err(e) => {
            step(
                false,
                "imap",
                &format!(
                    "{}:{} ({:?} TLS) as {}: {e}",
                    imap.host, imap.port, imap.tls, mailbox.address
                ),
            );
            return false;
        }
    };
    step(
        true,
        "imap",
        &format!(
            "{}:{} ({:?} TLS), XOAUTH2 accepted for {}",
            imap.host, imap.port, imap.tls, mailbox.address
        ),
    );

    let mut folders: Vec<(&str, bool)> =
        mailbox.folders.iter().map(|f| (f.as_str(), true)).collect();
    folders.push((mailbox.quarantine_folder.as_str(), false));
    if let Disposal::Move { folder } = &mailbox.dispose {
        folders.push((folder.as_str(), false));
    }
    let mut passed = true;
    for (folder, required) in folders {
        match conn.examine(folder).await {
            Ok(_) => step(true, "folder", &format!("`{folder}` exists")),
            Err(e) if required => {
                passed = false;
                step(
                    false,
                    "folder",
                    &format!("`{folder}` (the watched folder) cannot be opened: {e}"),
                );
            }
            Err(_) => step(
                true,
                "folder",
                &format!("`{folder}` is missing; the worker creates it at start"),
            ),
        }
    }
    conn.logout().await;
    passed
}

/// A warning (the step passes: tickets are still written) when the receiving server's stamp
/// suppresses every acknowledgement ([`reply::authentication_notice`]).
async fn acknowledgement_notice(mailbox: &Mailbox, store: Option<&Store>) {
    let reasons = match store {
        Some(store) => store
            .latest_ack_reasons(&mailbox.name, reply::NOTICE_ROWS)
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if let Some(notice) = reply::authentication_notice(mailbox, &reasons) {
        step(true, "acks", &format!("WARNING: {notice}"));
    }
}

/// The SMTP step: STARTTLS (or TLS), XOAUTH2 with the same token, and optionally a real message.
async fn check_smtp(
    config: &Config,
    identity: &Identity,
    mailbox: &Mailbox,
    tokens: &TokenCache,
    send_test_mail: Option<&str>,
) -> bool {
    let Some(outlet) = &mailbox.outlet else {
        step(
            true,
            "smtp",
            "no [mailboxes.smtp] table and no send = \"graph\": this mailbox sends no mail",
        );
        if send_test_mail.is_some() {
            step(
                false,
                "testmail",
                "cannot send: the mailbox has no [mailboxes.smtp] table and no send = \"graph\"",
            );
            return false;
        }
        return true;
    };
    let smtp = match &outlet.via {
        SendVia::Smtp(server) => server,
        SendVia::Graph(graph) => {
            return check_graph_send(identity, mailbox, graph, tokens, send_test_mail).await;
        }
    };
    let where_ = format!("{}:{} ({:?} TLS)", smtp.host, smtp.port, smtp.tls);
    let token = match tokens.token(identity).await {
        Ok(token) => token,
        Err(e) => {
            step(false, "smtp", &format!("{where_}: no token: {e}"));
            return false;
        }
    };
    // Connecting includes STARTTLS (or implicit TLS) and AUTH XOAUTH2.
    let mut session =
        match reply::smtp::connect(smtp, outlet.timeout, &mailbox.address, &token).await {
            Ok(session) => {
                step(
                    true,
                    "smtp",
                    &format!("{where_}, XOAUTH2 accepted for {}", mailbox.address),
                );
                session
            }
            Err(e) => {
                step(
                    false,
                    "smtp",
                    &format!("{where_} as {}: {e}", mailbox.address),
                );
                return false;
            }
        };
    let Some(to) = send_test_mail else {
        session.quit().await;
        return true;
    };
    let row = test_row(mailbox, to);
    let sent = match reply::smtp::compose(&row, &mailbox.address) {
        Ok(message) => session
            .send(&message, outlet.timeout)
            .await
            .map(|response| (response, message)),
        Err(e) => Err(e),
    };
    session.quit().await;
    match sent {
        Ok((response, message)) => {
            step(true, "testmail", &format!("sent to {to}: {response}"));
            check_sent_copy(
                config,
                identity,
                mailbox,
                tokens,
                &row.message_id,
                message.bytes,
            )
            .await
        }
        Err(e) => {
            step(false, "testmail", &format!("to {to}: {e}"));
            false
        }
    }
}

/// The message `check --send-test-mail` sends to `to`.
fn test_row(mailbox: &Mailbox, to: &str) -> crate::store::OutboxRow {
    let from = mailbox
        .acknowledge
        .from
        .clone()
        .unwrap_or_else(|| mailbox.address.clone());
    crate::store::OutboxRow {
        id: 0,
        mailbox: mailbox.name.clone(),
        ticket_id: None,
        from_address: from,
        to_address: Some(to.to_string()),
        subject: format!("mailintake test message from {}", mailbox.address),
        message_id: format!(
            "mailintake.test.{}.{}@{}",
            crate::time::now_ms(),
            std::process::id(),
            mailbox
                .address
                .rsplit('@')
                .next()
                .unwrap_or("mailintake.invalid")
        ),
        in_reply_to: None,
        thread_references: None,
        body_text: format!(
            "This message was sent by `mailintake check --send-test-mail` to test sending from {}.\n",
            mailbox.address
        ),
        body_html: None,
        attempts: 1,
        blocked_reason: None,
        raw: None,
        envelope_to: Vec::new(),
        kind: "notification".into(),
        recipient_count: 1,
        graph_item_id: None,
        sent_message_id: None,
        sent_at: None,
    }
}

/// The sending step of a mailbox that sends through Graph: a token for Graph, and with
/// `--send-test-mail` a real message by `sendMail`, then its copy in Sent Items.
async fn check_graph_send(
    identity: &Identity,
    mailbox: &Mailbox,
    graph: &GraphEndpoint,
    tokens: &TokenCache,
    send_test_mail: Option<&str>,
) -> bool {
    let token = match tokens.token_for_scope(identity, &graph.scope).await {
        Ok(token) => token,
        Err(e) => {
            step(false, "send", &format!("Graph sendMail: no token: {e}"));
            return false;
        }
    };
    let roles: Vec<String> = jwt_claims(token.secret.expose_secret())
        .and_then(|c| c["roles"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let mut text = format!("Graph sendMail at {} as {}", graph.url, mailbox.address);
    if !roles.iter().any(|r| r.eq_ignore_ascii_case("Mail.Send")) {
        text.push_str("\nno Mail.Send role in the token: normal with RBAC for Applications; --send-test-mail proves the access");
    }
    step(true, "send", &text);
    let Some(to) = send_test_mail else {
        return true;
    };
    let row = test_row(mailbox, to);
    let message = match reply::smtp::compose(&row, &mailbox.address) {
        Ok(message) => message,
        Err(e) => {
            step(false, "testmail", &format!("to {to}: {e}"));
            return false;
        }
    };
    let shared = crate::graph::Shared::default();
    let login = GraphLogin {
        shared: &shared,
        endpoint: graph,
        address: &mailbox.address,
        client_id: &identity.client_id,
    };
    let api = match GraphMailbox::new(&login, token.secret.clone()) {
        Ok(api) => api,
        Err(e) => {
            step(false, "testmail", &e.to_string());
            return false;
        }
    };
    if let Err(e) = api.send_mime(&message.bytes).await {
        step(false, "testmail", &format!("to {to}: {e}"));
        return false;
    }
    step(
        true,
        "testmail",
        &format!("sent to {to}: 202 Accepted (Graph sendMail)"),
    );
    let ours = format!("<{}>", row.message_id);
    let deadline = std::time::Instant::now() + SERVER_COPY_WAIT;
    loop {
        match api.sent_copy_of(&ours).await {
            Ok(Some(_)) => {
                step(true, "sentcopy", &format!("Sent Items has {ours}"));
                return true;
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(None) => {
                step(
                    true,
                    "sentcopy",
                    &format!(
                        "WARNING: no copy with {ours} in Sent Items after {SERVER_COPY_WAIT:?}"
                    ),
                );
                return true;
            }
            // Reading needs Mail.Read as well; sending worked.
            Err(e) => {
                step(
                    true,
                    "sentcopy",
                    &format!("WARNING: cannot look in Sent Items: {e}"),
                );
                return true;
            }
        }
    }
}

/// How long `check` looks for the server's copy of its test mail in the Sent folder.
const SERVER_COPY_WAIT: Duration = Duration::from_secs(10);

/// The `sentcopy` step after a test mail: which folder got its copy. With `sent_copy =
/// "append"` the copy is appended as the sender does it; with `"server"` the mailbox's `\Sent`
/// folder is searched for the test mail's Message-ID for a few seconds, since a server may keep
/// its copy elsewhere (Exchange: a delegated identity sending as a shared mailbox puts it in the
/// signed-in account's Sent Items).
async fn check_sent_copy(
    config: &Config,
    identity: &Identity,
    mailbox: &Mailbox,
    tokens: &TokenCache,
    message_id: &str,
    raw: Vec<u8>,
) -> bool {
    match &mailbox.sent_copy {
        SentCopy::None => {
            step(true, "sentcopy", "no copy is kept (sent_copy = \"none\")");
            true
        }
        SentCopy::Append { .. } => {
            let metrics = Metrics::new(config);
            let logins = LoginPacer::default();
            let Some(copies) = intake::sent_copies(mailbox, identity, tokens, &metrics, &logins)
            else {
                return true;
            };
            let messages = [SentMessage {
                message_id: message_id.to_string(),
                raw,
            }];
            match copies.keep(&messages).await {
                Ok((folder, outcomes)) => match outcomes.into_iter().next() {
                    Some(Ok(_)) => {
                        step(
                            true,
                            "sentcopy",
                            &format!("appended to `{folder}` (sent_copy = \"append\")"),
                        );
                        true
                    }
                    Some(Err(e)) => {
                        step(
                            false,
                            "sentcopy",
                            &format!("`{folder}` refused the copy: {e}"),
                        );
                        false
                    }
                    None => true,
                },
                Err(e) => {
                    step(false, "sentcopy", &e);
                    false
                }
            }
        }
        SentCopy::Server => {
            match find_server_copy(identity, mailbox, tokens, message_id).await {
                Ok((folder, true)) => {
                    step(
                        true,
                        "sentcopy",
                        &format!("the server kept the copy in `{folder}` (sent_copy = \"server\")"),
                    );
                }
                Ok((folder, false)) => step(
                    true,
                    "sentcopy",
                    &format!(
                        "WARNING: no copy in this mailbox's `{folder}` after {}s (sent_copy = \"server\")\n  fix: Exchange Online keeps it in the Sent Items of the account that signed in: sending as a shared mailbox with a delegated identity, set `Set-Mailbox <shared> -MessageCopyForSentAsEnabled $true` (and -MessageCopyForSendOnBehalfEnabled) to keep one in the shared mailbox too; a server that keeps no copy of submitted mail needs sent_copy = \"append\"",
                        SERVER_COPY_WAIT.as_secs()
                    ),
                ),
                Err(e) => step(
                    true,
                    "sentcopy",
                    &format!("WARNING: cannot look for the server's copy: {e}"),
                ),
            }
            true
        }
    }
}

/// Looks in the mailbox's `\Sent` folder for `message_id` until [`SERVER_COPY_WAIT`] passes.
async fn find_server_copy(
    identity: &Identity,
    mailbox: &Mailbox,
    tokens: &TokenCache,
    message_id: &str,
) -> Result<(String, bool), String> {
    let Some(imap) = mailbox.imap() else {
        return Err("the mailbox is read through Graph, which keeps its own copies".into());
    };
    let token = tokens.token(identity).await.map_err(|e| e.to_string())?;
    let mut conn = imap::connect(imap, &mailbox.address, &token)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        let folder = conn
            .sent_folder()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the server marks no folder \\Sent (RFC 6154)".to_string())?;
        let deadline = tokio::time::Instant::now() + SERVER_COPY_WAIT;
        loop {
            if conn
                .has_message_id(&folder, message_id)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok((folder, true));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((folder, false));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    .await;
    conn.logout().await;
    result
}

/// One line about a token: expiry, audience, and the roles or scopes it carries, with what a
/// missing IMAP permission means. False when the token cannot open the mailbox over IMAP.
/// The credential's expiry: a warning within [`oauth::EXPIRY_WARNING`], else how long it lasts.
fn expiry_step(identity: &Identity) {
    if let Some(warning) = oauth::expiry_warning(identity) {
        // Still works today, so the step passes; the warning says what to renew.
        step(true, "expiry", &format!("WARNING: {warning}"));
    } else if let Some((what, at)) = oauth::credential_expiry(identity) {
        let days = at
            .duration_since(SystemTime::now())
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        step(
            true,
            "expiry",
            &format!("the {what} is valid for {days} more day(s)"),
        );
    }
}

/// A mailbox read through Graph: a token for Graph, the mailbox read with it (which proves the
/// access whatever the token's claims say: with RBAC for Applications a token carries no Mail
/// role), then the folders.
async fn check_graph(
    identity: &Identity,
    mailbox: &Mailbox,
    graph: &GraphEndpoint,
    tokens: &TokenCache,
) -> bool {
    let token = match tokens.token_for_scope(identity, &graph.scope).await {
        Ok(token) => token,
        Err(e) => {
            step(false, "token", &e.to_string());
            return false;
        }
    };
    step(true, "token", &describe_graph_token(identity, &token));
    expiry_step(identity);
    let shared = crate::graph::Shared::default();
    let login = GraphLogin {
        shared: &shared,
        endpoint: graph,
        address: &mailbox.address,
        client_id: &identity.client_id,
    };
    let mut api = match GraphMailbox::connect(&login, token.secret.clone()).await {
        Ok(api) => api,
        Err(e) => {
            step(
                false,
                "graph",
                &format!("{} as {}: {e}", graph.url, mailbox.address),
            );
            return false;
        }
    };
    step(
        true,
        "graph",
        &format!(
            "{}: the Inbox of {} is readable",
            graph.url, mailbox.address
        ),
    );
    let mut folders: Vec<(&str, bool)> =
        mailbox.folders.iter().map(|f| (f.as_str(), true)).collect();
    folders.push((mailbox.quarantine_folder.as_str(), false));
    if let Disposal::Move { folder } = &mailbox.dispose {
        folders.push((folder.as_str(), false));
    }
    let mut passed = true;
    for (folder, required) in folders {
        match api.find_folder(folder).await {
            Ok(Some(_)) => step(true, "folder", &format!("`{folder}` exists")),
            Ok(None) if required => {
                passed = false;
                step(
                    false,
                    "folder",
                    &format!(
                        "`{folder}` (a watched folder) is not in the mailbox: check `folders` (Inbox is \"INBOX\"; a subfolder is \"Parent/Child\")"
                    ),
                );
            }
            Ok(None) => step(
                true,
                "folder",
                &format!(
                    "`{folder}` is missing; the worker creates it when it first moves mail there"
                ),
            ),
            Err(e) => {
                passed = false;
                step(false, "folder", &format!("`{folder}`: {e}"));
            }
        }
    }
    passed
}

/// A Graph token's audience and roles. No Mail role is not a failure: an app scoped with RBAC
/// for Applications gets its access from Exchange, not from the token.
fn describe_graph_token(identity: &Identity, token: &AccessToken) -> String {
    let minutes = token.expires_in.as_secs() / 60;
    let Some(claims) = jwt_claims(token.secret.expose_secret()) else {
        return format!(
            "acquired ({} flow), expires in {minutes} min; the token is opaque",
            identity.grant.flow_name()
        );
    };
    let audience = claims["aud"].as_str().unwrap_or("?");
    let roles: Vec<&str> = claims["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut text = format!(
        "acquired ({} flow), expires in {minutes} min, audience {audience}, roles {}",
        identity.grant.flow_name(),
        if roles.is_empty() {
            "none".to_string()
        } else {
            roles.join(" ")
        }
    );
    if !roles
        .iter()
        .any(|r| r.eq_ignore_ascii_case("Mail.ReadWrite"))
    {
        text.push_str("
no Mail.ReadWrite role in the token: normal when the app is scoped to mailboxes with RBAC for Applications; the next step proves the access by reading the mailbox");
    }
    text
}

fn describe_token(identity: &Identity, token: &AccessToken) -> (bool, String) {
    let minutes = token.expires_in.as_secs() / 60;
    let Some(claims) = jwt_claims(token.secret.expose_secret()) else {
        return (
            true,
            format!(
                "acquired ({} flow), expires in {minutes} min; the token is opaque, so its permissions cannot be shown",
                identity.grant.flow_name()
            ),
        );
    };
    let audience = claims["aud"].as_str().unwrap_or("?").to_string();
    let delegated = identity.grant.is_delegated();
    let granted: Vec<String> = if delegated {
        claims["scp"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    } else {
        claims["roles"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut text = format!(
        "acquired ({} flow), expires in {} min, audience {audience}, {} {}",
        identity.grant.flow_name(),
        ((exp - now).max(0) / 60),
        if delegated { "scopes" } else { "roles" },
        if granted.is_empty() {
            "none".to_string()
        } else {
            granted.join(" ")
        }
    );
    let needed_imap = if delegated {
        "IMAP.AccessAsUser.All"
    } else {
        "IMAP.AccessAsApp"
    };
    let has = |p: &str| granted.iter().any(|g| g.eq_ignore_ascii_case(p));
    let mut ok = true;
    for (permission, meaning) in PERMISSIONS {
        let relevant = permission.contains("AsApp") != delegated;
        if relevant && !has(permission) {
            let required = *permission == needed_imap;
            ok &= !required;
            text.push_str(&format!(
                "\nmissing {permission} ({meaning}){}: add it under App registrations > API permissions > Office 365 Exchange Online ({}) and grant admin consent",
                if required { ", needed to read mail" } else { "" },
                if delegated { "Delegated permissions" } else { "Application permissions" }
            ));
        }
    }
    if delegated
        && identity.scope.contains("offline_access")
        && !matches!(identity.grant, Grant::Password { .. })
    {
        text.push_str(
            "\noffline_access: lets mailintake renew the sign-in unattended with refresh tokens",
        );
    }
    (ok, text)
}

/// The claims of a JWT, unverified (only for showing them), or `None` for an opaque token.
fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
