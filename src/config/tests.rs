//! Whole-file tests through [`Config::from_toml_str`], and the fixtures that the topic modules'
//! tests build on.

use std::path::Path;

use secrecy::ExposeSecret;

use super::*;

pub(super) fn load(text: &str) -> Result<Config, Vec<ConfigProblem>> {
    Config::from_toml_str(text, Path::new("."))
}

pub(super) const MINIMAL: &str = r#"
    [identities.app]
    tenant = "contoso.onmicrosoft.com"
    client_id = "11111111-2222-3333-4444-555555555555"
    client_secret = "s3cr3t-value"

    [[mailboxes]]
    name = "support"
    address = "support@contoso.com"
    identity = "app"
    imap = { host = "outlook.office365.com" }
"#;

pub(super) fn with_identity(keys: &str) -> String {
    MINIMAL.replace("client_secret = \"s3cr3t-value\"", keys)
}

pub(super) const TOKEN_STORE: &str = "[token_store]\nkeys = [{ id = \"k2\", key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\" }, { id = \"k1\", key = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\" }]\n";

#[test]
fn minimal_config_gets_entra_defaults() {
    let config = load(MINIMAL).unwrap();
    let identity = config.identity("app");
    assert_eq!(
        identity.token_url.as_str(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(identity.scope, "https://outlook.office365.com/.default");
    let mailbox = &config.mailboxes[0];
    assert_eq!(mailbox.imap().unwrap().port, 993);
    assert_eq!(mailbox.imap().unwrap().tls, TlsMode::Implicit);
    assert_eq!(mailbox.folders, ["INBOX"]);
    assert_eq!(mailbox.dispose, Disposal::MarkSeen);
    assert_eq!(mailbox.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(config.database.url(), "sqlite://data/mailintake.db");
}

#[test]
fn unknown_key_is_named() {
    let text = MINIMAL.replace(
        "name = \"support\"",
        "name = \"support\"\npoll_intervall = \"5s\"",
    );
    let problems = load(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].key.ends_with("poll_intervall"), "{problems:?}");
    assert!(problems[0].message.contains("unknown key"), "{problems:?}");
}

#[test]
fn mistyped_secret_is_not_echoed() {
    // A secret given where a number is expected must not appear in the message.
    let text = MINIMAL.replace(
        "imap = { host = \"outlook.office365.com\" }",
        "imap = { host = \"h\", port = \"s3cr3t-value\" }",
    );
    let problems = load(&text).unwrap_err();
    let rendered = format!("{problems:?}");
    assert!(!rendered.contains("s3cr3t-value"), "{rendered}");
    assert!(rendered.contains("mailboxes"), "{rendered}");
}

#[test]
fn secrets_never_appear_in_debug() {
    let config = load(MINIMAL).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t-value"), "{debug}");
    let Grant::ClientSecret { client_secret } = &config.identity("app").grant else {
        panic!("expected a client secret grant");
    };
    assert_eq!(client_secret.expose_secret(), "s3cr3t-value");
}

#[test]
fn postgres_password_is_redacted() {
    assert_eq!(
        redact_credentials("postgres://u:hunter2@db.internal/tickets"),
        "postgres://u:***@db.internal/tickets"
    );
}

#[test]
fn credentials_are_redacted_wherever_they_sit() {
    for (text, shown) in [
        // A `#` or `?` typed into the password unencoded.
        (
            "postgres://u:pa#ss@db/tickets",
            "postgres://u:***@db/tickets",
        ),
        (
            "postgres://u:pa?s@s@db:5432/tickets",
            "postgres://u:***@db:5432/tickets",
        ),
        // As a parameter, in any case.
        (
            "postgres://u@db/tickets?sslmode=require&password=hunter2",
            "postgres://u@db/tickets?sslmode=require&password=***",
        ),
        (
            "postgres://db/t?PASSWORD=x&sslpassword=y",
            "postgres://db/t?PASSWORD=***&sslpassword=***",
        ),
        // Inside an error message, beside other text.
        (
            "cannot open the database postgres://u:s3cret@db/t: connection refused",
            "cannot open the database postgres://u:***@db/t: connection refused",
        ),
        // Nothing to hide.
        ("sqlite://data/mailintake.db", "sqlite://data/mailintake.db"),
        (
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        ),
    ] {
        assert_eq!(redact_credentials(text), shown, "{text}");
    }
}

#[test]
fn the_database_url_can_come_from_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-url"), "postgres://u:from-file@db/t\n").unwrap();
    let text = format!("{MINIMAL}\n[database]\nurl = {{ file = \"db-url\" }}\n");
    let config = Config::from_toml_str(&text, dir.path()).expect("valid");
    assert_eq!(config.database.url(), "postgres://u:from-file@db/t");
    assert!(!format!("{config:?}").contains("from-file"));
    let missing =
        format!("{MINIMAL}\n[database]\nurl = {{ env = \"MAILINTAKE_TEST_UNSET_DB_URL\" }}\n");
    let problems = load(&missing).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "database.url");
    assert!(
        problems[0]
            .message
            .contains("MAILINTAKE_TEST_UNSET_DB_URL is not set")
    );
}

#[test]
fn http_is_off_by_default_and_loopback_unless_a_token_is_set() {
    assert!(load(MINIMAL).unwrap().http.is_none());
    let on = load(&format!("{MINIMAL}\n[http]\n")).unwrap().http.unwrap();
    assert_eq!(on.listen.to_string(), DEFAULT_HTTP_LISTEN);
    assert!(on.bearer_token.is_none());

    let open = load(&format!("{MINIMAL}\n[http]\nlisten = \"0.0.0.0:9090\"\n")).unwrap_err();
    assert_eq!(open[0].key, "http.listen");
    assert!(open[0].message.contains("bearer_token"), "{open:?}");

    let with_token = load(&format!(
        "{MINIMAL}\n[http]\nlisten = \"[::]:9191\"\nbearer_token = \"0123456789abcdef0123\"\n"
    ))
    .unwrap()
    .http
    .unwrap();
    assert_eq!(with_token.listen.port(), 9191);
    assert_eq!(
        with_token.bearer_token.unwrap().expose_secret(),
        "0123456789abcdef0123"
    );

    let short = load(&format!("{MINIMAL}\n[http]\nbearer_token = \"short\"\n")).unwrap_err();
    assert_eq!(short[0].key, "http.bearer_token");
    assert!(!short[0].message.contains("short"), "never echo the token");
    let bad = load(&format!("{MINIMAL}\n[http]\nlisten = \"localhost\"\n")).unwrap_err();
    assert_eq!(bad[0].key, "http.listen");
}

#[test]
fn the_api_token_is_a_secret_of_its_own() {
    let on = load(&format!("{MINIMAL}\n[http]\n")).unwrap().http.unwrap();
    assert!(on.api_token.is_none());
    let with_token = load(&format!(
        "{MINIMAL}\n[http]\napi_token = \"0123456789abcdef0123\"\n"
    ))
    .unwrap()
    .http
    .unwrap();
    assert_eq!(
        with_token.api_token.unwrap().expose_secret(),
        "0123456789abcdef0123"
    );
    assert!(
        with_token.bearer_token.is_none(),
        "not the monitoring token"
    );
    let short = load(&format!("{MINIMAL}\n[http]\napi_token = \"short\"\n")).unwrap_err();
    assert_eq!(short[0].key, "http.api_token");
    assert!(!short[0].message.contains("short"), "never echo the token");
    let missing = load(&format!(
        "{MINIMAL}\n[http]\napi_token = {{ env = \"MAILINTAKE_TEST_NO_SUCH_VARIABLE\" }}\n"
    ))
    .unwrap_err();
    assert_eq!(missing[0].key, "http.api_token");
}

#[test]
fn two_bad_closed_set_values_are_both_reported_with_their_keys() {
    let text = MINIMAL.replace(
        "name = \"support\"",
        "name = \"support\"\ndispose = \"archive\"\nkeep_raw = \"some\"\nautomatic = \"always\"",
    );
    let problems = load(&text).unwrap_err();
    assert_eq!(
        problems,
        [
            ConfigProblem {
                key: "mailboxes[0].dispose".into(),
                message: "must be \"seen\", \"move\" or \"delete\"".into(),
            },
            ConfigProblem {
                key: "mailboxes[0].keep_raw".into(),
                message: "must be \"failures\" or \"all\"".into(),
            },
            ConfigProblem {
                key: "mailboxes[0].automatic".into(),
                message: "must be \"ticket\" or \"ignore\" (what machine-generated mail such as alerts, notifications and list mail becomes)".into(),
            },
        ]
    );
}

#[test]
fn bad_closed_set_values_in_two_tables_are_both_reported() {
    let text = with_identity("client_secret = \"x\"\nflow = \"magic\"").replace(
        "name = \"support\"",
        "name = \"support\"\nmode = \"dry-run\"\nfirst_start = \"later\"",
    );
    let problems = load(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "identities.app.flow",
            "mailboxes[0].mode",
            "mailboxes[0].first_start"
        ],
        "{problems:?}"
    );
    assert_eq!(
        problems[0].message,
        "unknown flow `magic`; expected \"client_credentials\", \"password\", \"device_code\" or \"refresh_token\""
    );
    assert_eq!(problems[1].message, "must be \"normal\" or \"shadow\"");
    assert!(
        problems[2]
            .message
            .starts_with("`later` is not \"all\", \"now\" or a date"),
        "{problems:?}"
    );
}

#[test]
fn a_move_target_that_is_also_watched_is_refused_naming_its_key() {
    let text = MINIMAL.replace(
        "name = \"support\"",
        "name = \"support\"\nfolders = [\"INBOX\", \"Processed\"]\ndispose = \"move\"\nprocessed_folder = \"processed\"\nquarantine_folder = \"inbox\"",
    );
    let problems = load(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "mailboxes[0].processed_folder",
            "mailboxes[0].quarantine_folder"
        ],
        "{problems:?}"
    );
    assert!(
        problems[0]
            .message
            .contains("`processed` is also a watched folder (`Processed`)"),
        "{}",
        problems[0].message
    );
    // Folders that are not watched are fine.
    let fine = MINIMAL.replace(
        "name = \"support\"",
        "name = \"support\"\ndispose = \"move\"\nprocessed_folder = \"Done\"\nquarantine_folder = \"Set aside\"",
    );
    load(&fine).expect("valid");
}

#[test]
fn an_unset_secret_variable_is_one_problem_of_its_key() {
    for (flow, key) in [
        (
            "client_secret = { env = \"MAILINTAKE_TEST_UNSET_1\" }",
            "client_secret",
        ),
        (
            "flow = \"password\"\nusername = \"svc@contoso.com\"\npassword = { env = \"MAILINTAKE_TEST_UNSET_1\" }",
            "password",
        ),
        (
            "flow = \"refresh_token\"\nrefresh_token = { env = \"MAILINTAKE_TEST_UNSET_1\" }",
            "refresh_token",
        ),
    ] {
        let problems = load(&with_identity(flow)).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, [format!("identities.app.{key}")], "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("environment variable MAILINTAKE_TEST_UNSET_1 is not set"),
            "{problems:?}"
        );
    }
}

const GUIDE_TENANT: &str = "8c3a1f52-4b7e-4d0a-9a43-1f0e6c2d7b10";

fn guide_identity(keys: &str) -> String {
    MINIMAL.replace(
        "tenant = \"contoso.onmicrosoft.com\"\n",
        &format!("tenant = \"{GUIDE_TENANT}\"\n{keys}\n"),
    )
}

#[test]
fn openiams_authority_is_a_token_url_and_is_used_as_one() {
    let config = load(&guide_identity(
        "authority = \"https://login.microsoftonline.com/{tenant-id}/oauth2/v2.0/token\"",
    ))
    .unwrap();
    let identity = config.identity("app");
    assert_eq!(
        identity.token_url.as_str(),
        format!("https://login.microsoftonline.com/{GUIDE_TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(
        identity.authority.as_ref().unwrap().as_str(),
        format!("https://login.microsoftonline.com/{GUIDE_TENANT}")
    );
}

#[test]
fn efectes_placeholder_and_comma_separated_scopes_are_taken_as_meant() {
    let config = load(&guide_identity(
        "token_url = \"https://login.microsoftonline.com/{tenantID}/oauth2/v2.0/token\"\nscope = \"https://outlook.office365.com/.default,\"",
    ))
    .unwrap();
    let identity = config.identity("app");
    assert_eq!(
        identity.token_url.as_str(),
        format!("https://login.microsoftonline.com/{GUIDE_TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(identity.scope, "https://outlook.office365.com/.default");
    // Our own example's spelling, `<tenant>`, too.
    let config = load(&guide_identity(
        "token_url = \"https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token\"",
    ))
    .unwrap();
    assert!(
        config
            .identity("app")
            .token_url
            .as_str()
            .contains(GUIDE_TENANT)
    );
}

#[test]
fn magmas_authorization_and_token_endpoints_are_accepted_together() {
    let both = "authorization_url = \"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize\"\ntoken_url = \"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token\"";
    let config = load(&guide_identity(both)).unwrap();
    let identity = config.identity("app");
    assert_eq!(
        identity.authority.as_ref().unwrap().as_str(),
        format!("https://login.microsoftonline.com/{GUIDE_TENANT}")
    );
    assert_eq!(
        identity.device_code_url.as_ref().unwrap().as_str(),
        format!("https://login.microsoftonline.com/{GUIDE_TENANT}/oauth2/v2.0/devicecode")
    );
    // Two tenants (or clouds) between them is a mistake worth naming.
    let mixed = both.replacen("{tenant}", "contoso.onmicrosoft.com", 1);
    let problems = load(&guide_identity(&mixed)).unwrap_err();
    assert_eq!(
        problems[0].key, "identities.app.authorization_url",
        "{problems:?}"
    );
    assert!(problems[0].message.contains("same tenant"), "{problems:?}");
}

#[test]
fn unknown_placeholders_and_mixed_resources_are_refused_naming_the_key() {
    let problems = load(&guide_identity(
        "token_url = \"https://login.microsoftonline.com/{directory-id}/oauth2/v2.0/token\"",
    ))
    .unwrap_err();
    assert_eq!(problems[0].key, "identities.app.token_url", "{problems:?}");
    assert!(
        problems[0].message.contains("{directory-id}"),
        "{problems:?}"
    );
    let problems = load(&guide_identity(
        "flow = \"password\"\nusername = \"svc@contoso.com\"\npassword = \"p\"\nscope = \"https://outlook.office365.com/IMAP.AccessAsUser.All,https://graph.microsoft.com/Mail.Send\"",
    ))
    .unwrap_err();
    assert_eq!(problems[0].key, "identities.app.scope", "{problems:?}");
    assert!(problems[0].message.contains("AADSTS28000"), "{problems:?}");
}

#[test]
fn the_fleet_has_defaults_and_its_durations_are_checked() {
    assert_eq!(load(MINIMAL).unwrap().fleet, FleetConfig::default());
    let set = load(&format!(
        "{MINIMAL}\n[fleet]\nlease_ttl = \"5s\"\nacquire_interval = \"1s\"\n"
    ))
    .unwrap()
    .fleet;
    assert_eq!(set.lease_ttl, Duration::from_secs(5));
    assert_eq!(set.acquire_interval, Duration::from_secs(1));
    let short = load(&format!("{MINIMAL}\n[fleet]\nlease_ttl = \"1s\"\n")).unwrap_err();
    assert_eq!(short[0].key, "fleet.lease_ttl");
    let slow = load(&format!(
        "{MINIMAL}\n[fleet]\nlease_ttl = \"5s\"\nacquire_interval = \"5s\"\n"
    ))
    .unwrap_err();
    assert_eq!(slow[0].key, "fleet.acquire_interval");
    let bad = load(&format!("{MINIMAL}\n[fleet]\nlease_ttl = \"soon\"\n")).unwrap_err();
    assert!(bad[0].message.contains("not a duration"), "{bad:?}");
}

/// [`MINIMAL`] read through Graph, with `extra` keys on the mailbox.
fn graph_mailbox(extra: &str) -> String {
    MINIMAL.replace(
        "imap = { host = \"outlook.office365.com\" }",
        &format!("transport = \"graph\"\n{extra}"),
    )
}

#[test]
fn a_graph_mailbox_needs_no_imap_table_and_gets_graphs_defaults() {
    let config = load(&graph_mailbox("")).unwrap();
    let Transport::Graph(graph) = &config.mailboxes[0].transport else {
        panic!("a Graph mailbox");
    };
    assert_eq!(graph.url.as_str(), "https://graph.microsoft.com/");
    assert_eq!(graph.scope, "https://graph.microsoft.com/.default");
    assert_eq!(graph.max_concurrent_requests, 4);
    assert!(config.mailboxes[0].imap().is_none());
    // The US Government cloud's authority gives its Graph.
    let gcc = graph_mailbox("").replace(
        "tenant = \"contoso.onmicrosoft.com\"",
        "tenant = \"contoso.onmicrosoft.us\"\nauthority = \"https://login.microsoftonline.us/{tenant}\"",
    );
    let config = load(&gcc).unwrap();
    let Transport::Graph(graph) = &config.mailboxes[0].transport else {
        panic!("a Graph mailbox");
    };
    assert_eq!(graph.scope, "https://graph.microsoft.us/.default");
}

#[test]
fn graph_is_refused_where_it_cannot_work() {
    let problem = |text: &str| {
        let problems = load(text).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        (problems[0].key.clone(), problems[0].message.clone())
    };
    // 21Vianet: no message delta.
    let china = graph_mailbox("").replace(
        "tenant = \"contoso.onmicrosoft.com\"",
        "tenant = \"contoso.partner.onmschina.cn\"\nauthority = \"https://login.partner.microsoftonline.cn/{tenant}\"",
    );
    let (key, message) = problem(&china);
    assert!(
        key.ends_with("transport") && message.contains("21Vianet"),
        "{key}: {message}"
    );
    // A delegated identity.
    let delegated = graph_mailbox("").replace(
        "client_secret = \"s3cr3t-value\"",
        "flow = \"password\"\nusername = \"agent@contoso.com\"\npassword = \"pw\"",
    );
    let (key, message) = problem(&delegated);
    assert!(
        key.ends_with("transport") && message.contains("app-only"),
        "{key}: {message}"
    );
    // Plain HTTP off loopback.
    let (key, message) = problem(&graph_mailbox(
        "graph = { url = \"http://graph.example.net\" }",
    ));
    assert!(
        key.ends_with("graph.url") && message.contains("https"),
        "{key}: {message}"
    );
    // IMAP's keys beside Graph, and Sent-folder copies over IMAP.
    let (key, _) = problem(&graph_mailbox(
        "imap = { host = \"outlook.office365.com\" }",
    ));
    assert!(key.ends_with("imap"), "{key}");
    let (key, message) = problem(&graph_mailbox(
        "smtp = { host = \"smtp.office365.com\" }\nsent_copy = \"append\"",
    ));
    assert!(
        key.ends_with("sent_copy") && message.contains("Graph"),
        "{key}: {message}"
    );
    // An unknown transport, and an IMAP mailbox without its table.
    let (key, _) = problem(&MINIMAL.replace(
        "imap = { host = \"outlook.office365.com\" }",
        "transport = \"ews\"",
    ));
    assert!(key.ends_with("transport"), "{key}");
    let (key, message) =
        problem(&MINIMAL.replace("imap = { host = \"outlook.office365.com\" }", ""));
    assert!(
        key.ends_with("imap") && message.contains("transport = \"graph\""),
        "{key}: {message}"
    );
}

#[test]
fn sending_through_graph_needs_no_smtp_table_and_caps_the_message_size_at_exchanges_largest() {
    let config = load(&graph_mailbox("send = \"graph\"")).unwrap();
    let mailbox = &config.mailboxes[0];
    let outlet = mailbox.outlet.as_ref().expect("it sends");
    assert!(matches!(outlet.via, SendVia::Graph(_)));
    assert_eq!(
        (outlet.max_per_minute, outlet.max_recipients_per_day),
        (30, 10_000)
    );
    assert_eq!(mailbox.sending.max_bytes, DEFAULT_MAX_SEND_BYTES);
    let problems_of_max = |n: u64| {
        load(&graph_mailbox(&format!(
            "send = \"graph\"\nmax_send_bytes = {n}"
        )))
        .unwrap_err()
    };
    let problems = problems_of_max(157_286_401);
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("must be at most 157286400")),
        "{problems:?}"
    );
    assert!(
        load(&graph_mailbox(
            "send = \"graph\"\nmax_send_bytes = 157286400"
        ))
        .is_ok()
    );
    // Reading by IMAP and sending by Graph.
    let mixed = MINIMAL.replace(
        "imap = { host = \"outlook.office365.com\" }",
        "imap = { host = \"outlook.office365.com\" }\nsend = \"graph\"",
    );
    let config = load(&mixed).unwrap();
    assert!(config.mailboxes[0].imap().is_some());
    assert!(matches!(
        config.mailboxes[0].outlet.as_ref().unwrap().via,
        SendVia::Graph(_)
    ));
    assert!(
        problems_of_max(157_286_401)
            .iter()
            .any(|p| p.key.ends_with("max_send_bytes"))
    );
    let problems = load(&graph_mailbox("send = \"pigeon\"")).unwrap_err();
    assert!(problems[0].key.ends_with("send"), "{problems:?}");
}

#[test]
fn the_pool_is_sized_from_the_tasks_up_to_the_backends_cap_unless_configured() {
    let sqlite = load(MINIMAL).unwrap().database;
    assert_eq!(sqlite.max_connections, None);
    assert_eq!(
        sqlite.pool_size(0),
        (
            POOL_HEADROOM,
            PoolSizing::Computed {
                tasks: 0,
                cap: SQLITE_POOL_CAP
            }
        )
    );
    assert_eq!(sqlite.pool_size(2).0, 2 + POOL_HEADROOM);
    assert_eq!(sqlite.pool_size(2_000).0, SQLITE_POOL_CAP);
    let postgres = load(&format!(
        "[database]\nurl = \"postgres://u@db/t\"\n{MINIMAL}"
    ))
    .unwrap()
    .database;
    assert_eq!(postgres.pool_size(2_000).0, POSTGRES_POOL_CAP);
    assert_eq!(postgres.pool_size(5).0, 5 + POOL_HEADROOM);
    let configured = load(&format!("[database]\nmax_connections = 40\n{MINIMAL}"))
        .unwrap()
        .database;
    assert_eq!(configured.pool_size(2_000), (40, PoolSizing::Configured));
    assert_eq!(configured.pool_size(0), (40, PoolSizing::Configured));
}

#[test]
fn a_pool_of_no_connections_is_refused_with_the_fix() {
    let problems = load(&format!("[database]\nmax_connections = 0\n{MINIMAL}")).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "database.max_connections", "{problems:?}");
    assert!(problems[0].message.contains("at least 1"), "{problems:?}");
}
